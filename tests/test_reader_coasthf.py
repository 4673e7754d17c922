"""COAST-HF (Coriolis-cotier CSV) reader: fixture, the 22 real exports, and bad input."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin import flags
from twin.errors import InputError
from twin.observations import validate
from twin.readers import coasthf, detect_format, read_observations

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "coasthf" / "coasthf_small.csv"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COAST_HF = DATA / "coast-hf-sample"
REAL_FILES = [
    f"OC_2024{m}_TS_{kind}_{code}.csv" for m in ("09", "10", "11", "12")
    for kind, code in (("MA", "6200443"), ("MA", "6200450"), ("MO", "EXIN0002"))
] + [f"OC_LATEST_TS_MA_{c}.csv" for c in ("6100284", "6200021", "6200310", "6200443", "6200450")] \
  + [f"OC_LATEST_TS_MO_EXIN000{i}.csv" for i in range(2, 7)]

O2_ML_PER_L = 1000.0 / 22.3916
O2_MG_PER_M3 = 1.0 / 31.9988
FIXTURE_TEXT = FIXTURE.read_text(encoding="utf-8")
FIXTURE_LINES = FIXTURE_TEXT.splitlines()
HEADER = FIXTURE_LINES[0].split(",")


def one(ds, **where):
    mask = np.ones(ds.sizes["obs"], bool)
    for name, value in where.items():
        mask &= ds[name].values == value
    idx = np.flatnonzero(mask)
    assert idx.size == 1, f"{where} matches {idx.size} rows"
    return {name: ds[name].values[idx[0]] for name in ds.variables}


@pytest.fixture(scope="module")
def small():
    return coasthf.read(FIXTURE)


# ---------------------------------------------------------------------------------------------- fixture


def test_fixture_shape_contract_and_housekeeping(small):
    validate(small)
    # 6 lines x 8 parameter columns; BATTERY is housekeeping, counted, not ingested
    assert small.sizes["obs"] == 6 * 8
    assert "battery" not in set(small["variable"].values)
    assert small.attrs["housekeeping_columns"] == "BATTERY LEVEL1 (volt)"
    assert small.attrs["housekeeping_values"] == 1
    assert small.attrs["fill_values"] == 3
    assert set(small["site"].values) == {"6200450"}
    assert sorted(set(small["line"].values.tolist())) == [2, 3, 4, 5, 6, 7]


def test_levels_layers_and_variables(small):
    got = {(c, lay, v) for c, lay, v in zip(small["layer_code"].values, small["layer"].values,
                                              small["variable"].values)}
    assert got == {
        ("LEVEL-1", "air", "air_temperature"),   # DRYT and TEMP above the surface
        ("LEVEL0", "surface", "par"),
        ("LEVEL1", "surface", "temperature"), ("LEVEL1", "surface", "salinity"),
        ("LEVEL1", "surface", "oxygen"), ("LEVEL1", "surface", "fluorescence"),
    }
    assert np.isnan(small["depth"].values).all()


def test_time_position_and_line(small):
    r = one(small, line=2, variable="par")
    assert r["time"] == np.datetime64("2024-09-01T00:00:00")
    assert (r["latitude"], r["longitude"]) == (pytest.approx(48.358), pytest.approx(-4.5518))
    assert small["time"].dtype == np.dtype("datetime64[ns]")


def test_units_converted(small):
    assert one(small, line=2, variable="temperature")["value"] == pytest.approx(17.64)
    oxygen = small["value"].values[(small["line"].values == 2) & (small["variable"].values == "oxygen")]
    assert oxygen[0] == pytest.approx(4.83 * O2_ML_PER_L)     # DOX1 ml/l
    assert oxygen[1] == pytest.approx(8355 * O2_MG_PER_M3)    # MASS_DOXY milligram/m3
    assert one(small, line=2, variable="par")["value"] == pytest.approx(120.5)


def _at(ds, line, variable, layer_code):
    return one(ds, line=line, variable=variable, layer_code=layer_code)


@pytest.mark.parametrize("line, variable, level, qc, native, censored", [
    (3, "temperature", "LEVEL1", flags.SUSPECT, "3", False),
    (3, "salinity", "LEVEL1", flags.BAD, "4", False),
    (3, "fluorescence", "LEVEL1", flags.NOT_EVALUATED, "0", False),
    (4, "par", "LEVEL0", flags.GOOD, "5", False),              # value changed
    (4, "temperature", "LEVEL1", flags.SUSPECT, "7", False),   # nominal value
    (4, "salinity", "LEVEL1", flags.SUSPECT, "8", False),      # interpolated
    (4, "fluorescence", "LEVEL1", flags.GOOD, "6", True),      # below detection
    (2, "temperature", "LEVEL1", flags.GOOD, "1", False),
])
def test_oceansites_flag_mapping(small, line, variable, level, qc, native, censored):
    r = _at(small, line, variable, level)
    assert (int(r["qc"]), r["native_qc"], bool(r["censored"])) == (qc, native, censored)


def test_qc_string_with_leading_zeros_is_positional(small):
    # QC "00111114341920": PLATFORM 0, ARGOS_ID 0, DATE 1, ... the 8th digit (4) belongs to LGH4
    assert _at(small, 3, "par", "LEVEL0")["native_qc"] == "4"
    assert _at(small, 3, "temperature", "LEVEL1")["native_qc"] == "3"


@pytest.mark.parametrize("line, variable, level, native", [
    (3, "air_temperature", "LEVEL-1", "1"),   # DRYT -99999 flagged good
    (3, "par", "LEVEL0", "4"),                # 214748
])
def test_fill_values_missing_whatever_the_flag(small, line, variable, level, native):
    rows = (small["line"].values == line) & (small["variable"].values == variable) & \
           (small["layer_code"].values == level)
    r = {k: small[k].values[np.flatnonzero(rows)[0]] for k in ("value", "qc", "native_qc")}
    assert np.isnan(r["value"]) and r["qc"] == flags.MISSING and r["native_qc"] == native


def test_mass_doxy_fill_minus_1000_is_missing(small):
    rows = np.flatnonzero((small["line"].values == 6) & (small["variable"].values == "oxygen"))
    assert small["qc"].values[rows[1]] == flags.MISSING and np.isnan(small["value"].values[rows[1]])


def test_empty_cells_are_missing_rows(small):
    # two oxygen rows per line, in column order: DOX1 (empty cell, flag 9) then MASS_DOXY (flag 2)
    rows = np.flatnonzero((small["line"].values == 3) & (small["variable"].values == "oxygen"))
    assert small["qc"].values[rows[0]] == flags.MISSING and small["native_qc"].values[rows[0]] == "9"
    assert np.isnan(small["value"].values[rows[0]])
    assert small["qc"].values[rows[1]] == flags.GOOD   # MASS_DOXY stands alone: not a duplicate


def test_second_oxygen_channel_and_second_air_temperature_flagged_duplicate(small):
    rows = np.flatnonzero((small["line"].values == 2) & (small["variable"].values == "oxygen"))
    assert small["qc"].values[rows].tolist() == [flags.GOOD, flags.SUSPECT]  # DOX1 kept, MASS_DOXY suspect
    air = np.flatnonzero((small["line"].values == 2) & (small["variable"].values == "air_temperature"))
    assert small["qc"].values[air].tolist() == [flags.GOOD, flags.SUSPECT]   # DRYT kept, TEMP LEVEL-1


def test_duplicated_timestamp_kept_and_flagged(small):
    line5 = small["qc"].values[small["line"].values == 5]
    line6 = small["qc"].values[small["line"].values == 6]
    assert line5[0] == flags.GOOD
    assert (line6[line6 != flags.MISSING] == flags.SUSPECT).all()


def test_non_monotonic_times_kept_in_file_order(small):
    t = small["time"].values[::8]
    assert small["line"].values[::8].tolist() == [2, 3, 4, 5, 6, 7]
    assert t[2] < t[1]  # line 4 (00:10) after line 3 (00:20): kept where it is, not sorted


def test_suspect_date_flag_lowers_the_line(small):
    line7 = small["qc"].values[small["line"].values == 7]
    assert (line7 == flags.SUSPECT).all()
    assert set(small["native_qc"].values[small["line"].values == 7]) == {"1"}


def test_fluorescence_calibration_adds_chlorophyll_rows():
    ds = coasthf.read(FIXTURE, fluorescence_calibration={"6200450": (2.0, 0.1), "OTHER": (1.0, 0.0)})
    validate(ds)
    chl = ds["variable"].values == "chlorophyll"
    fluo = ds["variable"].values == "fluorescence"
    assert chl.sum() == fluo.sum() == 6 and ds.attrs["derived_chlorophyll"] == 6
    np.testing.assert_allclose(ds["value"].values[chl], 2.0 * ds["value"].values[fluo] + 0.1, rtol=1e-12)
    assert ds["line"].values[chl].tolist() == ds["line"].values[fluo].tolist()
    assert ds["censored"].values[chl].tolist() == ds["censored"].values[fluo].tolist()
    assert ds["error_sd"].values[chl][0] == 0.3
    assert not (coasthf.read(FIXTURE)["variable"].values == "chlorophyll").any()
    with pytest.raises(ValueError, match=r"fluorescence_calibration\['6200450'\] must be \(slope, offset\)"):
        coasthf.read(FIXTURE, fluorescence_calibration={"6200450": 2.0})


def test_error_sd_override():
    ds = coasthf.read(FIXTURE, error_sd={"temperature": 0.05})
    assert _at(ds, 2, "temperature", "LEVEL1")["error_sd"] == 0.05
    assert _at(ds, 2, "par", "LEVEL0")["error_sd"] == 50.0


def test_deeper_levels_unknown_layer_unless_configured(tmp_path):
    text = ("PLATFORM,DATE (yyyy-mm-ddThh:mi:ssZ),LATITUDE (degree_north),LONGITUDE (degree_east),"
            "TEMP LEVEL1 (degree_Celsius),TEMP LEVEL3 (degree_Celsius),QC\n"
            "6200021,2025-01-17T06:30:00Z,47.46,-2.6567,7.1,8.2,011111\n")
    path = tmp_path / "levels.csv"
    path.write_text(text)
    ds = coasthf.read(path)
    assert ds["layer"].values.tolist() == ["surface", ""]
    assert ds["layer_code"].values.tolist() == ["LEVEL1", "LEVEL3"]
    assert coasthf.read(path, level_layers={3: "bottom"})["layer"].values.tolist() == ["surface", "bottom"]
    with pytest.raises(ValueError, match="unknown layer 'deep'"):
        coasthf.read(path, level_layers={3: "deep"})


def test_registry_detects_coasthf():
    assert coasthf.sniff(FIXTURE)
    assert detect_format(FIXTURE) == "coasthf"
    assert read_observations(FIXTURE).sizes["obs"] == 48
    assert not coasthf.sniff(Path(__file__).resolve().parent / "fixtures" / "somlit" / "somlit_native_hydro.csv")


# ---------------------------------------------------------------------------------------------- real data

HOUSEKEEPING_CODES = {"GSPD", "GDIR", "ALTS", "BATTERY", "END_CYCLE_FLOW"}


def _independent(path: Path) -> dict:
    """Counts from the csv module: data lines, parameter cells, and cells that must be missing."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        records = list(reader)
    params = [j for j, c in enumerate(header[:-1]) if " LEVEL" in c and c.split(" ")[0] not in HOUSEKEEPING_CODES]
    qc_lengths_ok = all(len(r[-1]) == len(header) - 1 for r in records)
    missing = 0
    for r in records:
        for j in params:
            cell, digit = r[j], r[-1][j]
            if cell == "" or abs(float(cell)) >= 99999 or float(cell) == -1000 or digit == "9":
                missing += 1
    return dict(lines=len(records), params=len(params), missing=missing, qc_lengths_ok=qc_lengths_ok)


@pytest.fixture(scope="module")
def real_dir():
    if not COAST_HF.is_dir():
        pytest.skip(f"real data not found at {COAST_HF}")
    return COAST_HF


def test_all_22_real_files_are_listed(real_dir):
    assert sorted(p.name for p in real_dir.glob("*.csv")) == sorted(REAL_FILES)


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file(real_dir, name):
    path = real_dir / name
    expected = _independent(path)
    assert expected["qc_lengths_ok"]
    ds = coasthf.read(path)
    validate(ds)
    assert ds.sizes["obs"] == expected["lines"] * expected["params"]
    assert int((ds["qc"].values == flags.MISSING).sum()) == expected["missing"]
    assert set(ds["site"].values) == {name.rsplit("_", 1)[1].removesuffix(".csv")}
    # no fill value reaches the table
    finite = np.isfinite(ds["value"].values)
    assert (np.abs(ds["value"].values[finite]) < 99999).all()
    # plausible span and interval: monthly or 30-day exports sampled every 10 min to 3 h
    t = np.unique(ds["time"].values)
    assert np.datetime64("2024-09-01") <= t[0] and t[-1] <= np.datetime64("2025-02-17")
    assert t[-1] - t[0] <= np.timedelta64(31, "D")
    if t.size > 2:
        step = np.median(np.diff(t)) / np.timedelta64(1, "s")
        assert 60 <= step <= 3 * 3600
    good_water_temp = (ds["variable"].values == "temperature") & (ds["qc"].values == flags.GOOD)
    if good_water_temp.any():
        v = ds["value"].values[good_water_temp]
        assert -2.0 < v.min() and v.max() < 35.0


def test_real_exin0006_fill_flagged_good_becomes_missing(real_dir):
    ds = coasthf.read(real_dir / "OC_LATEST_TS_MO_EXIN0006.csv")
    pressure = ds["variable"].values == "air_pressure"   # every ATMS is -99999 flagged 1
    assert pressure.sum() == 4114
    assert (ds["qc"].values[pressure] == flags.MISSING).all()
    assert set(ds["native_qc"].values[pressure]) == {"1"}
    assert ds.attrs["fill_values"] == 4 * 4114


# ---------------------------------------------------------------------------------------------- bad input


def _write(tmp_path, text: str, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _with_cell(line_no: int, column: str, value: str, text: str = FIXTURE_TEXT) -> str:
    lines = text.splitlines()
    cells = lines[line_no - 1].split(",")
    cells[HEADER.index(column)] = value
    lines[line_no - 1] = ",".join(cells)
    return "\n".join(lines) + "\n"


def test_empty_file(tmp_path):
    with pytest.raises(InputError, match=r"bad\.csv: empty file"):
        coasthf.read(_write(tmp_path, ""))


def test_header_only_gives_empty_table(tmp_path):
    assert coasthf.read(_write(tmp_path, FIXTURE_LINES[0] + "\n")).sizes["obs"] == 0


def test_truncated_mid_line(tmp_path):
    text = FIXTURE_TEXT.rstrip("\n")
    with pytest.raises(InputError, match=r"bad\.csv, line 7: expected 15 fields, found 10 \(truncated line\?\)"):
        coasthf.read(_write(tmp_path, text[:-30]))


def test_truncated_inside_qc_string(tmp_path):
    text = FIXTURE_TEXT.rstrip("\n")
    with pytest.raises(InputError, match=r"line 7, field 'QC': QC string '0031111111' has 10 digits; expected 14"):
        coasthf.read(_write(tmp_path, text[:-4]))


def test_qc_read_as_integer_loses_leading_zeros(tmp_path):
    # what a spreadsheet round trip does: the QC string lost its two leading zeros
    text = _with_cell(3, "QC", "111114341920")
    with pytest.raises(InputError, match=r"line 3, field 'QC'.*has 12 digits; expected 14"):
        coasthf.read(_write(tmp_path, text))


def test_wrong_delimiter(tmp_path):
    with pytest.raises(InputError, match=r"bad\.csv, line 1: header has a single column.*';'.*wrong delimiter"):
        coasthf.read(_write(tmp_path, FIXTURE_TEXT.replace(",", ";")))


@pytest.mark.parametrize("column, message", [
    ("LATITUDE (degree_north)", "missing required column 'LATITUDE'"),
    ("DATE (yyyy-mm-ddThh:mi:ssZ)", "missing required column 'DATE'"),
])
def test_missing_required_column(tmp_path, column, message):
    text = FIXTURE_TEXT.replace(column, "SOMETHING", 1)
    with pytest.raises(InputError, match=rf"bad\.csv, line 1, field '\w+': {message}"):
        coasthf.read(_write(tmp_path, text))


def test_qc_not_last_column(tmp_path):
    text = FIXTURE_TEXT.replace(",QC\n", ",QCX\n", 1)
    with pytest.raises(InputError, match=r"line 1, field 'QCX': last column is 'QCX'; expected 'QC'"):
        coasthf.read(_write(tmp_path, text))


def test_unknown_unit(tmp_path):
    text = FIXTURE_TEXT.replace("PSAL LEVEL1 (psu)", "PSAL LEVEL1 (g/kg)", 1)
    with pytest.raises(InputError, match=r"line 1, field 'PSAL LEVEL1 \(g/kg\)': unknown unit 'g/kg'"):
        coasthf.read(_write(tmp_path, text))


def test_unknown_parameter_code(tmp_path):
    text = FIXTURE_TEXT.replace("FLU3 LEVEL1 (FFU)", "CDOM LEVEL1 (ppb)", 1)
    with pytest.raises(InputError, match=r"line 1, field 'CDOM LEVEL1 \(ppb\)': unknown parameter code 'CDOM'"):
        coasthf.read(_write(tmp_path, text))


def test_malformed_column_name(tmp_path):
    text = FIXTURE_TEXT.replace("FLU3 LEVEL1 (FFU)", "FLU3 (FFU)", 1)
    with pytest.raises(InputError, match=r"field 'FLU3 \(FFU\)': unexpected column"):
        coasthf.read(_write(tmp_path, text))


@pytest.mark.parametrize("qc", ["0011111111911A", "00111111119 11"])
def test_unknown_flag_value(tmp_path, qc):
    with pytest.raises(InputError, match=r"bad\.csv, line 4, field '.+': unknown QC flag"):
        coasthf.read(_write(tmp_path, _with_cell(4, "QC", qc)))


def test_malformed_number_and_date(tmp_path):
    with pytest.raises(InputError, match=r"line 5, field 'PSAL LEVEL1 \(psu\)': not a number: '34\.9\.3'"):
        coasthf.read(_write(tmp_path, _with_cell(5, "PSAL LEVEL1 (psu)", "34.9.3")))
    with pytest.raises(InputError, match=r"line 4, field 'DATE \(yyyy-mm-ddThh:mi:ssZ\)': bad date"):
        coasthf.read(_write(tmp_path, _with_cell(4, "DATE (yyyy-mm-ddThh:mi:ssZ)", "2024-09-01 00:10")))


def test_all_values_missing(tmp_path):
    header = FIXTURE_LINES[0]
    row = "6200450,0x3f,2024-09-01T00:00:00Z,48.3580,-4.5518" + "," * 9 + ",00111999999999"
    ds = coasthf.read(_write(tmp_path, header + "\n" + row + "\n"))
    assert ds.sizes["obs"] == 8
    assert (ds["qc"].values == flags.MISSING).all() and np.isnan(ds["value"].values).all()


def test_sentinel_only(tmp_path):
    header = FIXTURE_LINES[0]
    rows = [f"6200450,0x3f,2024-09-01T00:{m:02d}:00Z,48.3580,-4.5518" + ",-99999" * 9 + ",00111111111111"
            for m in (0, 20)]
    ds = coasthf.read(_write(tmp_path, "\n".join([header, *rows]) + "\n"))
    assert (ds["qc"].values == flags.MISSING).all() and np.isnan(ds["value"].values).all()
    assert set(ds["native_qc"].values) == {"1"}
    assert ds.attrs["fill_values"] == 16 and ds.attrs["housekeeping_values"] == 2


def test_crlf_and_blank_lines_keep_line_numbers(tmp_path):
    lines = list(FIXTURE_LINES)
    lines.insert(3, "")
    ds = coasthf.read(_write(tmp_path, "\r\n".join(lines) + "\r\n"))
    assert sorted(set(ds["line"].values.tolist())) == [2, 3, 5, 6, 7, 8]
    assert _at(ds, 5, "par", "LEVEL0")["native_qc"] == "5"


# ---------------------------------------------------------------------------------------------- property


OCEANSITES_QARTOD = {"0": 2, "1": 1, "2": 1, "3": 3, "4": 4, "5": 1, "6": 1, "7": 3, "8": 3, "9": 9}
_value = st.one_of(st.just(""), st.sampled_from(["-99999", "-214748", "214748", "-1000", "99999"]),
                   st.floats(-50.0, 50.0).map(lambda x: f"{x:.3f}"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.tuples(_value, st.sampled_from(list("0123456789"))), min_size=1, max_size=20))
def test_property_fill_and_flags(tmp_path, cells):
    """One temperature column: empty or fill -> 9 and NaN whatever the digit, else the OceanSITES table."""
    header = "PLATFORM,DATE (yyyy-mm-ddThh:mi:ssZ),LATITUDE (degree_north),LONGITUDE (degree_east)," \
             "TEMP LEVEL1 (degree_Celsius),QC"
    body = [f"EXIN0002,2025-01-01T{i:02d}:00:00Z,43.683,7.317,{v},0111{d}" for i, (v, d) in enumerate(cells)]
    path = tmp_path / "prop.csv"
    path.write_text("\n".join([header, *body]) + "\n")
    ds = coasthf.read(path)
    present = np.array([v != "" and abs(float(v)) < 99999 and float(v) != -1000 for v, _ in cells])
    expected = np.where(present, [OCEANSITES_QARTOD[d] for _, d in cells], 9)
    assert ds["qc"].values.tolist() == expected.tolist()
    assert np.isnan(ds["value"].values[~present]).all()
    assert ds["native_qc"].values.tolist() == [d for _, d in cells]
    assert ds["censored"].values.tolist() == (present & np.array([d == "6" for _, d in cells])).tolist()

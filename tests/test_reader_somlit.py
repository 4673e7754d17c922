"""SOMLIT reader: fixtures (both layouts), the real Mediterranean extraction, and bad input."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin import flags
from twin.errors import InputError
from twin.observations import validate
from twin.readers import detect_format, read_observations, somlit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "somlit"
NATIVE = FIXTURES / "somlit_native_hydro.csv"
NATIVE_SUBSET = FIXTURES / "somlit_native_units_comment.csv"
REXPORT = FIXTURES / "somlit_rexport_hydro.csv"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HYDRO = DATA / "somlit-med" / "HYDRO.csv"

O2_ML_PER_L = 1000.0 / 22.3916   # mL/L -> mmol m-3 (molar volume of O2, Garcia and Gordon 1992)
O2_MG_PER_L = 1000.0 / 31.9988   # mg/L -> mmol m-3


def rows(ds, **where):
    """Indices of the rows matching every field=value in ``where``."""
    mask = np.ones(ds.sizes["obs"], bool)
    for name, value in where.items():
        mask &= ds[name].values == value
    return np.flatnonzero(mask)


def one(ds, **where):
    idx = rows(ds, **where)
    assert idx.size == 1, f"{where} matches {idx.size} rows"
    return {name: ds[name].values[idx[0]] for name in ds.variables}


@pytest.fixture(scope="module")
def native():
    return somlit.read(NATIVE)


# ---------------------------------------------------------------------------------------------- fixtures


def test_native_shape_and_contract(native):
    validate(native)
    assert native.sizes["obs"] == 6 * 15  # every (sample, variable) pair, missing ones included
    assert native.attrs["layout"] == "native"
    assert "SOMLIT extraction hydro" in native.attrs["metadata"]
    assert set(native["source"].values) == {str(NATIVE)}


def test_native_line_numbers_skip_metadata_units_and_comments(native):
    # metadata 1-2, header 3, units 4, data 5-6, comment 7, data 8-11
    assert sorted(set(native["line"].values.tolist())) == [5, 6, 8, 9, 10, 11]
    assert one(native, line=9, variable="temperature")["value"] == pytest.approx(12.90)


def test_native_sites_layers_depths_positions(native):
    assert sorted(set(native["site"].values)) == ["Frioul", "Point B", "Sola"]
    r = one(native, line=6, variable="temperature")
    assert (r["site"], r["layer"], r["layer_code"], r["depth"]) == ("Point B", "bottom", "F", 50.0)
    assert (r["latitude"], r["longitude"]) == (pytest.approx(43.6833), pytest.approx(7.31667))
    r = one(native, line=11, variable="salinity")
    assert (r["layer"], r["layer_code"], r["depth"]) == ("intermediate", "I", 10.0)
    assert one(native, line=9, variable="salinity")["layer"] == "surface"


def test_native_time_is_utc_naive_datetime64(native):
    r = one(native, line=5, variable="temperature")
    assert r["time"] == np.datetime64("2021-01-12T08:30:00")
    assert native["time"].dtype == np.dtype("datetime64[ns]")


def test_native_rows_keep_file_order_even_when_times_go_back(native):
    times = native["time"].values[::15]
    assert times[-1] < times[0]  # line 11 (2021-01-05) after line 5 (2021-01-12): not sorted
    assert native["line"].values[::15].tolist() == [5, 6, 8, 9, 10, 11]


def test_variable_mapping_covers_every_pair(native):
    expected = ["temperature", "salinity", "oxygen", "ph", "ammonium", "nitrate", "nitrite", "phosphate",
                "silicate", "poc", "pon", "spm", "delta15n", "delta13c", "chlorophyll"]
    assert native["variable"].values[:15].tolist() == expected
    assert list(somlit.VARIABLES.values()) == expected


def test_oxygen_ml_per_l_to_mmol_m3(native):
    r = one(native, line=5, variable="oxygen")
    assert r["value"] == pytest.approx(5.46 * O2_ML_PER_L, rel=1e-12)
    assert O2_ML_PER_L == pytest.approx(44.6596, rel=1e-5)


def test_units_row_is_used_and_unicode_spellings_accepted(native):
    assert "NH4: µmol/l" in native.attrs["units"] and "DN15: ‰" in native.attrs["units"]
    assert one(native, line=5, variable="nitrate")["value"] == pytest.approx(0.98)
    assert one(native, line=9, variable="poc")["value"] == pytest.approx(100.2)  # ug/L == mg m-3


@pytest.mark.parametrize("line, variable, qc, censored", [
    (5, "ammonium", flags.GOOD, True),          # 0: below detection limit
    (5, "temperature", flags.GOOD, False),      # 2
    (5, "oxygen", flags.GOOD, False),           # 6: mean of replicates
    (6, "ph", flags.GOOD, False),               # 7: outside protocol, good
    (6, "ammonium", flags.SUSPECT, False),      # 3
    (6, "chlorophyll", flags.BAD, False),       # 4
    (9, "poc", flags.NOT_EVALUATED, False),     # 8
    (10, "oxygen", flags.SUSPECT, False),       # 3
])
def test_flag_mapping(native, line, variable, qc, censored):
    r = one(native, line=line, variable=variable)
    assert (int(r["qc"]), bool(r["censored"])) == (qc, censored)
    assert np.isfinite(r["value"])


@pytest.mark.parametrize("line, variable, native_qc", [
    (5, "delta15n", "9"), (6, "poc", "1"), (6, "pon", "5"), (6, "spm", "9"),
    (10, "spm", "2"),   # sentinel 999999 flagged good is still missing
])
def test_sentinel_999999_is_missing_whatever_the_flag(native, line, variable, native_qc):
    r = one(native, line=line, variable=variable)
    assert np.isnan(r["value"]) and r["qc"] == flags.MISSING and r["native_qc"] == native_qc
    assert not r["censored"]


def test_value_flagged_not_reported_is_missing_but_kept(native):
    r = one(native, line=10, variable="delta15n")  # 4.8 flagged 5 (value not yet reported)
    assert r["value"] == pytest.approx(4.8) and r["qc"] == flags.MISSING


def test_replicate_sample_flagged_suspect_first_kept(native):
    first, second = one(native, line=5, variable="temperature"), one(native, line=8, variable="temperature")
    assert first["qc"] == flags.GOOD and second["qc"] == flags.SUSPECT
    assert second["native_qc"] == "2"  # the native flag is untouched
    # chlorophyll: 0.81 flag 2 (kept) then 0.79 flag 6 (later duplicate)
    assert one(native, line=8, variable="chlorophyll")["qc"] == flags.SUSPECT
    # ph was missing in the first sample: nothing to duplicate
    assert one(native, line=8, variable="ph")["qc"] == flags.MISSING
    # another layer at the same time is not a duplicate
    assert one(native, line=6, variable="temperature")["qc"] == flags.GOOD


def test_error_sd_defaults_and_override():
    ds = somlit.read(NATIVE, error_sd={"nitrate": 0.11})
    assert one(ds, line=5, variable="nitrate")["error_sd"] == 0.11
    assert one(ds, line=5, variable="temperature")["error_sd"] == 0.2
    with pytest.raises(ValueError, match="unknown variable 'nitrat'"):
        somlit.read(NATIVE, error_sd={"nitrat": 0.1})


def test_units_row_starting_with_slashes_and_parameter_subset():
    ds = somlit.read(NATIVE_SUBSET)
    assert ds.sizes["obs"] == 2 * 4
    assert sorted(set(ds["variable"].values)) == ["chlorophyll", "oxygen", "salinity", "temperature"]
    assert one(ds, line=5, variable="oxygen")["value"] == pytest.approx(8.0 * O2_MG_PER_L)  # mg/l
    assert one(ds, line=5, variable="temperature")["value"] == pytest.approx(12.5)           # °C


def test_r_export_layout():
    ds = somlit.read(REXPORT)
    validate(ds)
    assert ds.attrs["layout"] == "r-export" and ds.sizes["obs"] == 4 * 15
    assert sorted(set(ds["line"].values.tolist())) == [2, 3, 4, 5]
    assert one(ds, line=2, variable="oxygen")["qc"] == flags.MISSING      # NA, 9
    r = one(ds, line=3, variable="phosphate")                             # "0.05", 0
    assert r["qc"] == flags.GOOD and r["censored"] and r["value"] == pytest.approx(0.05)
    assert one(ds, line=4, variable="salinity")["qc"] == flags.SUSPECT
    assert one(ds, line=4, variable="nitrite")["qc"] == flags.MISSING      # NA, 1
    assert one(ds, line=4, variable="chlorophyll")["qc"] == flags.MISSING  # NA flagged good
    assert one(ds, line=4, variable="chlorophyll")["native_qc"] == "2"
    assert one(ds, line=5, variable="chlorophyll")["qc"] == flags.GOOD     # 7
    assert one(ds, line=4, variable="oxygen")["value"] == pytest.approx(5.80 * O2_ML_PER_L)
    assert one(ds, line=2, variable="temperature")["time"] == np.datetime64("1995-01-18T08:00:00")


def test_registry_detects_somlit():
    assert detect_format(NATIVE) == "somlit"
    assert detect_format(REXPORT) == "somlit"
    assert read_observations(NATIVE).sizes["obs"] == 90
    assert not somlit.sniff(Path(__file__).resolve().parent / "fixtures" / "coasthf" / "coasthf_small.csv")


# ---------------------------------------------------------------------------------------------- real data

QARTOD_OF_SOMLIT = {"0": 1, "1": 9, "2": 1, "3": 3, "4": 4, "5": 9, "6": 1, "7": 1, "8": 2, "9": 9}


def _independent_counts(path: Path) -> Counter:
    """(site, layer code, variable, qc) counts from the csv module, duplicates handled the same way."""
    counts: Counter = Counter()
    seen = set()
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            for code, variable in somlit.VARIABLES.items():
                text, flag = rec[code], rec["q" + code]
                qc = 9 if text in ("NA", "") else QARTOD_OF_SOMLIT[flag]
                key = (rec["nomSite*"], rec["PROF_TEXT"], float(rec["PROF_NUM"]), variable, rec["DATE"], rec["HEURE"])
                if qc in (1, 2):
                    if key in seen:
                        qc = 3
                    seen.add(key)
                counts[(rec["nomSite*"], rec["PROF_TEXT"], variable, qc)] += 1
    return counts


@pytest.fixture(scope="module")
def hydro():
    if not HYDRO.exists():
        pytest.skip(f"real data not found at {HYDRO}")
    return somlit.read(HYDRO)


def test_real_hydro_qc_counts_match_independent_count(hydro):
    expected = _independent_counts(HYDRO)
    actual = Counter(zip(hydro["site"].values, hydro["layer_code"].values, hydro["variable"].values,
                         hydro["qc"].values.tolist()))
    assert actual == expected


def test_real_hydro_shape_sites_and_spans(hydro):
    validate(hydro)
    assert hydro.sizes["obs"] == 5008 * 15
    assert sorted(set(hydro["site"].values)) == ["Point B", "Sola"]
    t = hydro["time"].values
    sola = hydro["site"].values == "Sola"
    assert t[~sola].min() == np.datetime64("1995-01-18T08:00:00")
    assert str(t[sola].max())[:10] == "2021-07-27"
    assert set(zip(hydro["layer_code"].values, hydro["layer"].values)) == {("S", "surface"), ("F", "bottom")}
    good = hydro["qc"].values == flags.GOOD
    temp = good & (hydro["variable"].values == "temperature")
    assert 8.0 < hydro["value"].values[temp].min() and hydro["value"].values[temp].max() < 30.0
    oxy = good & (hydro["variable"].values == "oxygen")
    assert 150.0 < np.median(hydro["value"].values[oxy]) < 300.0  # mmol m-3 (about 5.6 mL/L)
    assert hydro["censored"].values.sum() > 0


# ---------------------------------------------------------------------------------------------- bad input


def _write(tmp_path, text: str, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


NATIVE_TEXT = NATIVE.read_text(encoding="utf-8")
NATIVE_LINES = NATIVE_TEXT.splitlines()


def _native_with(line_no: int, column: str, value: str) -> str:
    """The native fixture with one cell replaced (line_no is 1-based)."""
    return _native_with_text(NATIVE_TEXT, line_no, column, value)


def _native_with_text(text: str, line_no: int, column: str, value: str) -> str:
    lines = text.splitlines()
    header = lines[2].split(";")
    cells = lines[line_no - 1].split(";")
    cells[header.index(column)] = value
    lines[line_no - 1] = ";".join(cells)
    return "\n".join(lines) + "\n"


def test_empty_file(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(InputError, match=r"bad\.csv: empty file"):
        somlit.read(path)
    with pytest.raises(InputError, match="empty file"):
        somlit.read(_write(tmp_path, "\n  \n", "blank.csv"))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.csv: cannot read file"):
        somlit.read(tmp_path / "nope.csv")


def test_truncated_mid_line(tmp_path):
    text = NATIVE_TEXT.rstrip("\n")
    path = _write(tmp_path, text[: len(text) - 30])
    with pytest.raises(InputError, match=r"line 11: expected 40 fields, found \d+ \(truncated line\?\)"):
        somlit.read(path)


def test_header_only_gives_empty_table(tmp_path):
    ds = somlit.read(_write(tmp_path, "\n".join(NATIVE_LINES[:4]) + "\n"))
    assert ds.sizes["obs"] == 0


def test_wrong_delimiter(tmp_path):
    path = _write(tmp_path, NATIVE_TEXT.replace(";", "\t"))
    with pytest.raises(InputError, match=r"bad\.csv, line 3: no SOMLIT header found.*wrong delimiter"):
        somlit.read(path)


def test_extra_field_wrong_delimiter_in_one_line(tmp_path):
    path = _write(tmp_path, _native_with(9, "T", "12;90"))
    with pytest.raises(InputError, match=r"line 9: expected 40 fields, found 41"):
        somlit.read(path)


@pytest.mark.parametrize("column", ["PROF_TEXT", "DATE", "nomSite*"])
def test_missing_required_column(tmp_path, column):
    lines = list(NATIVE_LINES)
    lines[2] = lines[2].replace(f";{column};", ";RENAMED;")
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bad\.csv.*" + column.replace("*", r"\*")):
        somlit.read(path)


def test_flag_column_without_value_column(tmp_path):
    lines = list(NATIVE_LINES)
    lines[2] = lines[2].replace(";NO2;", ";NO2X;")
    with pytest.raises(InputError, match=r"line 3, field 'NO2': flag column 'qNO2' has no value column"):
        somlit.read(_write(tmp_path, "\n".join(lines) + "\n"))


def test_unknown_unit(tmp_path):
    lines = list(NATIVE_LINES)
    lines[3] = lines[3].replace("degC", "degC per fortnight")
    with pytest.raises(InputError, match=r"bad\.csv, line 4, field 'T': unknown unit.*'degC per fortnight'"):
        somlit.read(_write(tmp_path, "\n".join(lines) + "\n"))


@pytest.mark.parametrize("flag", ["12", "A", "-1"])
def test_unknown_flag(tmp_path, flag):
    path = _write(tmp_path, _native_with(9, "qNO3", flag))
    with pytest.raises(InputError, match=rf"bad\.csv, line 9, field 'qNO3': unknown SOMLIT flag '{flag}'"):
        somlit.read(path)


def test_malformed_number_names_line_and_column(tmp_path):
    path = _write(tmp_path, _native_with(10, "S", "38,01"))
    with pytest.raises(InputError, match=r"line 10, field 'S': not a number: '38,01'"):
        somlit.read(path)


def test_bad_date_and_time(tmp_path):
    with pytest.raises(InputError, match=r"line 6, field 'DATE': bad date/time '2021-13-12'"):
        somlit.read(_write(tmp_path, _native_with(6, "DATE", "2021-13-12")))
    with pytest.raises(InputError, match=r"line 6, field 'HEURE': bad date/time"):
        somlit.read(_write(tmp_path, _native_with(6, "HEURE", "")))


def test_unknown_layer_code(tmp_path):
    with pytest.raises(InputError, match=r"line 9, field 'PROF_TEXT': unknown layer code 'X'"):
        somlit.read(_write(tmp_path, _native_with(9, "PROF_TEXT", "X")))


def test_non_monotonic_and_duplicated_times_are_kept_and_flagged(tmp_path):
    # line 10 becomes the surface sample of line 9 (same site, layer, depth and time): a duplicate;
    # line 11 (2021-01-05) stays after line 10 (2021-01-13): out of order
    path = _write(tmp_path, _native_with(10, "PROF_TEXT", "S"))
    path = _write(tmp_path, _native_with_text(path.read_text(encoding="utf-8"), 10, "PROF_NUM", "3.00"))
    ds = somlit.read(path)
    assert ds.sizes["obs"] == 90
    assert one(ds, line=9, variable="temperature")["qc"] == flags.GOOD
    assert one(ds, line=10, variable="temperature")["qc"] == flags.SUSPECT
    assert one(ds, line=10, variable="spm")["qc"] == flags.MISSING  # missing stays missing
    assert ds["time"].values[-1] < ds["time"].values[0]             # file order, not sorted


def test_all_values_missing(tmp_path):
    header, units = NATIVE_LINES[2], NATIVE_LINES[3]
    meta = "12;2021-01-12;08:30:00;0;inc;S;1.00;Point B;43.6833;7.31667"
    row = meta + ";" + ";".join(["999999;9"] * 15)
    ds = somlit.read(_write(tmp_path, "\n".join([header, units, row, row.replace(";S;", ";F;")]) + "\n"))
    assert ds.sizes["obs"] == 30
    assert (ds["qc"].values == flags.MISSING).all() and np.isnan(ds["value"].values).all()


def test_sentinel_only_with_good_flags(tmp_path):
    header = NATIVE_LINES[2]
    meta = "12;2021-01-12;08:30:00;0;inc;S;1.00;Point B;43.6833;7.31667"
    row = meta + ";" + ";".join(["999999;2"] * 15)
    ds = somlit.read(_write(tmp_path, header + "\n" + row + "\n"))
    assert (ds["qc"].values == flags.MISSING).all() and np.isnan(ds["value"].values).all()
    assert set(ds["native_qc"].values) == {"2"}
    assert not ds["censored"].values.any()


def test_present_value_without_flag_is_not_evaluated(tmp_path):
    ds = somlit.read(_write(tmp_path, _native_with(9, "qT", "")))
    r = one(ds, line=9, variable="temperature")
    assert r["qc"] == flags.NOT_EVALUATED and r["native_qc"] == "" and r["value"] == pytest.approx(12.9)


def test_windows_1252_encoding_and_crlf(tmp_path):
    path = tmp_path / "cp1252.csv"
    path.write_bytes(NATIVE_TEXT.replace("\n", "\r\n").encode("cp1252"))
    ds = somlit.read(path)
    assert ds.sizes["obs"] == 90 and "DN15: ‰" in ds.attrs["units"]
    assert one(ds, line=5, variable="ammonium")["value"] == pytest.approx(0.12)


def test_blank_lines_keep_line_numbers(tmp_path):
    lines = list(NATIVE_LINES)
    lines.insert(8, "")  # a blank line before the Sola samples
    ds = somlit.read(_write(tmp_path, "\n".join(lines) + "\n"))
    assert sorted(set(ds["line"].values.tolist())) == [5, 6, 8, 10, 11, 12]
    assert one(ds, line=10, variable="temperature")["value"] == pytest.approx(12.90)


def test_extra_columns_are_listed_not_ingested(tmp_path):
    lines = [line + (";EXTRA" if i == 2 else ";" if i == 3 else ";1.5") if i >= 2 and not line.startswith("//")
             else line for i, line in enumerate(NATIVE_LINES)]
    ds = somlit.read(_write(tmp_path, "\n".join(lines) + "\n"))
    assert ds.sizes["obs"] == 90 and ds.attrs["ignored_columns"] == "EXTRA"


def test_r_export_truncated_inside_quoted_field(tmp_path):
    text = REXPORT.read_text(encoding="utf-8").rstrip("\n")
    cut = text[: text.rindex('"0.22"') + 3]  # ends with '"0.'
    with pytest.raises(InputError, match=r"line 5: expected 41 fields, found 40 \(truncated line\?\)"):
        somlit.read(_write(tmp_path, cut))


# ---------------------------------------------------------------------------------------------- property


_cell = st.tuples(st.one_of(st.just("999999"), st.just(""), st.floats(0.0, 50.0).map(lambda x: f"{x:.3f}")),
                  st.sampled_from(list("0123456789")))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.tuples(_cell, _cell), min_size=1, max_size=12))
def test_property_qc_follows_policy(tmp_path, cells):
    """Whatever the values and flags: missing -> 9, else the SOMLIT table; censored only for a present 0."""
    header = "ID_SITE;DATE;HEURE;COEF_MAREE;MAREE;PROF_TEXT;PROF_NUM;nomSite*;gpsLat*;gpsLong*;T;qT;NO3;qNO3"
    body = [f"12;2021-01-{1 + i % 28:02d};08:00:00;0;inc;S;1;Point B;43.68;7.31;{t};{qt};{n};{qn}"
            for i, ((t, qt), (n, qn)) in enumerate(cells)]
    path = tmp_path / "prop.csv"
    path.write_text("\n".join([header, *body]) + "\n")
    ds = somlit.read(path)
    flat = [c for pair in cells for c in pair]
    present = np.array([v not in ("", "999999") for v, _ in flat])
    expected_qc = np.where(present, [QARTOD_OF_SOMLIT[f] for _, f in flat], 9)
    # rows repeating a date (i and i+28) cannot occur with max_size 12: no duplicates here
    assert ds["qc"].values.tolist() == expected_qc.tolist()
    assert ds["censored"].values.tolist() == (present & np.array([f == "0" for _, f in flat])).tolist()
    assert np.isnan(ds["value"].values[~present]).all() and np.isfinite(ds["value"].values[present]).all()
    assert ds["native_qc"].values.tolist() == [f for _, f in flat]

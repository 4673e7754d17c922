"""Generic CSV reader: mapping validation, wide and long fixtures, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from twin import flags
from twin.errors import ConfigError, InputError
from twin.readers import generic_csv
from twin.readers.generic_csv import Mapping, load_mapping

FIXTURES = Path(__file__).parent / "fixtures" / "csv"
WIDE = FIXTURES / "buoy_wide.csv"
WIDE_MAP = FIXTURES / "buoy_wide.yaml"
LONG = FIXTURES / "lab_long.csv"
LONG_MAP = FIXTURES / "lab_long.yaml"
O2_MG_TO_MMOL = 1000.0 / 31.9988


def _rows(ds, variable, **match):
    sel = ds["variable"].values == variable
    for key, value in match.items():
        if key == "time":
            sel &= ds["time"].values == np.datetime64(value, "ns")
        else:
            sel &= ds[key].values == value
    return ds.isel(obs=np.flatnonzero(sel))


def _one(ds, variable, **match):
    out = _rows(ds, variable, **match)
    assert out.sizes["obs"] == 1, f"{variable} {match}: {out.sizes['obs']} rows"
    return {k: out[k].values[0] for k in out.variables}


def _simple_map(**over):
    base = {"time": {"column": "t"}, "site": {"value": "S1"},
            "variables": {"temperature": {"column": "T", "units": "degC", "flag_column": "Tq",
                                          "flag_scheme": "oceansites"}}}
    base.update(over)
    return base


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- wide fixture ---------------------------------------------------------------------------------------

def test_wide_fixture_every_mapping():
    ds = generic_csv.read(WIDE, mapping=WIDE_MAP)
    # Europe/Paris: winter UTC+1, summer UTC+2
    surf = _one(ds, "temperature", time="2021-01-15T09:00", layer="surface")
    assert surf["value"] == 12.5 and surf["qc"] == flags.GOOD and surf["native_qc"] == "1"
    assert surf["depth"] == 1.0 and surf["layer_code"] == "S" and surf["site"] == "TWIN-1"
    assert surf["line"] == 4 and surf["latitude"] == 43.30 and surf["longitude"] == 5.35
    bottom = _one(ds, "temperature", time="2021-01-15T09:00", layer="bottom")
    assert bottom["line"] == 6 and bottom["depth"] == 25.0  # comment line 5 counted as a physical line
    assert _one(ds, "temperature", time="2021-07-15T08:00", layer="surface")["qc"] == flags.SUSPECT
    # salinity on the OceanSITES scale: 2 probably good -> good
    assert _one(ds, "salinity", time="2021-01-15T09:00", layer="bottom")["qc"] == flags.GOOD
    # nitrate on the SOMLIT scale: 2 good, "<0,05" with flag 0 censored, NA with 9 missing
    no3 = _one(ds, "nitrate", time="2021-01-15T09:00", layer="surface")
    assert no3["value"] == 3.2 and no3["qc"] == flags.GOOD and no3["error_sd"] == 0.2
    cens = _one(ds, "nitrate", time="2021-07-15T08:00", layer="surface")
    assert cens["censored"] and cens["value"] == pytest.approx(0.05) and cens["qc"] == flags.GOOD
    na = _one(ds, "nitrate", time="2021-07-15T08:00", layer="bottom")
    assert np.isnan(na["value"]) and na["qc"] == flags.MISSING and na["native_qc"] == "9"
    # oxygen mg/L -> mmol m-3, no flag column -> not evaluated; -999 sentinel -> missing
    o2 = _one(ds, "oxygen", time="2021-01-15T09:00", layer="surface")
    assert o2["value"] == pytest.approx(8.9 * O2_MG_TO_MMOL) and o2["qc"] == flags.NOT_EVALUATED
    sentinel = _one(ds, "oxygen", time="2021-07-15T08:00", layer="surface")
    assert np.isnan(sentinel["value"]) and sentinel["qc"] == flags.MISSING
    # sentinel with a "good" native flag is still missing, native flag kept
    t = _one(ds, "temperature", time="2021-07-16T07:30")
    assert np.isnan(t["value"]) and t["qc"] == flags.MISSING and t["native_qc"] == "9"
    assert ds.sizes["obs"] == 5 * 4
    assert not generic_csv.sniff(WIDE)


def test_long_fixture_every_mapping():
    ds = generic_csv.read(LONG, mapping=LONG_MAP)
    no3 = _one(ds, "nitrate", site="apacp")
    assert no3["value"] == pytest.approx(0.05 * 1000 / 14.0067)  # mg/L as N
    assert no3["qc"] == flags.GOOD and no3["line"] == 2 and no3["layer"] == "surface"
    assert no3["layer_code"] == ""
    assert _one(ds, "phosphate", site="apacp")["value"] == 0.5
    assert _one(ds, "temperature", site="apacp")["qc"] == flags.NOT_EVALUATED
    chl = _one(ds, "chlorophyll", site="apacp")  # 09:00-05:00 in the file
    assert chl["time"] == np.datetime64("2021-03-01T14:00", "ns") and chl["qc"] == flags.SUSPECT
    db = _rows(ds, "nitrate", site="apadb")
    assert db["qc"].values.tolist() == [flags.MISSING, flags.GOOD]  # missing first row does not shadow
    assert ds.attrs["skipped_variables"] == "SECCHI: 1 rows"
    assert "SECCHI" not in set(ds["variable"].values)


def test_mapping_as_dict_and_fixed_offset(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01 00:30,10.0,1\n")
    mapping = _simple_map(time={"column": "t", "format": "%Y-%m-%d %H:%M", "timezone": "+01:00"})
    ds = generic_csv.read(path, mapping=mapping)
    assert ds["time"].values[0] == np.datetime64("2020-12-31T23:30", "ns")
    ds = generic_csv.read(path, mapping=load_mapping(mapping), error_sd={"temperature": 0.05})
    assert ds["error_sd"].values[0] == 0.05


def test_mapping_round_trips_yaml():
    m = load_mapping(WIDE_MAP)
    assert isinstance(m, Mapping)
    again = load_mapping(yaml.safe_load(yaml.safe_dump(m.model_dump(mode="json"))))
    assert again == m
    with pytest.raises(Exception):
        m.delimiter = ","  # frozen


# --- mapping errors -------------------------------------------------------------------------------------

def test_unknown_key_did_you_mean():
    with pytest.raises(ConfigError, match=r"delimeter: unknown key \(did you mean 'delimiter'\?\)"):
        load_mapping(_simple_map(delimeter=";"))


def test_nested_unknown_key_has_path():
    bad = _simple_map()
    bad["variables"]["temperature"]["unit"] = bad["variables"]["temperature"].pop("units")
    with pytest.raises(ConfigError) as err:
        load_mapping(bad)
    text = str(err.value)
    assert "variables.temperature.unit: unknown key (did you mean 'units'?)" in text
    assert "variables.temperature.units: Field required" in text


def test_unknown_variable_and_unit_in_mapping():
    bad = _simple_map(variables={"temprature": {"column": "T", "units": "degC"},
                                 "nitrate": {"column": "N", "units": "furlongs"}})
    with pytest.raises(ConfigError) as err:
        load_mapping(bad)
    text = str(err.value)
    assert "unknown canonical variable 'temprature' (did you mean 'temperature'?)" in text
    assert "variables.nitrate: unknown unit 'furlongs'" in text


def test_bad_timezone_scheme_layout():
    with pytest.raises(ConfigError, match=r"time.timezone: unknown timezone 'Mars/Olympus'"):
        load_mapping(_simple_map(time={"column": "t", "timezone": "Mars/Olympus"}))
    bad = _simple_map()
    bad["variables"]["temperature"]["flag_scheme"] = "woce"
    with pytest.raises(ConfigError, match=r"variables.temperature.flag_scheme"):
        load_mapping(bad)
    with pytest.raises(ConfigError, match="value_column: required for layout 'long'"):
        load_mapping({"layout": "long", "time": {"column": "t"}, "site": {"value": "s"},
                      "variable_column": "p", "units": {"nitrate": "umol/l"}})
    with pytest.raises(ConfigError, match="site: .*exactly one of 'column' or 'value'"):
        load_mapping(_simple_map(site={}))


def test_yaml_syntax_error(tmp_path):
    path = _write(tmp_path, "time: {column: t\nsite: [", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid configuration\n  - invalid YAML"):
        load_mapping(path)


# --- bad input -------------------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    with pytest.raises(InputError, match=r"data.csv: empty file"):
        generic_csv.read(_write(tmp_path, ""), mapping=_simple_map())


def test_header_only(tmp_path):
    with pytest.raises(InputError, match=r"data.csv, line 1: no data rows"):
        generic_csv.read(_write(tmp_path, "t,T,Tq\n"), mapping=_simple_map())


def test_truncated_mid_line(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T00:00,10.0,1\n2021-01-01T01:00,10")
    with pytest.raises(InputError, match=r"data.csv, line 3: truncated record: expected 3 fields"):
        generic_csv.read(path, mapping=_simple_map())


def test_wrong_delimiter(tmp_path):
    path = _write(tmp_path, "t;T;Tq\n2021-01-01T00:00;10.0;1\n")
    with pytest.raises(InputError, match=r"line 1, field 't': missing time column 't'.*wrong delimiter"):
        generic_csv.read(path, mapping=_simple_map())


def test_missing_column(tmp_path):
    path = _write(tmp_path, "t,Temp,Tq\n2021-01-01T00:00,10.0,1\n")
    with pytest.raises(InputError, match=r"field 'T': missing variable column 'T'"):
        generic_csv.read(path, mapping=_simple_map())


def test_unknown_unit_in_unit_column(tmp_path):
    text = LONG.read_text().replace("umol/l", "bushels")
    with pytest.raises(InputError, match=r"line 3, field 'unit': unknown unit 'bushels' for phosphate"):
        generic_csv.read(_write(tmp_path, text), mapping=LONG_MAP)


def test_unknown_variable_in_long_file(tmp_path):
    text = LONG.read_text().replace("PO4", "PO5")
    with pytest.raises(InputError, match=r"line 3, field 'parameter': unknown variable 'PO5'"):
        generic_csv.read(_write(tmp_path, text), mapping=LONG_MAP)


def test_unknown_flag_value(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T00:00,10.0,1\n2021-01-01T01:00,10.0,Z\n")
    with pytest.raises(InputError, match=r"line 3, field 'Tq': unknown oceansites flag 'Z'"):
        generic_csv.read(path, mapping=_simple_map())


def test_non_numeric_value(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T00:00,ten,1\n")
    with pytest.raises(InputError, match=r"line 2, field 'T': value 'ten' is not a number"):
        generic_csv.read(path, mapping=_simple_map())


def test_bad_time(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T00:00,10,1\n2021-02-30T00:00,10,1\n")
    with pytest.raises(InputError, match=r"line 3, field 't': time '2021-02-30T00:00'"):
        generic_csv.read(path, mapping=_simple_map())


def test_dst_gap_local_time(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-03-28 01:30,10,1\n2021-03-28 02:30,10,1\n")
    mapping = _simple_map(time={"column": "t", "timezone": "Europe/Paris"})
    with pytest.raises(InputError, match=r"line 3, field 't': local time '2021-03-28 02:30' is ambiguous or "
                                         r"does not exist"):
        generic_csv.read(path, mapping=mapping)


def test_dst_fall_back_inferred_from_order(tmp_path):
    times = ["2021-10-31 01:30", "2021-10-31 02:00", "2021-10-31 02:30", "2021-10-31 02:00", "2021-10-31 02:30",
             "2021-10-31 03:00"]
    path = _write(tmp_path, "t,T,Tq\n" + "".join(f"{t},10,1\n" for t in times))
    ds = generic_csv.read(path, mapping=_simple_map(time={"column": "t", "timezone": "Europe/Paris"}))
    expected = np.datetime64("2021-10-30T23:30", "ns") + np.arange(6) * np.timedelta64(30, "m")
    np.testing.assert_array_equal(ds["time"].values, expected)  # all distinct, none flagged
    assert (ds["qc"].values == flags.GOOD).all()


def test_non_numeric_constant_in_mapping(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T00:00,10,1\n")
    with pytest.raises(ConfigError, match="depth.value: expected a number"):
        generic_csv.read(path, mapping=_simple_map(depth={"value": "deep"}))


def test_empty_site_cell(tmp_path):
    text = LONG.read_text().replace("apadb,", ",", 1)
    with pytest.raises(InputError, match=r"line 7, field 'station': empty site"):
        generic_csv.read(_write(tmp_path, text), mapping=LONG_MAP)


def test_all_values_missing(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T00:00,,9\n2021-01-01T01:00,,9\n")
    with pytest.raises(InputError, match="no values: every value is empty"):
        generic_csv.read(path, mapping=_simple_map())


def test_sentinel_only(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T00:00,999999,1\n")
    with pytest.raises(InputError, match="no values"):
        generic_csv.read(path, mapping=_simple_map(missing_values=[999999]))
    # without declaring it the sentinel would be a value: the mapping must say so
    ds = generic_csv.read(path, mapping=_simple_map())
    assert ds["value"].values[0] == 999999.0


def test_duplicated_and_non_monotonic_times(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T02:00,12,1\n2021-01-01T00:00,10,1\n2021-01-01T00:00,11,2\n")
    ds = generic_csv.read(path, mapping=_simple_map())
    assert ds.attrs["time_reversals"] == 1
    assert ds["value"].values.tolist() == [10.0, 11.0, 12.0]  # sorted by time, file order within a time
    assert ds["qc"].values.tolist() == [flags.GOOD, flags.SUSPECT, flags.GOOD]
    assert ds["line"].values.tolist() == [3, 4, 2]


def test_extra_field(tmp_path):
    path = _write(tmp_path, "t,T,Tq\n2021-01-01T00:00,10,1,7\n")
    with pytest.raises(InputError, match=r"line 2: record with extra fields"):
        generic_csv.read(path, mapping=_simple_map())


def test_missing_file_and_encoding(tmp_path):
    with pytest.raises(InputError, match="cannot read file"):
        generic_csv.read(tmp_path / "nope.csv", mapping=_simple_map())
    path = tmp_path / "latin.csv"
    path.write_bytes("t,T,Tq\n2021-01-01T00:00,10,1\n# été\n".encode("latin-1"))
    with pytest.raises(InputError, match="not utf-8 text"):
        generic_csv.read(path, mapping=_simple_map())
    ds = generic_csv.read(path, mapping=_simple_map(encoding="latin-1", comment="#"))
    assert ds.sizes["obs"] == 1


# --- property: what is written is what is read -------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.floats(-5, 35, allow_nan=False, width=32),
                          st.sampled_from(["0", "1", "2", "3", "4", "9", ""])), min_size=1, max_size=30))
def test_round_trip_wide(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("rt") / "rt.csv"
    times = np.datetime64("2020-01-01T00:00", "ns") + np.array([r[0] for r in rows]) * np.timedelta64(1, "m")
    lines = ["t,T,Tq"] + [f"{np.datetime_as_string(t, unit='m')},{v!r},{q}" for t, (_, v, q) in zip(times, rows)]
    path.write_text("\n".join(lines) + "\n")
    ds = generic_csv.read(path, mapping=_simple_map())
    order = np.argsort(ds["line"].values, kind="stable")
    np.testing.assert_array_equal(ds["value"].values[order], [float(r[1]) for r in rows])
    np.testing.assert_array_equal(ds["time"].values[order], times)
    expected_qc = [9 if q == "9" else {"": 2, "0": 2, "1": 1, "2": 1, "3": 3, "4": 4}[q] for _, _, q in rows]
    got = ds["qc"].values[order]
    dup = got != np.array(expected_qc)
    # the only allowed difference: a later duplicate of a usable row is flagged suspect
    assert (got[dup] == flags.SUSPECT).all()


"""OceanSITES / CF NetCDF time-series reader: committed fixture, files built in tmp_path, bad input."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from twin import flags
from twin.errors import InputError
from twin.readers import oceansites
from twin.units import DEFAULT_ERROR_SD

FIXTURE = Path(__file__).parent / "fixtures" / "oceansites" / "OS_TWIN-DEMO_TS.nc"
_spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE.with_name("make_fixture.py"))
make_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixture)


def _rows(ds, variable, depth=None):
    sel = ds["variable"].values == variable
    if depth is not None:
        sel &= ds["depth"].values == depth
    return ds.isel(obs=np.flatnonzero(sel))


def _write(tmp_path, ds, name="OS_TEST.nc", encoding=None):
    path = tmp_path / name
    ds.to_netcdf(path, encoding=encoding or {})
    return path


def test_fixture_mapping():
    ds = oceansites.read(FIXTURE)
    assert set(ds["site"].values) == {"TWIN-DEMO"}  # platform_code wins over site_code
    assert ds["latitude"].values[0] == pytest.approx(43.69) and ds["longitude"].values[0] == pytest.approx(7.32)
    assert set(ds["variable"].values) == {"temperature", "salinity", "oxygen", "chlorophyll", "nitrate"}
    assert (ds["line"].values == -1).all() and set(ds["layer"].values) == {""}
    temp10 = _rows(ds, "temperature", 10.0)
    assert temp10.sizes["obs"] == 6
    np.testing.assert_array_equal(temp10["qc"].values, [1, 1, 9, 1, 1, 1])
    assert np.isnan(temp10["value"].values[2]) and temp10["native_qc"].values[2] == "9"
    temp1 = _rows(ds, "temperature", 1.0)
    # OceanSITES 1 good, 3 potentially correctable -> suspect, 4 bad, 0 no QC -> not evaluated
    np.testing.assert_array_equal(temp1["qc"].values, [1, 1, 1, 3, 4, 2])
    np.testing.assert_array_equal(temp1["native_qc"].values, ["1", "1", "1", "3", "4", "0"])
    # umol/kg -> mmol m-3 with a nominal density 1025 kg m-3
    np.testing.assert_allclose(_rows(ds, "oxygen", 1.0)["value"].values, 230.0 * 1.025)
    assert (_rows(ds, "oxygen")["qc"].values == flags.NOT_EVALUATED).all()  # no QC variable
    no3 = _rows(ds, "nitrate")
    np.testing.assert_array_equal(no3["censored"].values, [True, True, False, False, False, True])
    assert (no3["qc"].values == flags.GOOD).all()
    assert np.isnan(_rows(ds, "salinity")["depth"].values).all()  # off the depth axis
    assert _rows(ds, "chlorophyll")["error_sd"].values[0] == DEFAULT_ERROR_SD["chlorophyll"]
    assert ds.attrs["flag_scales"] == "TEMP_QC: oceansites; NTRA_QC: oceansites"
    assert oceansites.sniff(FIXTURE)


def test_fixture_matches_its_generator(tmp_path):
    path = make_fixture.write(tmp_path / "regen.nc")
    a, b = oceansites.read(FIXTURE), oceansites.read(path)
    np.testing.assert_array_equal(a["value"].values, b["value"].values)
    np.testing.assert_array_equal(a["qc"].values, b["qc"].values)


def test_found_by_standard_name_and_options(tmp_path):
    ds = make_fixture.build().rename({"TEMP": "probe_t", "TEMP_QC": "probe_t_QC"})
    ds["probe_t"].attrs["ancillary_variables"] = "probe_t_QC"
    ds["WEIRD"] = ("TIME", np.arange(6.0), {"units": "1"})
    del ds.attrs["platform_code"]
    path = _write(tmp_path, ds)
    out = oceansites.read(path, error_sd={"temperature": 0.01})
    assert set(out["site"].values) == {"DEMO"}  # site_code fallback
    assert (_rows(out, "temperature")["error_sd"].values == 0.01).all()
    assert out.attrs["skipped_variables"] == "WEIRD"  # unrecognised: listed, not silently dropped
    del ds.attrs["site_code"]
    out = oceansites.read(_write(tmp_path, ds, "OS_STEM_TS.nc"), site=None)
    assert set(out["site"].values) == {"OS_STEM_TS"}
    assert set(oceansites.read(path, site="X")["site"].values) == {"X"}


def test_nonstandard_flag_scale_mapped_by_meaning(tmp_path):
    ds = make_fixture.build()
    # a QARTOD-style scale: 1 good, 2 not evaluated, 3 suspect, 4 bad, 9 missing
    ds["TEMP_QC"].attrs.update(flag_values=np.array([1, 2, 3, 4, 9], np.int8),
                               flag_meanings="pass not_evaluated suspect fail missing_data")
    ds["TEMP_QC"].values[:] = np.array([[1, 1], [1, 2], [1, 9], [3, 1], [4, 1], [2, 1]], np.int8)
    out = oceansites.read(_write(tmp_path, ds))
    temp1 = _rows(out, "temperature", 1.0)
    np.testing.assert_array_equal(temp1["qc"].values, [1, 1, 1, 3, 4, 2])
    assert "TEMP_QC: by_meaning" in out.attrs["flag_scales"]


def test_unknown_flag_meaning(tmp_path):
    ds = make_fixture.build()
    ds["TEMP_QC"].attrs["flag_meanings"] = ds["TEMP_QC"].attrs["flag_meanings"].replace("bad_data ", "awful ")
    with pytest.raises(InputError, match=r"OS_TEST.nc, field 'TEMP_QC': unknown flag meaning 'awful'"):
        oceansites.read(_write(tmp_path, ds))


def test_undeclared_flag_value(tmp_path):
    ds = make_fixture.build()
    ds["NTRA_QC"].values[0] = 12
    with pytest.raises(InputError, match=r"field 'NTRA_QC': flag value '12' is not in the flag table"):
        oceansites.read(_write(tmp_path, ds))


def test_unknown_unit(tmp_path):
    ds = make_fixture.build()
    ds["CPHL"].attrs["units"] = "furlongs"
    with pytest.raises(InputError, match=r"field 'CPHL': unknown unit 'furlongs' for chlorophyll"):
        oceansites.read(_write(tmp_path, ds))


def test_missing_units_attribute(tmp_path):
    ds = make_fixture.build()
    del ds["NTRA"].attrs["units"]
    with pytest.raises(InputError, match=r"field 'NTRA': variable has no 'units' attribute"):
        oceansites.read(_write(tmp_path, ds))


def test_corrupted_netcdf(tmp_path):
    data = FIXTURE.read_bytes()
    path = tmp_path / "OS_BROKEN.nc"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"OS_BROKEN.nc: corrupted or unreadable NetCDF"):
        oceansites.read(path)


def test_empty_and_not_netcdf(tmp_path):
    empty = tmp_path / "empty.nc"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.nc: empty file"):
        oceansites.read(empty)
    text = tmp_path / "text.nc"
    text.write_text("TIME,TEMP\n2020-01-01,12\n")
    with pytest.raises(InputError, match=r"text.nc: not a NetCDF file"):
        oceansites.read(text)
    assert not oceansites.sniff(text)


def test_all_fill_and_sentinel_only(tmp_path):
    ds = make_fixture.build()[["TEMP", "LATITUDE", "LONGITUDE"]]
    ds["TEMP"].values[:] = np.nan
    with pytest.raises(InputError, match="no values: every variable is _FillValue"):
        oceansites.read(_write(tmp_path, ds, encoding={"TEMP": {"_FillValue": -999.0}}))
    ds["TEMP"].values[:] = 99999.0  # sentinel not declared as _FillValue
    with pytest.raises(InputError, match="no values"):
        oceansites.read(_write(tmp_path, ds, "OS_S.nc", encoding={"TEMP": {"_FillValue": None}}))


def test_sentinel_among_values(tmp_path):
    ds = make_fixture.build()
    ds["PSAL"].values[1] = 999999.0
    out = _rows(oceansites.read(_write(tmp_path, ds)), "salinity")
    assert out["qc"].values[1] == flags.MISSING and np.isnan(out["value"].values[1])


def test_duplicated_and_non_monotonic_times(tmp_path):
    ds = make_fixture.build()[["PSAL", "LATITUDE", "LONGITUDE"]]
    times = ds["TIME"].values.copy()
    times[3] = times[2]  # duplicate
    times[5], times[4] = times[4], times[5]  # backwards step
    ds = ds.assign_coords(TIME=("TIME", times, ds["TIME"].attrs))
    out = oceansites.read(_write(tmp_path, ds))
    assert out.attrs["time_reversals"] == 1
    assert (np.diff(out["time"].values.astype(np.int64)) >= 0).all()
    dup = out.isel(obs=np.flatnonzero(out["time"].values == times[2]))
    assert dup["value"].values.tolist() == [38.0, 38.02]
    assert dup["qc"].values.tolist() == [flags.NOT_EVALUATED, flags.SUSPECT]


def test_no_time_variable(tmp_path):
    ds = xr.Dataset({"TEMP": ("obs", np.arange(3.0), {"units": "degC"})})
    with pytest.raises(InputError, match=r"field 'TIME': no time variable"):
        oceansites.read(_write(tmp_path, ds))


def test_undecodable_time(tmp_path):
    ds = xr.Dataset({"TEMP": ("TIME", np.arange(3.0), {"units": "degC"})},
                    coords={"TIME": ("TIME", np.arange(3.0), {"units": "fortnights after the flood",
                                                              "standard_name": "time"})})
    with pytest.raises(InputError, match=r"field 'TIME'"):
        oceansites.read(_write(tmp_path, ds))


def test_positive_up_depth(tmp_path):
    ds = make_fixture.build()
    ds = ds.assign_coords(DEPTH=("DEPTH", [-1.0, -10.0], {"units": "m", "positive": "up",
                                                         "standard_name": "depth"}))
    out = oceansites.read(_write(tmp_path, ds))
    assert set(_rows(out, "temperature")["depth"].values.tolist()) == {1.0, 10.0}


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        oceansites.read(tmp_path / "nope.nc")


def test_registry_detects_oceansites():
    from twin.readers import detect_format, read_observations
    assert detect_format(FIXTURE) == "oceansites"
    assert read_observations(FIXTURE).sizes["obs"] == 42


def test_character_flags(tmp_path):
    ds = make_fixture.build()
    ds["PSAL_QC"] = ("TIME", np.array([b"1", b"2", b"4", b"0", b"9", b"1"], dtype="S1"), {})
    out = _rows(oceansites.read(_write(tmp_path, ds)), "salinity")
    assert out["qc"].values.tolist() == [1, 1, 4, 2, 9, 1]
    assert out["native_qc"].values.tolist() == ["1", "2", "4", "0", "9", "1"]

"""NERRS SWMP / CDMO reader: fixtures cut from the real Apalachicola files, bad input, real data."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twin import flags
from twin.errors import InputError
from twin.readers import swmp
from twin.units import DEFAULT_ERROR_SD

FIXTURES = Path(__file__).parent / "fixtures" / "swmp"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SWMP_DATA = DATA / "swmp-apalachicola"
needs_data = pytest.mark.skipif(not SWMP_DATA.is_dir(), reason=f"real SWMP data not present at {SWMP_DATA}")


def _select(ds, variable, time=None):
    sel = ds["variable"].values == variable
    if time is not None:
        sel &= ds["time"].values == np.datetime64(time, "ns")
    return ds.isel(obs=np.flatnonzero(sel))


def _one(ds, variable, time):
    out = _select(ds, variable, time)
    assert out.sizes["obs"] == 1, f"expected one {variable} at {time}, got {out.sizes['obs']}"
    return {k: out[k].values[0] for k in out.variables}


# --- fixtures: every mapping ---------------------------------------------------------------------------

def test_swmpr_water_quality_mapping():
    ds = swmp.read(FIXTURES / "apacpwq.csv")
    first = "2012-01-01T05:00"
    expected = {  # variable: (value in canonical units, native value and unit)
        "temperature": 16.9, "salinity": 29.9, "oxygen_saturation": 89.3,
        "oxygen": 7.2 * 1000 / 31.9988,           # mg/L -> mmol m-3
        "conductivity": 45.97 * 0.1,              # mS/cm -> S/m
        "depth": 1.24, "water_level": 1.15, "ph": 7.9, "turbidity": 2.0,
    }
    for variable, value in expected.items():
        row = _one(ds, variable, first)
        assert row["value"] == pytest.approx(value, rel=1e-12), variable
        assert row["site"] == "apacpwq"
        assert row["layer"] == "surface" and row["layer_code"] == ""
        assert row["latitude"] == pytest.approx(29.7021) and row["longitude"] == pytest.approx(-84.8802)
        assert row["error_sd"] == DEFAULT_ERROR_SD[variable]
        assert row["line"] == 2
        assert row["source"] == str(FIXTURES / "apacpwq.csv")
    assert _one(ds, "temperature", first)["qc"] == flags.GOOD
    assert _one(ds, "water_level", first)["native_qc"] == "<3>"  # calculated -> good
    assert _one(ds, "water_level", first)["qc"] == flags.GOOD
    # empty chlfluor column and the level columns are skipped, and said so
    assert "fluorescence" not in set(ds["variable"].values)
    assert "chlfluor: empty column (10 records)" in ds.attrs["skipped_columns"]
    assert "level: no canonical variable" in ds.attrs["skipped_columns"]
    assert ds.sizes["obs"] == 10 * 9


def test_swmpr_flags_and_missing():
    ds = swmp.read(FIXTURES / "apacpwq.csv")
    suspect = _one(ds, "turbidity", "2012-01-01T19:30")
    assert suspect["qc"] == flags.SUSPECT and suspect["native_qc"] == "<1> [STS]"
    rejected = _one(ds, "oxygen", "2012-01-09T03:30")
    assert rejected["qc"] == flags.BAD and rejected["native_qc"] == "<-3> [SSD]"
    assert rejected["value"] == pytest.approx(5.7 * 1000 / 31.9988)  # value kept, flagged bad
    missing = _select(ds, "temperature", "2012-01-10T15:15")
    assert missing["qc"].values.tolist() == [flags.MISSING]
    assert np.isnan(missing["value"].values).all()
    assert missing["native_qc"].values.tolist() == ["<-2>"]
    gcm = _one(ds, "water_level", "2012-01-10T15:15")
    assert gcm["native_qc"] == "<-2> [GCM]" and gcm["qc"] == flags.MISSING


def test_swmpr_met_gzip_par_conversion():
    ds = swmp.read(FIXTURES / "apaebmet.csv.gz")
    assert set(ds["site"].values) == {"apaebmet"}
    assert set(ds["layer"].values) == {"air"}
    par = _one(ds, "par", "2012-01-01T05:00")
    assert par["value"] == pytest.approx(22.0 * 1000 / 900)  # mmol m-2 per 15 min -> umol m-2 s-1
    assert par["qc"] == flags.BAD and par["native_qc"] == "<-3> [GQR] (CSM)"
    assert _one(ds, "par", "2012-01-01T05:15")["qc"] == flags.SUSPECT
    assert _one(ds, "air_pressure", "2012-01-01T05:00")["value"] == 1022.0
    assert _one(ds, "wind_direction", "2012-01-01T05:00")["value"] == 35.0
    assert _one(ds, "relative_humidity", "2012-01-01T05:00")["value"] == 99.0
    assert _one(ds, "precipitation", "2012-01-01T05:00")["qc"] == flags.BAD
    skipped = ds.attrs["skipped_columns"]
    for col in ("maxwspd", "sdwdir", "cumprcp", "totsorad"):
        assert col in skipped
    assert _one(ds, "air_temperature", "2012-01-01T05:00")["latitude"] == pytest.approx(29.7694)


def test_swmpr_nutrients_censored_and_historical():
    ds = swmp.read(FIXTURES / "apacpnut.csv")
    po4 = _one(ds, "phosphate", "2007-03-06T16:28")
    assert po4["censored"] and po4["qc"] == flags.GOOD and po4["native_qc"] == "<-4> [SBL]"
    assert po4["value"] == pytest.approx(0.002 * 1000 / 30.973762)
    no3 = _one(ds, "nitrate", "2002-04-02T16:55")
    assert no3["native_qc"] == "<4>  C" and no3["qc"] == flags.NOT_EVALUATED
    assert no3["value"] == pytest.approx(0.048 * 1000 / 14.0067)
    assert _one(ds, "chlorophyll", "2002-04-02T16:55")["value"] == pytest.approx(1.8)
    # empty value and empty flag: a missing row, not a dropped one
    nitrite = _one(ds, "nitrite", "2007-03-06T16:28")
    assert nitrite["qc"] == flags.MISSING and nitrite["native_qc"] == ""
    assert set(ds["layer"].values) == {"surface"}


def test_raw_cdmo_local_standard_time_to_utc():
    ds = swmp.read(FIXTURES / "apacpnut2012.csv")
    assert ds.attrs["layout"] == "cdmo-raw"
    assert set(ds["site"].values) == {"apacpnut"}  # padded "apacpnut  " stripped
    # 01/10/2012 10:20 local standard time (UTC-5) = 15:20 UTC
    po4 = _one(ds, "phosphate", "2012-01-10T15:20")
    assert po4["native_qc"] == "<-4> [SBL]" and po4["censored"]
    assert po4["line"] == 2
    nh4 = _one(ds, "ammonium", "2012-01-10T15:20")
    assert nh4["value"] == pytest.approx(0.03 * 1000 / 14.0067) and nh4["qc"] == flags.GOOD
    shifted = swmp.read(FIXTURES / "apacpnut2012.csv", utc_offset_hours=-4)
    assert _select(shifted, "phosphate", "2012-01-10T14:20").sizes["obs"] == 1


def test_site_and_error_sd_options():
    ds = swmp.read(FIXTURES / "apacpwq.csv", site="CP", error_sd={"temperature": 0.05})
    assert set(ds["site"].values) == {"CP"}
    assert (ds["latitude"].values == 29.7021).all()  # relabelled, still Cat Point
    assert (_select(ds, "temperature")["error_sd"].values == 0.05).all()
    with pytest.raises(ValueError, match="error_sd: unknown variables"):
        swmp.read(FIXTURES / "apacpwq.csv", error_sd={"temprature": 0.1})


def test_yearly_file_name_and_unknown_station(tmp_path):
    text = (FIXTURES / "apacpwq.csv").read_text()
    yearly = _write(tmp_path, "apacpwq2012.csv", text)
    assert set(swmp.read(yearly)["site"].values) == {"apacpwq"}
    unknown = swmp.read(_write(tmp_path, "mystation.csv", text))
    assert set(unknown["site"].values) == {"mystation"}
    assert np.isnan(unknown["latitude"].values).all() and set(unknown["layer"].values) == {"surface"}


def test_sniff():
    assert swmp.sniff(FIXTURES / "apacpwq.csv")
    assert swmp.sniff(FIXTURES / "apaebmet.csv.gz")
    assert swmp.sniff(FIXTURES / "apacpnut2012.csv")


# --- bad input ---------------------------------------------------------------------------------------

def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


HEADER = "datetimestamp,temp,f_temp,sal,f_sal\n"


def test_empty_file(tmp_path):
    with pytest.raises(InputError, match=r"apacpwq.csv: empty file"):
        swmp.read(_write(tmp_path, "apacpwq.csv", ""))


def test_header_only(tmp_path):
    with pytest.raises(InputError, match="no data rows"):
        swmp.read(_write(tmp_path, "apacpwq.csv", HEADER))


def test_truncated_mid_line(tmp_path):
    text = (FIXTURES / "apacpwq.csv").read_text()
    path = _write(tmp_path, "apacpwq.csv", text[: text.index("\n2012-01-01T06:15") + 40])
    with pytest.raises(InputError, match=r"line 7: truncated record: expected 25"):
        swmp.read(path)


def test_truncated_gzip(tmp_path):
    data = (FIXTURES / "apaebmet.csv.gz").read_bytes()
    path = tmp_path / "apaebmet.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"apaebmet.csv.gz: corrupted or truncated gzip"):
        swmp.read(path)


def test_wrong_delimiter(tmp_path):
    text = (FIXTURES / "apacpwq.csv").read_text().replace(",", ";")
    with pytest.raises(InputError, match=r"line 1, field 'datetimestamp'.*wrong delimiter"):
        swmp.read(_write(tmp_path, "apacpwq.csv", text))


def test_missing_time_column(tmp_path):
    with pytest.raises(InputError, match="missing required column 'datetimestamp'"):
        swmp.read(_write(tmp_path, "apacpwq.csv", "time,temp,f_temp\n2012-01-01T00:00:00,1,<0>\n"))


def test_unknown_flag_value(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-01-01T00:00:00,15,<0>,30,<0>\n"
                  "2012-01-01T00:15:00,15,<7> [GQR],30,<0>\n")
    with pytest.raises(InputError, match=r"line 3, field 'f_temp': unknown NERRS flag <7>"):
        swmp.read(path)


def test_flag_without_number(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-01-01T00:00:00,15,<0>,30,good\n")
    with pytest.raises(InputError, match=r"line 2, field 'f_sal': flag 'good' has no NERRS numeric flag"):
        swmp.read(path)


def test_non_numeric_value(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-01-01T00:00:00,15,<0>,30,<0>\n"
                  "2012-01-01T00:15:00,15..2,<0>,30,<0>\n")
    with pytest.raises(InputError, match=r"line 3, field 'temp': value '15..2' is not a number"):
        swmp.read(path)


def test_bad_time(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-13-01T00:00:00,15,<0>,30,<0>\n")
    with pytest.raises(InputError, match=r"line 2, field 'datetimestamp': time '2012-13-01T00:00:00'"):
        swmp.read(path)


def test_all_values_missing(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-01-01T00:00:00,,<-2>,,<-2>\n"
                  "2012-01-01T00:15:00,,<-2>,,<-2>\n")
    with pytest.raises(InputError, match="no values: every parameter column is empty"):
        swmp.read(path)


def test_sentinel_only(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-01-01T00:00:00,-99999,<0>,-9999,<0>\n")
    ds = swmp.read(path)
    assert np.isnan(ds["value"].values).all()
    assert (ds["qc"].values == flags.MISSING).all()
    assert ds["native_qc"].values.tolist() == ["<0>", "<0>"]  # native flag kept


def test_sentinel_among_values(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-01-01T00:00:00,999999,<0>,30,<0>\n")
    ds = swmp.read(path)
    assert _one(ds, "temperature", "2012-01-01T00:00")["qc"] == flags.MISSING
    assert _one(ds, "salinity", "2012-01-01T00:00")["qc"] == flags.GOOD


def test_duplicated_times_flagged(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-01-01T00:00:00,15,<0>,30,<0>\n"
                  "2012-01-01T00:00:00,16,<0>,31,<1>\n2012-01-01T00:15:00,15,<0>,30,<0>\n")
    ds = swmp.read(path)
    temp = _select(ds, "temperature", "2012-01-01T00:00")
    assert temp["value"].values.tolist() == [15.0, 16.0]  # both kept, file order
    assert temp["qc"].values.tolist() == [flags.GOOD, flags.SUSPECT]  # the later one flagged
    sal = _select(ds, "salinity", "2012-01-01T00:00")
    assert sal["qc"].values.tolist() == [flags.GOOD, flags.SUSPECT]


def test_non_monotonic_times(tmp_path):
    path = _write(tmp_path, "apacpwq.csv", HEADER + "2012-01-01T00:30:00,15,<0>,30,<0>\n"
                  "2012-01-01T00:00:00,16,<0>,31,<0>\n")
    ds = swmp.read(path)
    assert ds.attrs["time_reversals"] == 1
    assert (np.diff(ds["time"].values.astype(np.int64)) >= 0).all()  # returned sorted
    assert _one(ds, "temperature", "2012-01-01T00:00")["line"] == 3
    with pytest.raises(InputError, match=r"line 3, field 'datetimestamp': time goes backwards"):
        swmp.read(path, strict_time_order=True)


def test_raw_cdmo_unknown_station_needs_offset(tmp_path):
    text = (FIXTURES / "apacpnut2012.csv").read_text().replace("apacpnut  ", "xyzabnut  ")
    path = _write(tmp_path, "x.csv", text)
    with pytest.raises(InputError, match=r"line 2, field 'StationCode'.*utc_offset_hours"):
        swmp.read(path)
    ds = swmp.read(path, utc_offset_hours=-5)
    assert set(ds["site"].values) == {"xyzabnut"} and np.isnan(ds["latitude"].values).all()


def test_raw_cdmo_extra_field(tmp_path):
    lines = (FIXTURES / "apacpnut2012.csv").read_text().splitlines()
    lines[3] = lines[3] + "0.1,"
    with pytest.raises(InputError, match=r"line 4: record with extra fields"):
        swmp.read(_write(tmp_path, "apacpnut2012.csv", "\n".join(lines) + "\n"))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read file"):
        swmp.read(tmp_path / "nope.csv")


# --- real data -------------------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("name, start, end, n_vars", [
    ("apacpwq.csv.gz", "2012", "2013", 9), ("apadbwq.csv.gz", "2012", "2013", 9),
    ("apaebmet.csv.gz", "2012", "2013", 7), ("apacpnut.csv", "2002", "2013", 6)])
def test_real_swmpr_files(name, start, end, n_vars):
    ds = swmp.read(SWMP_DATA / name)
    times = pd.DatetimeIndex(ds["time"].values)
    assert str(times.min().year) == start and str(times.max().year) in (end, str(int(end) + 1))
    assert len(set(ds["variable"].values)) == n_vars
    site = name.split(".")[0]
    assert set(ds["site"].values) == {site}
    assert np.isfinite(ds["latitude"].values).all() and (ds["longitude"].values < 0).all()
    if name.endswith("wq.csv.gz") or name.endswith("met.csv.gz"):
        assert ds.attrs["time_reversals"] == 0
        temp = _select(ds, "air_temperature" if "met" in name else "temperature")
        step = np.median(np.diff(temp["time"].values).astype("timedelta64[m]").astype(int))
        assert step == 15
        assert temp.sizes["obs"] == 70176  # one row per record, missing ones included
        # no non-finite value leaks: missing values are qc 9
        bad = ~np.isfinite(ds["value"].values) & (ds["qc"].values != flags.MISSING)
        assert not bad.any()


@needs_data
def test_real_cat_point_first_record_is_utc():
    ds = swmp.read(SWMP_DATA / "apacpwq.csv.gz")
    # PROVENANCE: raw CDMO 01/01/2012 0:00 local (UTC-5) = 2012-01-01T05:00Z, Temp 16.9, SpCond 45.97
    assert _one(ds, "temperature", "2012-01-01T05:00")["value"] == 16.9
    assert _one(ds, "conductivity", "2012-01-01T05:00")["value"] == pytest.approx(4.597)


@needs_data
def test_real_raw_cdmo_matches_swmpr_nutrients():
    swmpr = swmp.read(SWMP_DATA / "apacpnut.csv")
    raws = [swmp.read(p) for p in sorted((SWMP_DATA / "raw_cdmo_nut").glob("apacpnut*.csv"))]
    # The raw files hold 268 records for 215 distinct times (replicates at the same minute); the SWMPr
    # file keeps one record per time. Duplicated raw times are kept and the later ones flagged suspect.
    raw_all = np.concatenate([r["time"].values for r in raws])
    assert len(np.unique(raw_all)) == np.unique(swmpr["time"].values).size == 215
    for r in raws:
        frame = pd.DataFrame({"t": r["time"].values, "v": r["variable"].values, "q": r["qc"].values})
        usable = frame[frame.q.isin([flags.GOOD, flags.NOT_EVALUATED])]
        assert not usable.duplicated(["t", "v"]).any()  # replicates never enter twice
    raw2012 = swmp.read(SWMP_DATA / "raw_cdmo_nut" / "apacpnut2012.csv")
    # raw "01/10/2012 10:20" local standard time is 2012-01-10T15:20Z in the SWMPr (UTC) file
    for variable in ("phosphate", "ammonium", "nitrate_nitrite", "chlorophyll"):
        a = _one(raw2012, variable, "2012-01-10T15:20")
        b = _one(swmpr, variable, "2012-01-10T15:20")
        assert a["value"] == pytest.approx(b["value"]) and a["qc"] == b["qc"]
        assert a["native_qc"] == b["native_qc"]
    # every raw time, shifted by +5 h, is a time of the SWMPr file
    raw_times = set(np.concatenate([r["time"].values for r in raws]).tolist())
    assert raw_times == set(swmpr["time"].values.tolist())
    for path in sorted((SWMP_DATA / "raw_cdmo_nut").glob("apadbnut*.csv")):
        ds = swmp.read(path)
        assert set(ds["site"].values) == {"apadbnut"}
        assert ds["latitude"].values[0] == pytest.approx(29.6747)


@needs_data
def test_real_gzip_copy_reads_the_same(tmp_path):
    plain = tmp_path / "apacpnut.csv.gz"
    with open(SWMP_DATA / "apacpnut.csv", "rb") as src, gzip.open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    a = swmp.read(SWMP_DATA / "apacpnut.csv")
    b = swmp.read(plain)
    np.testing.assert_array_equal(a["value"].values, b["value"].values)
    np.testing.assert_array_equal(a["qc"].values, b["qc"].values)


def test_every_parameter_unit_is_known():
    from twin.units import converter
    for native, param in swmp.PARAMETERS.items():
        converter(param.variable, param.unit)  # raises on an unknown unit
    assert swmp.PARAMETERS["totpar"].factor == pytest.approx(1000 / 900)


def test_registry_detects_swmp():
    from twin.readers import detect_format
    for name in ("apacpwq.csv", "apaebmet.csv.gz", "apacpnut2012.csv", "apacpnut.csv"):
        assert detect_format(FIXTURES / name) == "swmp", name

import csv
import json
from collections import Counter

import pytest

from conftest import FIXTURES, shared_data
from twin.cli import main

SOMLIT_VARIABLES = {"T": "temperature", "S": "salinity", "O": "oxygen", "PH": "ph", "NH4": "ammonium",
                    "NO3": "nitrate", "NO2": "nitrite", "PO4": "phosphate", "SIOH4": "silicate",
                    "COP": "poc", "NOP": "pon", "MES": "spm", "DN15": "delta15n", "DC13": "delta13c",
                    "CHLA": "chlorophyll"}


def _summary_json(capsys, argv):
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(last)["series"]


def _independent_somlit_count(path):
    """Counts straight from the flags with the csv module (SOMLIT scale, missing value -> missing)."""
    counts = Counter()
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for code, variable in SOMLIT_VARIABLES.items():
                key = (row["nomSite*"], row["PROF_TEXT"], variable)
                flag, value = row["q" + code], row[code]
                if value in ("NA", "", "999999"):
                    bucket = "count_missing"
                else:
                    bucket = {"0": "count_censored", "2": "count_good", "6": "count_good", "7": "count_good",
                              "3": "count_suspect", "4": "count_bad"}.get(flag, "count_missing")
                counts[key + (bucket,)] += 1
    return counts


def test_summary_of_hydro_matches_independent_flag_count(capsys):
    path = shared_data("somlit-med", "HYDRO.csv")
    series = _summary_json(capsys, ["data", "summary", str(path), "--format", "somlit", "--json"])
    expected = _independent_somlit_count(path)
    assert len(series) == 2 * 2 * len(SOMLIT_VARIABLES)  # two sites, two layers
    for s in series:
        for bucket in ("count_good", "count_suspect", "count_bad", "count_censored", "count_missing"):
            assert s[bucket] == expected[(s["site"], s["depth"], s["variable"], bucket)], (s, bucket)
    nitrate = {(s["site"], s["depth"]): s for s in series if s["variable"] == "nitrate"}
    assert nitrate[("Point B", "S")]["first"].startswith("1995-01-18")
    assert 6.0 <= nitrate[("Point B", "S")]["median_interval_days"] <= 8.0


def test_summary_of_bundled_fixture_text_and_json(capsys):
    path = FIXTURES / "somlit" / "somlit_native_hydro.csv"
    series = _summary_json(capsys, ["data", "summary", str(path), "--json"])  # format detected
    assert {s["site"] for s in series} >= {"Point B"}
    assert all(set(s) >= {"site", "depth", "variable", "count_good", "first", "longest_gap_days"} for s in series)


def test_summary_bad_input_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["data", "summary", str(empty), "--format", "somlit"]) == 2
    err = capsys.readouterr().err
    assert "empty.csv" in err and "Traceback" not in err
    assert main(["data", "summary", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "twin" in capsys.readouterr().out
    for argv in (["--help"], ["data", "summary", "--help"], ["qc", "--help"], ["config", "check", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "usage: twin" in capsys.readouterr().out


def test_qc_command_writes_table_config_and_plots(tmp_path, capsys):
    from twin.observations import from_netcdf
    path = FIXTURES / "coasthf" / "coasthf_small.csv"
    out = tmp_path / "qc"
    assert main(["qc", str(path), "--out", str(out), "--quiet"]) == 0
    table = from_netcdf(out / "observations_qc.nc")
    assert {"qc_gross_range", "qc_spike", "qc_native"} <= set(table.data_vars)
    assert (out / "resolved_config.yaml").exists()
    assert list((out / "plots").glob("*.png"))

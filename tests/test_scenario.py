"""What-if scenarios on a store (twin scenario): same seed, same result; a zero change, a zero difference;
a warming, signed differences inside their intervals; bad scenario files rejected by name; products."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from twin.config import parse_config, read_yaml
from twin.errors import ConfigError
from twin.operational import init_store, run_cycle
from twin.scenario import ScenarioFile, load_scenario_file, run_scenarios, summarise
from twin.store import StoreError

REPO = Path(__file__).resolve().parents[1]
DAYS = 15

SPEC = {"seed": 3, "days": DAYS, "scenarios": [
    {"name": "zero", "changes": [{"target": "forcing.temperature", "operation": "shift", "value": 0.0}]},
    {"name": "warm", "description": "+2 degC",
     "changes": [{"target": "forcing.temperature", "operation": "shift", "value": 2.0},
                 {"target": "forcing.river_nitrate", "operation": "scale", "value": 0.7}]},
    {"name": "wave", "changes": [{"target": "forcing.temperature", "layer": "surface", "operation": "shift",
                                  "value": 4.0, "period": {"start": "2016-02-25", "end": "2016-02-28"}}]}]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The demo twin experiment cut to 60 days (its checkpoint emulator, 16 members), cycled to day 50."""
    root = tmp_path_factory.mktemp("scenario")
    data = read_yaml(REPO / "configs" / "demo.yaml")
    data["experiment"]["days"] = 60
    data["emulator"]["checkpoint"] = str(REPO / "configs" / "emulators" / "demo")
    data["filter"]["members"] = 16
    init_store(root / "store", parse_config(data), quiet=True)
    run_cycle(root / "store", until="2016-02-20", quiet=True)
    return root / "store"


@pytest.fixture(scope="module")
def spec():
    return parse_config(SPEC, model=ScenarioFile)


@pytest.fixture(scope="module")
def published(store, tmp_path_factory):
    from twin.cli import main
    path = tmp_path_factory.mktemp("file") / "what-if.yaml"
    path.write_text(yaml.safe_dump(SPEC), encoding="utf-8")
    out = store.parent / "out"
    assert main(["scenario", str(store), str(path), "--out", str(out), "--json", "--quiet"]) == 0
    return out


def test_same_seed_same_result_bit_for_bit(store, spec, published):
    first = run_scenarios(store, spec)
    second = run_scenarios(store, spec)
    assert np.array_equal(first.baseline, second.baseline)
    for name in first.scenarios:
        assert np.array_equal(first.scenarios[name], second.scenarios[name])
    with xr.open_dataset(published / "scenario.nc") as ds:  # the CLI's run of the same file
        i = first.layout.index("oxygen", "SYNTH-B", "surface")
        np.testing.assert_allclose(ds["oxygen_difference_mean"].sel(scenario="warm").values[:, 0, 0],
                                   (first.scenarios["warm"] - first.baseline)[..., i].mean(1), rtol=1e-6, atol=1e-6)
        expected = summarise(first)["scenarios"]["warm"]["differences"]["oxygen@SYNTH-B/surface"]
    actual = json.loads((published / "scenario.json").read_text())["scenarios"]["warm"]["differences"]
    assert actual["oxygen@SYNTH-B/surface"] == expected


def test_zero_change_gives_exactly_zero_difference(store, spec):
    run = run_scenarios(store, spec)
    assert np.array_equal(run.scenarios["zero"], run.baseline)
    summary = summarise(run)["scenarios"]["zero"]["differences"]
    assert all(e[k][q] == 0.0 for e in summary.values() for k in ("time_mean", "end") for q in ("mean", "q05", "q95"))


def test_warming_gives_signed_differences_inside_their_intervals(published):
    summary = json.loads((published / "scenario.json").read_text())
    warm = summary["scenarios"]["warm"]
    # Every variable at both layers: 18, the model's Chl:N error (20; its sd is 0 at the bottom), the demo
    # buoy's oxygen offset and reading (24), and the site's two estimated parameter factors (26).
    assert len(warm["differences"]) == 26
    for name, e in warm["differences"].items():
        for k in ("time_mean", "end"):
            assert e[k]["q05"] <= e[k]["mean"] <= e[k]["q95"], (name, k)
    # Warmer water holds less oxygen: surface oxygen falls in every member.
    assert warm["differences"]["oxygen@SYNTH-B/surface"]["time_mean"]["q95"] < 0
    # A scenario changes the sea, not the sensor nor the model's Chl:N error nor its estimated parameters: the
    # offsets, the Chl:N error and the parameter factors (AR(1)s of the same draws) do not move, everything else
    # does.
    moved = {name for name, e in warm["differences"].items() if e["time_mean"]["mean"] != 0}
    assert moved == {name for name in warm["differences"]
                     if "_offset_" not in name and "_bias@" not in name and "_log_factor@" not in name}
    # The demo site has a river: scaling its nitrate acts (no "no effect" warning, unlike the zero shift).
    assert not any("river_nitrate" in w for w in warm["warnings"])
    assert any("no effect, the field is unchanged" in w for w in summary["scenarios"]["zero"]["warnings"])
    with xr.open_dataset(published / "scenario.nc") as ds:
        d = ds.sel(scenario="warm")
        assert {k: ds.sizes[k] for k in ("scenario", "time", "site", "layer")} == {
            "scenario": 3, "time": DAYS, "site": 1, "layer": 2}
        assert (d["oxygen_difference_q05"] <= d["oxygen_difference_mean"]).all()
        assert (d["oxygen_difference_mean"] <= d["oxygen_difference_q95"]).all()
        # The heat wave acts from its first day only, at the surface (and the mixing follows).
        wave = (ds["forcing_temperature_scenario"].sel(scenario="wave").values
                - ds["forcing_temperature_baseline"].values)
        lead = np.flatnonzero(wave[:, 0, 0])
        assert np.allclose(wave[lead, 0, 0], 4.0) and not wave[:, 0, 1].any()
        assert str(ds["time"].values[0])[:10] == "2016-02-21" and lead.tolist() == [5, 6, 7, 8]
        assert not ds["oxygen_difference_mean"].sel(scenario="wave").values[:5].any()


def test_less_river_nitrate_lowers_surface_nitrate_in_every_member(store):
    river = {"seed": 3, "days": DAYS, "process_check": True, "scenarios": [{"name": "river", "changes": [
        {"target": "forcing.river_nitrate", "operation": "scale", "value": 0.7}]}]}
    run = run_scenarios(store, parse_config(river, model=ScenarioFile))
    assert not run.warnings["river"]
    # 0.7 x 150 mmol m-3 lies inside the river water the emulator was trained on
    assert not run.outside["river"][:, run.feature_names.index("river_nitrate")].any()
    differences = summarise(run)["scenarios"]["river"]["differences"]
    surface = differences["nitrate@SYNTH-B/surface"]
    # the river feeds the surface layer: every member has less nitrate there by the end
    assert surface["end"]["q95"] < 0 and surface["end"]["mean"] < -0.02, surface
    # process_check: the process model from the same members answers the same what-if (here in the same
    # direction); its baseline differs from the emulator's but starts from the same members
    assert set(run.process) == {"baseline", "river"} and run.process["river"].shape == run.baseline.shape
    # concentrations are positive (a sensor offset, a log factor, may take either sign)
    positive = np.asarray(run.layout.log_mask())
    assert (~positive).any() and (run.process["baseline"][0][:, positive] > 0).all()
    assert surface["process_model_time_mean"] < 0
    expected = (run.process["river"] - run.process["baseline"]).mean(axis=(0, 1))
    i = run.layout.index("nitrate", "SYNTH-B", "surface")
    assert surface["process_model_time_mean"] == pytest.approx(float(expected[i]))


def test_report_has_every_figure_and_the_products_exist(store, published):
    assert {p.name for p in published.iterdir()} == {"scenario.nc", "scenario.json", "report.html",
                                                    "scenario.yaml"}
    page = (published / "report.html").read_text()
    alts = re.findall(r'<img alt="([^"]+)"', page)
    assert alts == ["values at SYNTH-B", "differences at SYNTH-B", "forcing changes",
                    "daily alert probabilities", "limits of use"]
    for name in ("zero", "warm", "wave", "Limits of use", "Alerts"):
        assert name in page
    summary = json.loads((published / "scenario.json").read_text())
    assert summary["seed"] == 3 and summary["model"].startswith("emulator")
    assert [a["name"] for a in summary["baseline"]["alerts"]] == [a["name"] for a in
                                                                   summary["scenarios"]["warm"]["alerts"]]
    assert len(summary["baseline"]["alerts"][0]["daily_probability"]) == DAYS
    # What the members carry besides the sea's state, from the store's last analysis.
    from twin.state_layout import bias_name, offset_name, parameter_name
    from twin.store import Store
    carried = summary["estimated_at_start"]
    assert set(carried) == {f"{v}@SYNTH-B/{layer}" for v in (bias_name("chlorophyll"), offset_name("oxygen", "buoy"))
                            for layer in ("surface", "bottom")} | {
        f"{parameter_name(p)}@SYNTH-B/surface" for p in ("max_growth_rate", "max_grazing_rate")}
    stored = Store(store)
    members = stored.load_arrays(stored.manifest()["files"]["state"])["members"]
    names = summary["scenarios"]["warm"]["differences"]
    i = list(names).index(f"{parameter_name('max_growth_rate')}@SYNTH-B/surface")
    e = carried[f"{parameter_name('max_growth_rate')}@SYNTH-B/surface"]
    assert e["mean"] == pytest.approx(members[:, i].mean(), rel=1e-6)
    assert e["q05"] <= e["mean"] <= e["q95"] and e["q05"] < e["q95"]
    assert "Estimated with the state, at the start" in page


def test_start_from_a_day_of_the_store_history(store):
    spec = parse_config({**SPEC, "start": "2016-02-10", "scenarios": SPEC["scenarios"][:2]}, model=ScenarioFile)
    run = run_scenarios(store, spec)
    assert str(run.start) == "2016-02-10" and run.baseline.shape[:2] == (DAYS, 16)
    too_late = parse_config({**SPEC, "start": "2016-03-10"}, model=ScenarioFile)
    with pytest.raises(ConfigError, match="start: 2016-03-10 is not an analysis of the store"):
        run_scenarios(store, too_late)


@pytest.mark.slow
def test_a_store_started_from_a_hindcast_gives_clear_errors_until_it_has_cycled(tmp_path):
    """Such a store holds the hindcast's last ensemble but neither its analysis history nor its
    observations (the forcing comes from the store's own ledger)."""
    from twin.hindcast import run_hindcast
    data = read_yaml(REPO / "configs" / "demo.yaml")
    data["experiment"]["days"] = 40
    data["emulator"]["checkpoint"] = str(REPO / "configs" / "emulators" / "demo")
    data["filter"]["members"] = 8
    data.pop("alerts")
    config = parse_config(data)
    run_hindcast(config, tmp_path / "hindcast", quiet=True)
    init_store(tmp_path / "store", config, from_hindcast=tmp_path / "hindcast", quiet=True)
    short = {"seed": 1, "days": 5, "scenarios": SPEC["scenarios"][1:2]}
    with pytest.raises(ConfigError, match="start: the store keeps no analysis for 2016-01-20"):
        run_scenarios(tmp_path / "store", parse_config({**short, "start": "2016-01-20"}, model=ScenarioFile))
    with pytest.raises(StoreError, match="cannot build the forcing yet.*twin cycle STORE --data"):
        run_scenarios(tmp_path / "store", parse_config(short, model=ScenarioFile))


@pytest.mark.parametrize("change, message", [
    ({"target": "forcing.temprature", "operation": "shift", "value": 1}, "did you mean 'temperature'"),
    ({"target": "param.max_growth_rat", "operation": "scale", "value": 1}, "did you mean 'max_growth_rate'"),
    ({"target": "temperature", "operation": "shift", "value": 1}, "'forcing.<field>' or 'param.<name>'"),
    ({"target": "forcing.par", "operation": "shift", "value": 1, "layer": "bottom"}, "'layer' applies to"),
    ({"target": "forcing.par", "operation": "scael", "value": 1}, r"changes\.0\.operation"),
    ({"target": "forcing.par", "operation": "shift", "value": 1, "periode": {}}, "did you mean 'period'"),
    ({"target": "forcing.par", "operation": "shift", "value": 1,
      "period": {"start": "2016-03-02", "end": "2016-03-01"}}, "before its start"),
])
def test_bad_scenario_files_name_the_field(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"scenarios": [{"name": "x", "changes": [change]}]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_scenario_file(path)
    assert "scenarios.0.changes.0" in str(info.value)


def test_changes_the_model_cannot_take_are_refused(store):
    # the demo emulator takes four parameters as inputs; the nitrification rate is not one of them
    param = parse_config({"days": 5, "scenarios": [{"name": "p", "changes": [
        {"target": "param.nitrification_rate", "operation": "scale", "value": 1.2}]}]}, model=ScenarioFile)
    with pytest.raises(ConfigError, match="param.nitrification_rate: the store's emulator is not conditioned on "
                                          "this parameter.*model: process"):
        run_scenarios(store, param)
    outside = parse_config({"days": 5, "scenarios": [{"name": "p", "changes": [
        {"target": "forcing.par", "operation": "scale", "value": 0.5,
         "period": {"start": "2017-07-01", "end": "2017-07-10"}}]}]}, model=ScenarioFile)
    with pytest.raises(ConfigError, match="lies outside the horizon"):
        run_scenarios(store, outside)


def test_a_parameter_the_emulator_takes_changes_the_plankton(store):
    faster = {"seed": 3, "days": DAYS, "scenarios": [{"name": "grazing", "changes": [
        {"target": "param.max_grazing_rate", "operation": "scale", "value": 1.5}]}]}
    run = run_scenarios(store, parse_config(faster, model=ScenarioFile))
    assert "conditioned on parameters" in run.model
    differences = summarise(run)["scenarios"]["grazing"]["differences"]
    # more grazing: less phytoplankton at the surface in every member by the end
    assert differences["phytoplankton@SYNTH-B/surface"]["end"]["q95"] < 0, differences


def test_the_shipped_scenario_file_is_valid():
    spec = load_scenario_file(REPO / "configs" / "scenarios" / "warming-and-river.yaml")
    assert spec.days == 90 and spec.process_check
    assert [s.name for s in spec.scenarios] == ["warming-and-river", "river-only", "july-heat-wave"]

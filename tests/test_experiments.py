"""Observing-system experiments (`twin osse`): the experiment schema, the denial rules, and a short study on a
process-model twin experiment (all data against no bottom samples)."""
import json

import numpy as np
import pytest
import xarray as xr
import yaml

from twin import dispositions as disp
from twin.cli import main
from twin.config import parse_config
from twin.errors import ConfigError
from twin.experiments import (ExperimentFile, _thinned_days, check_runs, gap_days, load_experiment,
                              refit_run_name)

TINY = {
    "name": "tiny-osse",
    "experiment": {"days": 120, "seed": 2, "start": "2016-03-01"},
    "model": {"kind": "process", "substeps": 4},
    "filter": {"members": 12, "inflation": 1.05},
    "hindcast": {"window_days": 120},
}
STUDY = {"description": "test", "runs": [{"name": "all-data"},
                                         {"name": "no-bottom", "rules": [{"kind": "no_layer", "layer": "bottom"}]},
                                         {"name": "all-data-seed-5", "seed": 5}]}
RUNS = ["all-data", "no-bottom", "all-data-seed-5"]


def _experiment(data):
    return parse_config(data, "exp.yaml", ExperimentFile)


@pytest.mark.parametrize("data, match", [
    ({"runs": [{"name": "a", "rules": [{"kind": "thin_bottle", "every_days": 14}]}]},
     r"runs.0.rules.0.kind: unknown rule kind 'thin_bottle' \(did you mean 'thin_bottles'\?\)"),
    ({"runs": [{"name": "a", "rules": [{"kind": "thin_bottles", "every_day": 14}]}]},
     r"runs.0.rules.0.every_day: unknown key \(did you mean 'every_days'\?\)"),
    ({"runs": [{"name": "a", "rulez": []}]}, r"runs.0.rulez: unknown key \(did you mean 'rules'\?\)"),
    ({"run": [{"name": "a"}]}, r"run: unknown key \(did you mean 'runs'\?\)"),
    ({"runs": [{"name": "a", "rules": [{"kind": "no_variable", "variable": "nitrat"}]}]},
     r"did you mean 'nitrate'\?"),
    ({"runs": [{"name": "a", "rules": [{"kind": "no_layer", "every_days": 14}]}]},
     r"rule 'no_layer' takes layer, not every_days"),
    ({"runs": [{"name": "a", "rules": [{"kind": "random_gaps", "length_days": 10}]}]},
     r"rule 'random_gaps' needs fraction"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, r"run names repeat: \['a'\]"),
    ({"refit_study": {"intervals": [None, 3]}}, r"refit intervals must be null \(never\) or >= 7 days"),
    ({}, r"the experiment has no run"),
    ({"runs": [{"name": "a", "seed": -1}]}, r"runs.0.seed: .*greater than or equal to 0"),
])
def test_schema_rejects_mistakes_with_a_hint(data, match):
    with pytest.raises(ConfigError, match=match):
        _experiment(data)


def test_refit_study_expands_to_named_runs(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"runs": [{"name": "base"}], "refit_study": {"intervals": [None, 30]}}))
    runs = load_experiment(path).all_runs()
    assert [r.name for r in runs] == ["base", refit_run_name(None), refit_run_name(30)] == \
        ["base", "refit-never", "refit-30d"]
    assert [r.sets_refit for r in runs] == [False, True, True]
    assert [r.refit_interval_days for r in runs[1:]] == [None, 30]


def test_no_buoy_drops_the_tapers_on_the_buoy_s_offset():
    """The demo tapers the buoy's oxygen offset; a run without the buoy has no such element, so its taper
    goes too (the others stay), and the run's config still validates."""
    from twin.config import load_config
    from twin.experiments import RunSpec, run_config
    from pathlib import Path
    demo = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    assert "oxygen_offset_buoy" in demo.filter.cross_variable_localization["chlorophyll"]
    run = run_config(demo, RunSpec(name="no-buoy", rules=({"kind": "no_buoy"},)))
    pairs = run.filter.cross_variable_localization
    assert "oxygen_offset_buoy" not in pairs["chlorophyll"] and pairs["chlorophyll"]["oxygen"] == 0.0
    assert pairs["oxygen"] == demo.filter.cross_variable_localization["oxygen"]
    parse_config(run.model_dump(mode="json"))                       # validates: no taper on an absent element
    assert run_config(demo, RunSpec(name="all")).filter == demo.filter


def test_a_run_s_seed_replaces_the_config_s_and_nothing_else():
    from twin.config import load_config
    from twin.experiments import RunSpec, run_config
    from pathlib import Path
    demo = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    seeded = run_config(demo, RunSpec(name="s", seed=demo.seed + 3))
    same = run_config(demo, RunSpec(name="s"))
    assert seeded.seed == demo.seed + 3 and same.seed == demo.seed
    assert seeded.model_copy(update={"seed": demo.seed}) == same
    assert seeded.experiment == demo.experiment  # the truth's own seed stays


def test_a_run_s_experiment_seed_makes_another_truth_and_needs_a_twin_experiment():
    from twin.config import load_config
    from twin.experiments import RunSpec, run_config
    from pathlib import Path
    demo = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    other = run_config(demo, RunSpec(name="t", experiment_seed=demo.experiment.seed + 1))
    assert other.experiment.seed == demo.experiment.seed + 1 and other.seed == demo.seed
    assert other.experiment.model_copy(update={"seed": demo.experiment.seed}) == demo.experiment
    both = run_config(demo, RunSpec(name="t", experiment_seed=7, rules=({"kind": "no_buoy"},)))
    assert both.experiment.seed == 7 and not both.experiment.buoy       # the two updates compose
    real = parse_config({"name": "real"})
    with pytest.raises(ConfigError, match=r"run 't': experiment_seed needs a twin experiment"):
        check_runs(real, _experiment({"runs": [{"name": "t", "experiment_seed": 2}]}))


def test_config_dependent_mistakes_fail_before_any_run():
    config = parse_config({**TINY, "experiment": {**TINY["experiment"], "buoy": False}})
    bad = _experiment({"runs": [{"name": "a", "rules": [{"kind": "no_buoy"}]},
                                {"name": "b", "rules": [{"kind": "no_site", "site": "SYNTH-C"}]}]})
    with pytest.raises(ConfigError, match=r"(?s)no_buoy, but the config has no buoy.*"
                                          r"unknown site 'SYNTH-C' \(did you mean 'SYNTH-B'\?\)"):
        check_runs(config, bad)


def test_thinning_keeps_one_sample_per_interval_even_across_a_missed_week():
    weekly = np.array([0, 7, 14, 28, 35, 42, 49, 56])  # day 21 missed
    np.testing.assert_array_equal(_thinned_days(weekly, 14), [0, 14, 28, 42, 56])
    np.testing.assert_array_equal(_thinned_days(weekly, 28), [0, 28, 56])
    np.testing.assert_array_equal(_thinned_days(weekly, 7), weekly)


def test_random_gaps_cover_the_asked_fraction_in_whole_gaps():
    covered = gap_days(730, 30, 0.25, seed=3)
    assert 0.25 <= covered.mean() < 0.25 + 30 / 730
    np.testing.assert_array_equal(covered, gap_days(730, 30, 0.25, seed=3))  # seeded
    starts = np.flatnonzero(np.diff(covered.astype(int)) == 1)
    assert starts.size >= 1


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("osse")
    (root / "c.yaml").write_text(yaml.safe_dump(TINY))
    (root / "e.yaml").write_text(yaml.safe_dump(STUDY))
    out = root / "out"
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["osse", str(root / "c.yaml"), str(root / "e.yaml"), "--out", str(out), "--json", "--quiet"])
    assert code == 0
    lines = buf.getvalue().strip().splitlines()
    return out, json.loads(lines[-1]), lines


def test_cli_writes_the_table_plot_and_report(study):
    out, result, lines = study
    assert {p.name for p in out.iterdir()} >= {"osse.json", "osse.csv", "skill_vs_data.png", "report.html",
                                               "experiment.yaml", "resolved_config.yaml", "all-data", "no-bottom"}
    assert json.loads((out / "osse.json").read_text())["runs"][0]["name"] == "all-data"
    assert result["skill_basis"] == "truth" and [r["name"] for r in result["runs"]] == RUNS
    import pandas as pd
    table = pd.read_csv(out / "osse.csv")
    assert len(table) == 3 * 18 and set(table["run"]) == set(RUNS)
    assert np.isfinite(table["rmse"]).all() and (table["crps"] >= 0).all()
    assert (table["spread_skill"] > 0).all()
    assert set(table.loc[table["run"] == "all-data-seed-5", "seed"]) == {5}
    assert set(table.loc[table["run"] == "all-data", "seed"]) == {0}
    report = (out / "report.html").read_text()
    assert "Spread/RMSE per variable" in report
    assert (out / "skill_vs_data.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert any(line.startswith("no-bottom") for line in lines)  # the printed table
    assert any(line.startswith("spread/RMSE") for line in lines)


def test_another_seed_draws_another_ensemble_on_the_same_data(study):
    """The seed run assimilates the same observations (same truth, same data) with other draws: the same
    counts (but for the gross-error check, which depends on the ensemble), and other scores."""
    _, result, _ = study
    runs = {r["name"]: r for r in result["runs"]}
    a, b = runs["all-data"], runs["all-data-seed-5"]
    assert a["observations"]["rows_denied"] == b["observations"]["rows_denied"] == 0
    assert abs(a["observations"]["rows_assimilated"] - b["observations"]["rows_assimilated"]) \
        <= 0.02 * a["observations"]["rows_assimilated"]  # only the gross-error check may differ
    diffs = [abs(a["skill"][v]["rmse"] - b["skill"][v]["rmse"]) / a["skill"][v]["rmse"] for v in a["skill"]]
    assert max(diffs) > 1e-3 and np.median(diffs) < 0.5


def test_no_layer_bottom_assimilates_no_bottom_observation(study):
    out, result, _ = study
    with xr.open_dataset(out / "no-bottom" / "reanalysis.nc") as ds:
        codes, layers = ds["obs_disposition"].values, ds["obs_layer"].values.astype(str)
    assert not ((codes == disp.ASSIMILATED) & (layers == "bottom")).any()
    assert ((codes == disp.ASSIMILATED) & (layers == "surface")).sum() > 50
    with xr.open_dataset(out / "all-data" / "reanalysis.nc") as ds:
        all_codes, all_layers = ds["obs_disposition"].values, ds["obs_layer"].values.astype(str)
    bottom_assimilated = ((all_codes == disp.ASSIMILATED) & (all_layers == "bottom")).sum()
    assert bottom_assimilated > 30
    runs = {r["name"]: r for r in result["runs"]}
    # the bottom rows the full run assimilated are the ones denied (the others were rejected or below usable QC)
    assert runs["no-bottom"]["observations"]["rows_denied"] >= bottom_assimilated
    # relative to the run that assimilated most: one of the two all-data runs (their gross-error checks differ)
    assert max(runs["all-data"]["data_kept"], runs["all-data-seed-5"]["data_kept"]) == 1.0
    assert runs["all-data"]["data_kept"] > 0.98 and 0.5 < runs["no-bottom"]["data_kept"] < 0.98


def test_more_data_is_no_worse_where_it_was_denied(study):
    _, result, _ = study
    runs = {r["name"]: r for r in result["runs"]}
    for name in ("nitrate@SYNTH-B/bottom", "oxygen@SYNTH-B/bottom"):
        assert runs["all-data"]["skill"][name]["rmse"] < runs["no-bottom"]["skill"][name]["rmse"], name


def test_dask_workers_give_the_same_study_as_runs_in_turn(study, tmp_path):
    """``--workers 2``: the runs go to a dask.distributed LocalCluster of two processes and come back with
    the same skill, bit for bit, as the runs made one after the other in this process."""
    _, in_turn, _ = study
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(STUDY))
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["osse", str(tmp_path / "c.yaml"), str(tmp_path / "e.yaml"), "--out", str(tmp_path / "out"),
                     "--json", "--quiet", "--workers", "2"])
    assert code == 0
    parallel = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert [r["name"] for r in parallel["runs"]] == RUNS
    for a, b in zip(in_turn["runs"], parallel["runs"]):
        assert a["skill"] == b["skill"], a["name"]
        assert a["observations"] == b["observations"], a["name"]

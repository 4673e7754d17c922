"""Periodic refit of the emulator to the analyses: the held-out forecast score per variable, the verdict that
keeps a refit only when no observed variable gets worse, and a refit inside a hindcast."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from assimilation import dispositions as dsp
from twin.refit import MIN_VARIABLE_COMPARISONS, ForecastScore, make_forecast_scorer, refit_verdict

REPO = Path(__file__).resolve().parents[1]


def _scorer(analysis):
    """Two observed elements (0 and 1) of a three-element state, both truly 2.0, every cycle; the 'model'
    multiplies the state by its parameters each day."""
    T = 40
    obs = SimpleNamespace(value=np.full((T, 2), 2.0), error_sd=np.full((T, 2), 0.2),
                          state_index=np.tile(np.array([0, 1]), (T, 1)))
    disposition = np.full((T, 2), dsp.ASSIMILATED)
    mean = np.tile(np.asarray(analysis, np.float32), (T, 1))
    return make_forecast_scorer(lambda x, f, key, p: x * p, mean, SimpleNamespace(obs=obs), disposition,
                                {"unused": np.zeros(T, np.float32)}, np.arange(0, 30), 40, lead_days=1,
                                names=["a", "b", "c"])


def test_score_per_variable_recombines_to_the_overall_score():
    score = _scorer([1.0, 1.8, 5.0])(np.ones(3, np.float32))
    assert set(score.by_variable) == {"a", "b"} and score.count == 60
    # relative error 0.1: the normalised log error of 1.0 against 2.0 is log(0.5) / 0.1
    np.testing.assert_allclose(score.by_variable["a"][0], abs(np.log(0.5)) / 0.1, rtol=1e-5)
    np.testing.assert_allclose(score.by_variable["b"][0], abs(np.log(0.9)) / 0.1, rtol=1e-5)
    combined = np.sqrt(sum(n * s**2 for s, n in score.by_variable.values()) / score.count)
    np.testing.assert_allclose(score.overall, combined, rtol=1e-6)


def test_a_refit_better_overall_but_worse_for_one_variable_is_refused():
    scorer = _scorer([1.0, 1.8, 5.0])
    before = scorer(np.ones(3, np.float32))
    after = scorer(np.array([2.0, 0.9, 1.0], np.float32))  # "a" exact, "b" further off
    assert after.overall < before.overall
    kept, why = refit_verdict(before, after)
    assert not kept and why.startswith("worse for b")
    better = scorer(np.array([2.0, 1.0, 3.0], np.float32))  # "a" exact, "b" unchanged, unobserved "c" free
    assert refit_verdict(before, better)[0]
    assert not refit_verdict(before, before)[0]  # not below: refused
    nan = ForecastScore(float("nan"), 0, {})
    assert refit_verdict(before, nan) == (False, "no finite score after the refit")
    # a variable with too few comparisons cannot veto
    few = ForecastScore(1.0, 20, {"a": (1.0, 15), "b": (1.0, MIN_VARIABLE_COMPARISONS - 1)})
    assert refit_verdict(few, ForecastScore(0.5, 20, {"a": (0.5, 15), "b": (2.0, 4)}))[0]


@pytest.mark.slow
def test_a_refit_in_a_hindcast_is_recorded_with_its_verdict(tmp_path):
    from twin.config import parse_config, read_yaml
    from twin.hindcast import run_hindcast
    data = read_yaml(REPO / "configs" / "demo.yaml")
    data.pop("alerts")
    data["experiment"]["days"] = 215  # a refit needs four 30-day segments after the 30-day burn-in
    data["emulator"]["checkpoint"] = str(REPO / "configs" / "emulators" / "demo")
    data["filter"]["members"] = 8
    data["hindcast"]["window_days"] = 50
    data["refit"] = {"interval_days": 200, "steps": 20, "holdout_days": 20}
    metrics = run_hindcast(parse_config(data), tmp_path / "run", quiet=True)
    (record,) = metrics["refit"]["history"]
    assert record["cycle"] == 199 and record["observations"] > 0
    assert record["kept"] == record["why"].endswith("no variable worse")
    entry = metrics["emulator_lineage"][-1]
    assert entry["kind"] == "refit" and entry["kept"] == record["kept"] and record["why"] in entry["data"]
    per_variable = [k for k in entry["skill_before"] if k.startswith("holdout_forecast_score ")]
    assert "holdout_forecast_score nitrate@SYNTH-B/surface" in per_variable
    assert set(per_variable) == {k for k in entry["skill_after"] if k != "holdout_forecast_score"}

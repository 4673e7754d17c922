"""Periodic refit of the emulator to the analyses: the held-out forecast score per variable, the verdict that
keeps a refit only when no observed variable gets worse, and a refit inside a hindcast."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from assimilation import dispositions as dsp
from twin.refit import (
    MIN_VARIABLE_COMPARISONS,
    ForecastScore,
    make_forecast_scorer,
    refit_verdict,
    significantly_worse,
)

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
    assert not kept and why.startswith("significantly worse for b")
    better = scorer(np.array([2.0, 1.0, 3.0], np.float32))  # "a" exact, "b" unchanged, unobserved "c" free
    assert refit_verdict(before, better)[0]
    assert not refit_verdict(before, before)[0]  # not below: refused
    nan = ForecastScore(float("nan"), 0, {})
    assert refit_verdict(before, nan) == (False, "no finite score after the refit")
    # a variable with too few comparisons cannot veto
    few = ForecastScore(1.0, 20, {"a": (1.0, 15), "b": (1.0, MIN_VARIABLE_COMPARISONS - 1)})
    assert refit_verdict(few, ForecastScore(0.5, 20, {"a": (0.5, 15), "b": (2.0, 4)}))[0]


def test_a_variable_worse_only_within_its_sampling_noise_does_not_veto():
    z2_before = {"a": np.linspace(0.5, 3.0, 200), "b": np.full(200, 2.0)}
    # "a" much better; "b" worse by 0.05 on average, but the paired differences scatter by 1 (standard
    # error 0.07): within its sampling noise
    z2_after = {"a": z2_before["a"] * 0.3, "b": z2_before["b"] + np.tile([1.05, -0.95], 100)}

    def score(z2):
        total = np.concatenate(list(z2.values()))
        return ForecastScore(float(np.sqrt(total.mean())), total.size,
                             {k: (float(np.sqrt(v.mean())), v.size) for k, v in z2.items()}, z2)

    before, after = score(z2_before), score(z2_after)
    assert after.by_variable["b"][0] > before.by_variable["b"][0]
    assert not significantly_worse(before, after, "b") and significantly_worse(after, before, "a")
    assert refit_verdict(before, after)[0]
    # the same mean increase on every comparison is significant
    steady = score({"a": z2_after["a"], "b": z2_before["b"] + 0.05})
    kept, why = refit_verdict(before, steady)
    assert not kept and why.startswith("significantly worse for b")


def test_calibration_recovers_the_parameter_inputs_that_made_the_trajectories():
    """Trajectories made by the demo emulator itself with known parameter inputs: calibration from the
    defaults finds those inputs again (the loss is the emulator's own, so the fit can be exact)."""
    import jax
    import jax.numpy as jnp

    from emulators.checkpoint import load_checkpoint
    from emulators.forcing import synthetic_forcing
    from emulators.network import rollout
    from emulators.parameters import ProcessParams
    from emulators.process_model import initial_state
    from emulators.training import TrajectoryData, calibrate_parameter_inputs, forcing_inputs
    from twin.forecast import parameter_input_names
    emulator = load_checkpoint(REPO / "configs" / "emulators" / "demo")
    names = parameter_input_names(emulator)
    defaults = np.asarray([getattr(ProcessParams(), n) for n in names])
    low = np.asarray(emulator.ranges.forcing_min)[-len(names):]
    high = np.asarray(emulator.ranges.forcing_max)[-len(names):]
    truth = defaults + 0.6 * (np.where(np.arange(len(names)) % 2 == 0, high, low) - defaults)  # inside ranges
    params = ProcessParams()._replace(**dict(zip(names, truth.tolist(), strict=True)))
    days, length = 360, 30
    forcing = synthetic_forcing(days, key=jax.random.PRNGKey(3))
    features = forcing_inputs(emulator.config.forcing_names, forcing, params)   # (T, F)
    doy = jnp.asarray(forcing.day_of_year, jnp.float32)
    states = rollout(emulator.graphdef, emulator.weights, emulator.normalisation,
                     jnp.asarray(initial_state(2)), features, doy)
    states = np.concatenate([np.asarray(initial_state(2))[None], np.asarray(states)])  # (T + 1, d)
    cut = range(0, days - length + 1, length)
    data = TrajectoryData(states=np.stack([states[k:k + length + 1] for k in cut]).astype(np.float32),
                          forcing=np.stack([np.asarray(features)[k:k + length] for k in cut]),
                          day_of_year=np.stack([np.asarray(doy)[k:k + length] for k in cut]),
                          site=np.zeros(len(cut), np.int32), group=np.arange(len(cut)),
                          state_names=emulator.config.state_names, forcing_names=emulator.config.forcing_names)
    values, before, after = calibrate_parameter_inputs(emulator, data, None, defaults, defaults,
                                                       steps=400, prior_weight=0.0)
    assert after < 0.05 * before
    # tolerance: 5 % of each parameter's training range (a weakly identified rate may stay a little off)
    np.testing.assert_allclose(values, truth, atol=0.05 * (high - low).max(), rtol=0.0)
    assert np.all(values >= low - 1e-6) and np.all(values <= high + 1e-6)


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
    assert record["kept"] == record["why"].endswith("no variable significantly worse")
    assert record["fitted"] in (("parameters", "weights", "parameters and weights") if record["kept"] else ("",))
    entry = metrics["emulator_lineage"][-1]
    assert entry["kind"] == "refit" and entry["kept"] == record["kept"] and record["why"] in entry["data"]
    per_variable = [k for k in entry["skill_before"] if k.startswith("holdout_forecast_score ")]
    assert "holdout_forecast_score nitrate@SYNTH-B/surface" in per_variable
    assert set(per_variable) == {k for k in entry["skill_after"] if k != "holdout_forecast_score"}

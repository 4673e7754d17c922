"""Alert probabilities computed by the cycle engine: the same numbers as ``twin.alerts.window_probability``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

from assimilation import FilterParams, Observations, initial_inflation_state
from twin.alerts import window_probability
from twin.engine import ALERT_KEY, AlertSpec, EngineState, alert_window_probability, cycle_keys, run_window

N, n, T, H = 16, 3, 12, 5
SPECS = (AlertSpec(0, 1.2, 1, 0.3, 5), AlertSpec(1, 0.8, -1, 0.0, 3), AlertSpec(2, 1.0, 1, 0.0, 1))


def _reference(lead_members: np.ndarray, spec: AlertSpec) -> float:
    direction = "above" if spec.sign > 0 else "below"
    return float(window_probability(lead_members[..., spec.state_index], spec.threshold, direction,
                                    spec.error_sd, spec.horizon_days))


def test_engine_formula_equals_window_probability():
    x = 1.0 + 0.4 * jax.random.normal(jax.random.PRNGKey(0), (H, N, n))
    actual = np.asarray(jax.jit(alert_window_probability, static_argnums=1)(x, SPECS))
    expected = [_reference(np.asarray(x, float), s) for s in SPECS]
    assert_allclose(actual, expected, rtol=0, atol=1e-6)  # float32 engine against float64 numpy
    # a NaN member is never counted as a non-exceedance
    broken = x.at[0, 3, :].set(jnp.nan)
    assert np.all(np.isnan(np.asarray(alert_window_probability(broken, SPECS))))
    assert alert_window_probability(x, ()).shape == (0,)


def _toy(key):
    """A damped linear model driven by (T,) forcing with additive noise, observed at element 0."""
    def forecast(members, forcing_t, key_t, model_params=None):
        return 0.9 * members + 0.1 * forcing_t + 0.05 * jax.random.normal(key_t, members.shape)
    forcing = 1.0 + jnp.sin(jnp.arange(T + H, dtype=jnp.float32))
    obs = Observations(value=1.0 + 0.1 * jax.random.normal(key, (T, 1)), error_sd=jnp.full((T, 1), 0.2),
                       state_index=jnp.zeros((T, 1), jnp.int32), mask=jnp.ones((T, 1), bool),
                       qc_ok=jnp.ones((T, 1), bool))
    members = 1.0 + 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (N, n))
    return forecast, forcing, obs, EngineState(members, initial_inflation_state())


def _window(forecast, state, obs, forcing, key, start, stop, alerts=None, ahead=True):
    obs_w = jax.tree.map(lambda a: a[start:stop], obs)
    return run_window(forecast, state, obs_w, forcing[start:stop], key, FilterParams(), jnp.ones(n, bool), start,
                      None, alerts, forcing[stop:stop + H] if ahead else None)


def _lead_forecast(forecast, members, forcing, key, i) -> np.ndarray:
    """Cycle i's analysis members run H days ahead with the forcing of cycles i+1..i+H and the key folded
    from cycle i's: (H, N, n)."""
    lead_keys = jax.random.split(jax.random.fold_in(cycle_keys(key, 0, T)[i], ALERT_KEY), H)
    lead, x = [], members
    for k in range(H):
        x = forecast(x, forcing[i + 1 + k], lead_keys[k])
        lead.append(x)
    return np.asarray(jnp.stack(lead), float)


def test_run_window_records_the_window_probability_of_the_analysis_forecast():
    key = jax.random.PRNGKey(3)
    forecast, forcing, obs, state = _toy(key)
    plain_state, plain = _window(forecast, state, obs, forcing, key, 0, T)
    assert plain.alert_probability.shape == (T, 0)
    # two windows with alerts, the next window's forcing passed ahead
    half = T // 2
    first_state, first = _window(forecast, state, obs, forcing, key, 0, half, SPECS)
    last_state, second = _window(forecast, first_state, obs, forcing, key, half, T, SPECS)
    assert first.alert_probability.shape == (half, len(SPECS))
    # alerts leave the cycles themselves unchanged (1e-6: two compiled programs)
    assert_allclose(np.concatenate([first.analysis_mean, second.analysis_mean]), plain.analysis_mean,
                    rtol=0, atol=1e-6)
    assert_allclose(last_state.members, plain_state.members, rtol=0, atol=1e-6)
    # each window's last cycle: the probability is window_probability of its analysis run ahead
    for i, members, p in ((half - 1, first_state.members, first.alert_probability[-1]),
                          (T - 1, last_state.members, second.alert_probability[-1])):
        lead = _lead_forecast(forecast, members, forcing, key, i)
        assert_allclose(p, [_reference(lead, s) for s in SPECS], rtol=0, atol=1e-5)


def test_run_window_rejects_short_forcing_ahead():
    key = jax.random.PRNGKey(0)
    forecast, forcing, obs, state = _toy(key)
    obs_w = jax.tree.map(lambda a: a[:T], obs)
    with pytest.raises(ValueError, match="forcing_ahead covers 2 days; the alerts need 5"):
        run_window(forecast, state, obs_w, forcing[:T], key, FilterParams(), jnp.ones(n, bool), 0, None, SPECS,
                   forcing[T:T + 2])

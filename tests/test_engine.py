"""The cycle engine's own arithmetic: ensemble quantiles (a sorting network in XLA; NumPy's sort after the scan),
model errors drawn per window, the observation-space records."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from assimilation import FilterParams, Observations, initial_inflation_state
from emulators.forcing import synthetic_forcing
from emulators.parameters import default_site
from emulators.process_model import initial_state
from twin.engine import QUANTILES, EngineState, ensemble_quantiles, run_window, sort_members, window_quantiles
from twin.forecast import initial_ensemble, make_forecast, stack_sites
from twin.state_layout import StateLayout


@pytest.mark.parametrize("num_members", [1, 7, 40, 64, 100])
def test_sorting_network_sorts_any_ensemble_size(num_members):
    x = jax.random.normal(jax.random.PRNGKey(num_members), (num_members, 5, 3))
    x = x.at[0].set(x[-1])  # ties
    assert_array_equal(np.asarray(sort_members(x)), np.sort(np.asarray(x), axis=0))


@pytest.mark.parametrize("num_members", [7, 64, 100])
def test_ensemble_quantiles_equal_jnp_quantile(num_members):
    x = jax.random.lognormal(jax.random.PRNGKey(1), shape=(num_members, 36))
    # Same order statistics, same linear interpolation: the weights are rounded to float32 at different
    # points (here, exact fractions; in jnp.quantile, computed in float32), 1.3e-6 at most seen.
    expected = np.asarray(jnp.quantile(x, jnp.asarray(QUANTILES), axis=0))
    assert_allclose(np.asarray(ensemble_quantiles(x)), expected, rtol=5e-6, atol=0)


def test_ensemble_quantiles_are_nan_where_a_member_is():
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 4)).at[3, 1].set(jnp.nan)
    q = np.asarray(ensemble_quantiles(x))
    assert np.all(np.isnan(q[:, 1]))
    assert np.all(np.isfinite(q[:, [0, 2, 3]]))


@pytest.mark.parametrize("num_members", [7, 64])
def test_window_quantiles_equal_the_sorting_network_record_by_record(num_members):
    x = jax.random.lognormal(jax.random.PRNGKey(3), shape=(5, num_members, 36))
    x = x.at[1, 0].set(x[1, -1]).at[2, 4, 7].set(jnp.nan)  # ties; a NaN member in one record's column
    expected = np.asarray(jax.vmap(ensemble_quantiles)(x))
    got = np.asarray(jax.jit(window_quantiles)(x))
    assert got.shape == (5, len(QUANTILES), 36) and got.dtype == np.float32
    # The same order statistics; the interpolation's product and sum may round once differently (XLA fuses
    # them into one multiply-add): one float32 ulp at most.
    assert_allclose(got, expected, rtol=1.2e-7, atol=0)
    assert np.all(np.isnan(got[2, :, 7])) and np.isfinite(np.delete(got[2], 7, axis=1)).all()


def test_window_with_predrawn_model_errors_equals_cycle_by_cycle_draws():
    """The engine draws a window's model errors before its scan; a forecast function without that hook
    draws them in each cycle from the same key. Both must give the same cycles."""
    layout = StateLayout(("A",), 2)
    site = default_site(2, 43.0)
    sites = stack_sites([site])

    def relax(x, forcing_t, model_params=None):  # a cheap stepper: the test is about the engine's draws
        return 0.95 * x + 0.05 * x.mean(axis=0)

    forecast = make_forecast(relax, layout, sites, np.full(layout.model_dim, 0.1, np.float32))
    assert hasattr(forecast, "with_noise")

    def plain(members, forcing_t, key, model_params=None):  # the same function, without the hook
        return forecast(members, forcing_t, key, model_params)

    T = 6
    forcing = stack_sites([synthetic_forcing(T, latitude=43.0)])
    members = initial_ensemble(jax.random.PRNGKey(0), layout, 8, np.asarray(initial_state(2))[None], 0.3)
    idx = np.array([layout.observation_index("nitrate", "A", "surface")] * 2, np.int32)
    obs = Observations(value=jnp.full((T, 2), 2.0), error_sd=jnp.full((T, 2), 0.3),
                       state_index=jnp.tile(idx, (T, 1)), mask=jnp.ones((T, 2), bool).at[:, 1].set(False),
                       qc_ok=jnp.ones((T, 2), bool))
    state = EngineState(members, initial_inflation_state())
    args = (obs, forcing, jax.random.PRNGKey(5), FilterParams(), jnp.ones(layout.dim, bool), 3)
    fast_state, fast = run_window(forecast, state, *args)
    slow_state, slow = run_window(plain, state, *args)
    assert_allclose(np.asarray(fast.analysis_mean), np.asarray(slow.analysis_mean), rtol=1e-6)
    assert_allclose(np.asarray(fast_state.members), np.asarray(slow_state.members), rtol=1e-6)
    assert not np.allclose(np.asarray(fast.forecast_mean[1:]), np.asarray(fast.forecast_mean[:-1]))


def test_window_records_quantiles_and_observation_space_values_of_its_cycles():
    """The quantiles are taken after the scan and the observation-space records from the state's records:
    check both against the members and the slots of a one-cycle window."""
    layout = StateLayout(("A",), 2)
    sites = stack_sites([default_site(2, 43.0)])
    forecast = make_forecast(lambda x, f, p=None: 0.9 * x, layout, sites, np.full(layout.model_dim, 0.1, np.float32))
    forcing = stack_sites([synthetic_forcing(1, latitude=43.0)])
    members = initial_ensemble(jax.random.PRNGKey(0), layout, 16, np.asarray(initial_state(2))[None], 0.3)
    idx = np.array([layout.observation_index("nitrate", "A", "surface"),
                    layout.observation_index("oxygen", "A", "bottom"), 0], np.int32)
    obs = Observations(value=jnp.asarray([[2.0, 200.0, jnp.nan]]), error_sd=jnp.asarray([[0.3, 5.0, 1.0]]),
                       state_index=jnp.asarray(idx)[None], mask=jnp.asarray([[True, True, False]]),
                       qc_ok=jnp.ones((1, 3), bool))
    state = EngineState(members, initial_inflation_state())
    final, out = run_window(forecast, state, obs, forcing, jax.random.PRNGKey(5), FilterParams(),
                            jnp.ones(layout.dim, bool), 0)
    post = np.asarray(final.members)
    assert_allclose(np.asarray(out.analysis_quantiles[0]), np.quantile(post, QUANTILES, axis=0), rtol=2e-6)
    assert_allclose(np.asarray(out.obs_analysis[0]), post[:, idx].mean(0), rtol=2e-6)
    assert_array_equal(np.asarray(out.obs_forecast[0]), np.asarray(out.forecast_mean[0])[idx])
    assert_array_equal(np.asarray(out.obs_forecast_sd[0]), np.asarray(out.forecast_sd[0])[idx])
    assert not np.allclose(np.asarray(out.obs_analysis[0, :2]), np.asarray(out.obs_forecast[0, :2]))
    # The quantiles sorted in the cycle (an exported program; a window too large to hold its members) are the
    # same to one float32 ulp, and nothing else changes.
    final_in, out_in = run_window(forecast, state, obs, forcing, jax.random.PRNGKey(5), FilterParams(),
                                  jnp.ones(layout.dim, bool), 0, host_quantiles=False)
    assert_allclose(np.asarray(out_in.analysis_quantiles), np.asarray(out.analysis_quantiles), rtol=1.2e-7)
    assert_array_equal(np.asarray(final_in.members), post)
    assert_array_equal(np.asarray(out_in.obs_analysis), np.asarray(out.obs_analysis))

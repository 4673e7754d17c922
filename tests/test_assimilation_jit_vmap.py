"""Every public kernel runs under ``jit`` and ``vmap`` (a batch of 3 independent problems), finite outputs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import assimilation as da
from assimilation.testbeds import lorenz63_sakov2012, lorenz96_sakov2008, simulate_twin

BATCH, N, n, m = 3, 8, 12, 7


def batched_problem(seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 4)
    members = 2.0 + jax.random.normal(keys[0], (BATCH, N, n))
    index = jnp.broadcast_to(jnp.array([0, 2, 3, 5, 7, 11, 1]), (BATCH, m))
    values = 2.0 + jax.random.normal(keys[1], (BATCH, m))
    mask = jnp.broadcast_to(jnp.array([True] * 6 + [False]), (BATCH, m))
    obs = da.make_observations(values, 0.5, index, mask=mask)
    return members, obs, jax.random.split(keys[2], BATCH)


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree)
               if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact))


def localization():
    d = jnp.abs(jnp.arange(n)[:, None] - jnp.array([0, 2, 3, 5, 7, 11, 1])[None, :]).astype(jnp.float32)
    return da.localization_from_distances(d, 2.0, max_local=5)


@pytest.mark.parametrize("method", da.ANALYSIS_METHODS)
def test_analysis_kernels_jit_vmap(method):
    members, obs, keys = batched_problem()
    kernel = da.get_analysis_kernel(method)
    predicted = jax.vmap(da.predict_observations)(members, obs)
    scale = jnp.where(obs.mask, 1.0 / obs.error_sd, 0.0)
    loc = localization()
    out, dofs = jax.jit(jax.vmap(lambda e, p, y, s, k: kernel(e, p, y, s, k, loc)))(
        members, predicted, jnp.where(obs.mask, obs.value, 0.0), scale, keys)
    assert out.shape == (BATCH, N, n) and dofs.shape == (BATCH,)
    assert all_finite((out, dofs))
    assert np.all(np.asarray(dofs) > 0)


@pytest.mark.parametrize("method", da.ANALYSIS_METHODS)
def test_full_analysis_jit_vmap(method):
    members, obs, keys = batched_problem(1)
    params = da.FilterParams(method, adaptive_inflation=True, rtps_alpha=0.3, outlier_threshold=4.0)
    loc = localization()
    log_mask = jnp.arange(n) % 2 == 0

    def one(e, o, k):
        return da.analysis(da.Ensemble(e), o, k, params, da.initial_inflation_state(), loc, log_mask)

    result = jax.jit(jax.vmap(one))(members, obs, keys)
    assert result.ensemble.members.shape == (BATCH, N, n)
    assert result.disposition.shape == (BATCH, m)
    assert all_finite(result)
    assert np.all(np.asarray(result.ensemble.members)[:, :, ::2] > 0)


def test_cycling_driver_jit_vmap_with_forcing_and_keys():
    testbed = lorenz96_sakov2008(n)
    members, obs, keys = batched_problem(2)
    num_cycles = 5
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (BATCH, num_cycles) + x.shape[1:]), obs)
    forcing = jnp.linspace(7.0, 9.0, num_cycles)

    def forecast(e, f, key):
        return testbed.step(e) + 0.0 * f + 0.01 * jax.random.normal(key, e.shape)

    def run(e, o, k):
        return da.cycle_scan(forecast, da.Ensemble(e), o, k, da.FilterParams("etkf", 1.02), forcing=forcing)

    out = jax.jit(jax.vmap(run))(members, stacked, keys)
    assert out.analysis_mean.shape == (BATCH, num_cycles, n)
    assert out.diagnostics.counts.shape == (BATCH, num_cycles, da.NUM_DISPOSITIONS)
    assert all_finite(out)
    # run_cycles (already jitted) also composes with vmap
    out2 = jax.vmap(lambda e, o, k: da.run_cycles(forecast, da.Ensemble(e), o, k, da.FilterParams("etkf", 1.02),
                                                  forcing=forcing))(members, stacked, keys)
    np.testing.assert_allclose(np.asarray(out2.analysis_mean), np.asarray(out.analysis_mean), rtol=1e-5, atol=1e-5)


def test_small_kernels_jit_vmap():
    members, obs, _ = batched_problem(3)
    analysis = members + 0.1
    assert all_finite(jax.jit(jax.vmap(lambda e: da.inflate(e, 1.1)))(members))
    assert all_finite(jax.jit(jax.vmap(lambda b, a: da.relax_to_prior_spread(b, a, 0.5)))(members, analysis))
    assert all_finite(jax.jit(jax.vmap(da.gaspari_cohn))(jnp.ones((BATCH, 4)), jnp.array([1.0, 2.0, 3.0])))
    assert all_finite(jax.jit(jax.vmap(da.lognormal_obs))(jnp.ones((BATCH, m)), jnp.ones((BATCH, m))))
    z = jax.jit(jax.vmap(lambda e: da.to_transformed(e, jnp.ones(n, bool), 1e-30)))(members)
    assert all_finite(jax.jit(jax.vmap(lambda x: da.from_transformed(x, jnp.ones(n, bool))))(z))
    assert all_finite(jax.jit(jax.vmap(da.predict_observations))(members, obs))
    assert all_finite(jax.jit(jax.vmap(da.degrees_of_freedom_for_signal))(members))
    states = jax.vmap(lambda _: da.initial_inflation_state())(jnp.arange(BATCH))
    infl = jax.jit(jax.vmap(lambda s, d: da.adaptive_inflation_update(
        da.damp_inflation(s, 0.9), jnp.ones(m), jnp.ones(m), d, jnp.ones(m, bool), 0.1, (1.0, 10.0))))(
        states, 2.0 * obs.value)
    assert all_finite(infl)
    dist = jnp.abs(jax.random.normal(jax.random.key(0), (BATCH, n, m)))
    assert all_finite(jax.jit(jax.vmap(lambda d: da.localization_from_distances(d, 1.0, max_local=4)))(dist))
    truth = jnp.zeros((BATCH, 10, n))
    skill = jax.jit(jax.vmap(lambda a, s, t: da.assess_skill(a, s, t, 2)))(truth + 0.1, truth + 0.1, truth)
    assert all_finite(skill) and not np.any(np.asarray(skill.diverged))


def test_testbeds_jit_vmap():
    for testbed in (lorenz96_sakov2008(), lorenz63_sakov2012()):
        twin = jax.jit(jax.vmap(lambda k: simulate_twin(testbed, k, 4, 5)))(jax.random.split(jax.random.key(0), 2))
        assert twin.truth.shape == (2, 4, testbed.state_dim)
        assert all_finite(twin)

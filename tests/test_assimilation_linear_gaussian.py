"""Analyses against the exact Kalman filter in the linear-Gaussian case (float64).

The prior ensemble is built so that its sample mean and covariance equal the prior exactly; the ETKF and the
serial EnSRF must then return the Kalman analysis mean and covariance to round-off, the LETKF with an
infinite radius must equal the ETKF, and the stochastic EnKF must agree within its sampling error.
float64 is enabled only inside these tests (the ``jax.enable_x64(True)`` context manager of jax 0.10, which
replaced ``jax.experimental.enable_x64``), not for other test files.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import assimilation as da

STATE_DIM = 6


def enable_x64():
    return jax.enable_x64(True)


analyse = jax.jit(da.analysis, static_argnames=("params", "obs_operator"))
TIGHT = dict(rtol=1e-9, atol=1e-10)  # float64 round-off of a few small matrix factorizations


def exact_ensemble(rng: np.random.Generator, mean: np.ndarray, cov: np.ndarray, num_members: int) -> np.ndarray:
    """(N, n) ensemble whose sample mean and (N-1)-normalized covariance equal ``mean`` and ``cov``."""
    z = rng.standard_normal((num_members, len(mean)))
    z -= z.mean(axis=0)
    white = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / (num_members - 1))).T
    return mean + white @ np.linalg.cholesky(cov).T


def problem(seed: int = 0, num_members: int = 10):
    """A prior, three observations (of elements 0, 2, 5) and two empty slots, and the exact Kalman answer."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=STATE_DIM)
    root = rng.normal(size=(STATE_DIM, STATE_DIM))
    cov = root @ root.T / STATE_DIM + 0.5 * np.eye(STATE_DIM)
    members = exact_ensemble(rng, mean, cov, num_members)
    index = np.array([0, 2, 5, 1, 3])
    mask = np.array([True, True, True, False, False])
    error_sd = np.array([0.7, 1.2, 0.4, 1.0, 1.0])
    value = np.array([1.5, -0.3, 2.0, np.nan, np.nan])
    obs = da.Observations(jnp.asarray(value), jnp.asarray(error_sd), jnp.asarray(index, jnp.int32),
                          jnp.asarray(mask), jnp.ones(5, bool))
    H = np.eye(STATE_DIM)[index[mask]]
    R = np.diag(error_sd[mask] ** 2)
    K = cov @ H.T @ np.linalg.inv(H @ cov @ H.T + R)
    mean_a = mean + K @ (value[mask] - H @ mean)
    cov_a = (np.eye(STATE_DIM) - K @ H) @ cov
    return members, obs, mean_a, cov_a, np.trace(H @ K)


def sample_moments(members) -> tuple[np.ndarray, np.ndarray]:
    members = np.asarray(members)
    return members.mean(axis=0), np.cov(members, rowvar=False, ddof=1)


@pytest.mark.parametrize("method", ["etkf", "ensrf"])
def test_deterministic_filters_reproduce_the_kalman_analysis(method):
    with enable_x64():
        members, obs, mean_a, cov_a, dofs = problem()
        result = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(0), da.FilterParams(method))
        actual_mean, actual_cov = sample_moments(result.ensemble.members)
        assert result.ensemble.members.dtype == jnp.float64
        np.testing.assert_allclose(actual_mean, mean_a, **TIGHT)
        np.testing.assert_allclose(actual_cov, cov_a, **TIGHT)
        np.testing.assert_allclose(float(result.diagnostics.dofs), dofs, **TIGHT)
        expected = [da.ASSIMILATED] * 3 + [da.MISSING] * 2
        np.testing.assert_array_equal(np.asarray(result.disposition), expected)


def test_letkf_with_infinite_radius_equals_etkf():
    with enable_x64():
        members, obs, _, _, _ = problem(seed=1)
        distances = jnp.abs(jnp.arange(STATE_DIM)[:, None] - obs.state_index[None, :]).astype(jnp.float64)
        loc = da.localization_from_distances(distances, jnp.inf)
        ensemble = da.Ensemble(jnp.asarray(members))
        etkf = analyse(ensemble, obs, jax.random.key(0), da.FilterParams("etkf"))
        letkf = analyse(ensemble, obs, jax.random.key(0), da.FilterParams("letkf"), localization=loc)
        np.testing.assert_allclose(np.asarray(letkf.ensemble.members), np.asarray(etkf.ensemble.members), **TIGHT)


def test_letkf_localization_leaves_distant_elements_unchanged():
    with enable_x64():
        members, obs, _, _, _ = problem(seed=2)
        distances = jnp.abs(jnp.arange(STATE_DIM)[:, None] - obs.state_index[None, :]).astype(jnp.float64)
        # half-width 0.4: support 0.8 < 1, so each element sees only an observation of itself
        loc = da.localization_from_distances(distances, 0.4)
        result = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(0), da.FilterParams("letkf"),
                             localization=loc)
        unobserved = [1, 3, 4]
        np.testing.assert_allclose(np.asarray(result.ensemble.members)[:, unobserved], members[:, unobserved],
                                   **TIGHT)
        assert not np.allclose(np.asarray(result.ensemble.members)[:, 0], members[:, 0])


def test_stochastic_enkf_within_sampling_error():
    num_members = 4000
    with enable_x64():
        members, obs, mean_a, cov_a, _ = problem(seed=3, num_members=num_members)
        result = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(7), da.FilterParams("enkf"))
        actual_mean, actual_cov = sample_moments(result.ensemble.members)
    # The perturbations are centred, so the mean is the Kalman mean of the exact sample prior.
    np.testing.assert_allclose(actual_mean, mean_a, **TIGHT)
    # Each analysis anomaly is (I - KH) a_i + K eps_i, with covariance cov_a; its sample covariance differs
    # from cov_a by less than the sampling sd of a covariance from N draws, sqrt((s_ii s_jj + s_ij^2)/(N-1)).
    # 5 such sd per entry (36 entries: a false alarm has probability < 1e-4).
    sd = np.sqrt((np.outer(np.diag(cov_a), np.diag(cov_a)) + cov_a**2) / (num_members - 1))
    assert np.all(np.abs(actual_cov - cov_a) <= 5 * sd), np.max(np.abs(actual_cov - cov_a) / sd)
    # and the error is not trivially zero: the EnKF is stochastic
    assert np.max(np.abs(actual_cov - cov_a)) > 1e-6


@pytest.mark.parametrize("method", ["etkf", "ensrf", "enkf"])
def test_cycle_without_observations_is_a_forecast_only(method):
    with enable_x64():
        members, obs, _, _, _ = problem(seed=4)
        empty = obs._replace(mask=jnp.zeros_like(obs.mask))
        params = da.FilterParams(method, inflation_factor=1.3, rtps_alpha=0.5)
        result = analyse(da.Ensemble(jnp.asarray(members)), empty, jax.random.key(0), params)
        np.testing.assert_array_equal(np.asarray(result.ensemble.members), members)
        assert int(result.diagnostics.counts[da.MISSING]) == 5
        assert float(result.diagnostics.dofs) == 0.0


def test_prior_inflation_is_the_kalman_analysis_of_the_inflated_prior():
    factor = 1.2
    with enable_x64():
        members, obs, _, _, _ = problem(seed=5)
        inflated = da.inflate(jnp.asarray(members), factor)
        expected = analyse(da.Ensemble(inflated), obs, jax.random.key(0), da.FilterParams("etkf"))
        actual = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(0),
                             da.FilterParams("etkf", inflation_factor=factor))
        np.testing.assert_allclose(np.asarray(actual.ensemble.members), np.asarray(expected.ensemble.members),
                                   **TIGHT)


def test_rtps_with_alpha_one_restores_the_prior_spread():
    with enable_x64():
        members, obs, _, _, _ = problem(seed=6)
        plain = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(0), da.FilterParams("etkf"))
        relaxed = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(0),
                              da.FilterParams("etkf", rtps_alpha=1.0))
        np.testing.assert_allclose(np.asarray(relaxed.ensemble.members).std(axis=0), members.std(axis=0), **TIGHT)
        np.testing.assert_allclose(np.asarray(relaxed.ensemble.members).mean(axis=0),
                                   np.asarray(plain.ensemble.members).mean(axis=0), **TIGHT)


def test_custom_linear_operator_equals_index_operator():
    with enable_x64():
        members, obs, mean_a, cov_a, _ = problem(seed=7)
        H = jnp.eye(STATE_DIM)[obs.state_index]

        def operator(x, observations):
            return H @ x

        result = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(0), da.FilterParams("etkf"),
                             obs_operator=operator)
        actual_mean, actual_cov = sample_moments(result.ensemble.members)
        np.testing.assert_allclose(actual_mean, mean_a, **TIGHT)
        np.testing.assert_allclose(actual_cov, cov_a, **TIGHT)


@pytest.mark.parametrize("num_obs", [3, 7])
def test_observation_space_etkf_transform_equals_the_ensemble_space_one(num_obs):
    """With m < N the ETKF transform comes from the m x m eigendecomposition; it must equal the N x N one,
    empty (zero) slots included."""
    from assimilation.analysis import _etkf_transform_obs_space
    rng = np.random.default_rng(num_obs)
    Y = rng.normal(size=(12, num_obs))
    Y[:, 1] = 0.0  # an unused slot
    Y -= Y.mean(axis=0)
    dy = rng.normal(size=num_obs)
    dy[1] = 0.0
    n1 = 11
    G = Y @ Y.T + n1 * np.eye(12)
    eigval, V = np.linalg.eigh(G)
    T = (V * np.sqrt(n1 / eigval)) @ V.T
    w = np.linalg.solve(G, Y @ dy)
    with enable_x64():
        W, dofs = _etkf_transform_obs_space(jnp.asarray(Y), jnp.asarray(dy))
    np.testing.assert_allclose(np.asarray(W), w[None, :] + T, **TIGHT)
    np.testing.assert_allclose(float(dofs), np.sum((eigval - n1) / eigval), **TIGHT)


@pytest.mark.parametrize("num_active", [0, 1, 4, 8, 9, 20])
def test_etkf_transform_through_the_active_slots_equals_the_full_one(num_active):
    """28 slots, 40 members: up to 8 slots in use, the transform comes from those alone (lax.cond); above,
    from all 28. Both must equal the ensemble-space transform, whichever slots are in use."""
    from assimilation.analysis import _etkf_transform_active_slots
    rng = np.random.default_rng(num_active)
    num_members, num_obs = 40, 28
    active = np.zeros(num_obs, bool)
    active[rng.choice(num_obs, num_active, replace=False)] = True
    Y = rng.normal(size=(num_members, num_obs)) * active
    Y -= Y.mean(axis=0)
    dy = rng.normal(size=num_obs) * active
    n1 = num_members - 1
    G = Y @ Y.T + n1 * np.eye(num_members)
    eigval, V = np.linalg.eigh(G)
    T = (V * np.sqrt(n1 / eigval)) @ V.T
    w = np.linalg.solve(G, Y @ dy)
    with enable_x64():
        W, dofs = jax.jit(_etkf_transform_active_slots)(jnp.asarray(Y), jnp.asarray(dy))
    np.testing.assert_allclose(np.asarray(W), w[None, :] + T, **TIGHT)
    np.testing.assert_allclose(float(dofs), np.sum((eigval - n1) / eigval), **TIGHT)


@pytest.mark.parametrize(("num_members", "num_obs"), [(4, 7), (12, 5), (40, 60), (50, 30)])
def test_stochastic_enkf_update_equals_the_direct_formula(num_members, num_obs):
    """Given perturbations, the EnKF update is x_i + A^T G^-1 Y s_i (G = Y Y^T + N1 I, s_i the standardized
    perturbed innovation): the Cholesky solves in ensemble space (N <= m) and observation space (N > m), in
    one solve or in blocks of right-hand sides (the two larger cases), must give it to round-off, with an
    unused slot, and trace(HK) with it."""
    from assimilation.analysis import enkf_update
    rng = np.random.default_rng(num_members + num_obs)
    members = rng.normal(size=(num_members, 3 * num_obs))
    predicted = members[:, ::3]
    value = rng.normal(size=num_obs)
    scale = rng.uniform(0.5, 2.0, size=num_obs)
    scale[1] = 0.0  # an unused slot
    eps = rng.normal(size=(num_members, num_obs))
    n1 = num_members - 1
    used = scale > 0
    Y = (predicted - predicted.mean(axis=0)) * scale
    dy = (value - predicted.mean(axis=0)) * scale
    D = dy - Y + (eps - eps.mean(axis=0)) * used
    G = Y @ Y.T + n1 * np.eye(num_members)
    expected = members + (D @ Y.T @ np.linalg.inv(G)) @ (members - members.mean(axis=0))
    expected_dofs = np.trace(Y.T @ np.linalg.solve(G, Y))
    with enable_x64():
        actual, dofs = jax.jit(enkf_update)(jnp.asarray(members), jnp.asarray(predicted), jnp.asarray(value),
                                            jnp.asarray(scale), perturbations=jnp.asarray(eps))
    np.testing.assert_allclose(np.asarray(actual), expected, **TIGHT)
    np.testing.assert_allclose(float(dofs), expected_dofs, **TIGHT)

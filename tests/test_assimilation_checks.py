"""Log transform, gross-error check, disposition codes, localization taper, adaptive inflation, registry."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import assimilation as da

analyse = jax.jit(da.analysis, static_argnames=("params", "obs_operator"))
TIGHT = dict(rtol=1e-9, atol=1e-10)  # float64 round-off


def exact_ensemble(rng, mean, cov, num_members):
    """(N, n) ensemble whose sample mean and covariance equal ``mean`` and ``cov`` exactly."""
    z = rng.standard_normal((num_members, len(mean)))
    z -= z.mean(axis=0)
    white = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / (num_members - 1))).T
    return mean + white @ np.linalg.cholesky(cov).T


def kalman(mean, cov, H, y, R):
    K = cov @ H.T @ np.linalg.inv(H @ cov @ H.T + R)
    return mean + K @ (y - H @ mean), (np.eye(len(mean)) - K @ H) @ cov


# ---------------------------------------------------------------- log transform (lognormal toy problem)

def test_lognormal_moments_are_matched():
    value, error_sd = jnp.array([2.0, 0.01, 150.0]), jnp.array([0.5, 0.02, 30.0])
    y_log, r_log = da.lognormal_obs(value, error_sd)
    mean = jnp.exp(y_log + r_log**2 / 2)
    sd = jnp.sqrt(jnp.expm1(r_log**2)) * mean
    np.testing.assert_allclose(mean, value, rtol=1e-5)
    np.testing.assert_allclose(sd, error_sd, rtol=1e-5)


def test_log_analysis_is_exact_in_log_space_and_positive():
    """Prior log x ~ N(mu, P) (exact ensemble); observations of x with lognormal errors; the analysis of
    log x must be the Kalman analysis with the moment-matched log observations, and x stay > 0."""
    rng = np.random.default_rng(11)
    mean_log = np.log(np.array([0.05, 0.2, 3.0]))
    cov_log = np.array([[0.8, 0.3, 0.1], [0.3, 0.5, 0.0], [0.1, 0.0, 0.2]])
    value = np.array([0.005, 0.02])      # observations of elements 0 and 1, far below the prior
    error_sd = np.array([0.01, 0.05])
    with jax.enable_x64(True):
        members = np.exp(exact_ensemble(rng, mean_log, cov_log, 12))
        obs = da.make_observations(jnp.asarray(value), jnp.asarray(error_sd), jnp.array([0, 1]), num_slots=3)
        log_mask = jnp.array([True, True, True])
        result = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(0), da.FilterParams("etkf"),
                         log_mask=log_mask)
        analysis_members = np.asarray(result.ensemble.members)
        y_log, r_log = (np.asarray(a) for a in da.lognormal_obs(jnp.asarray(value), jnp.asarray(error_sd)))
        expected_mean, expected_cov = kalman(mean_log, cov_log, np.eye(3)[:2], y_log, np.diag(r_log**2))
        # the same problem without the transform: the linear analysis goes negative
        linear = analyse(da.Ensemble(jnp.asarray(members)), obs, jax.random.key(0), da.FilterParams("etkf"))
    assert np.all(analysis_members > 0)
    assert np.any(np.asarray(linear.ensemble.members) < 0)
    log_members = np.log(analysis_members)
    np.testing.assert_allclose(log_members.mean(axis=0), expected_mean, **TIGHT)
    np.testing.assert_allclose(np.cov(log_members, rowvar=False), expected_cov, **TIGHT)
    np.testing.assert_array_equal(np.asarray(result.disposition), [da.ASSIMILATED, da.ASSIMILATED, da.MISSING])


def test_nonpositive_observation_of_log_variable_is_not_assimilated():
    members = jnp.exp(jax.random.normal(jax.random.key(1), (8, 2)))
    obs = da.make_observations(jnp.array([-0.1, 0.0, 1.0]), 0.1, jnp.array([0, 0, 1]))
    result = analyse(da.Ensemble(members), obs, jax.random.key(0), da.FilterParams("etkf"),
                     log_mask=jnp.array([True, False]))
    # element 1 is not log-transformed: its observation may be any real value
    np.testing.assert_array_equal(np.asarray(result.disposition),
                                  [da.INVALID_FOR_TRANSFORM, da.INVALID_FOR_TRANSFORM, da.ASSIMILATED])
    assert np.all(np.asarray(result.ensemble.members)[:, 0] > 0)


# ---------------------------------------------------------------- gross-error check and dispositions

def test_ten_sigma_outlier_is_rejected_and_the_rest_assimilated():
    num_members, state_dim = 20, 10
    with jax.enable_x64(True):
        members = jax.random.normal(jax.random.key(2), (num_members, state_dim))
        truth = jnp.zeros(state_dim)
        values = truth + jax.random.normal(jax.random.key(3), (state_dim,))
        spread = members.std(axis=0, ddof=1)
        outlier_slot = 4
        values = values.at[outlier_slot].set(members.mean(axis=0)[outlier_slot]
                                             + 10 * jnp.sqrt(spread[outlier_slot] ** 2 + 1.0))
        obs = da.make_observations(values, 1.0, jnp.arange(state_dim))
        params = da.FilterParams("etkf", outlier_threshold=4.0)
        result = analyse(da.Ensemble(members), obs, jax.random.key(0), params)
        without = analyse(da.Ensemble(members), obs._replace(mask=obs.mask.at[outlier_slot].set(False)),
                          jax.random.key(0), da.FilterParams("etkf"))
    expected = np.full(state_dim, da.ASSIMILATED)
    expected[outlier_slot] = da.REJECTED_OUTLIER
    np.testing.assert_array_equal(np.asarray(result.disposition), expected)
    assert int(result.diagnostics.counts[da.REJECTED_OUTLIER]) == 1
    assert int(result.diagnostics.counts[da.ASSIMILATED]) == state_dim - 1
    # the rest is assimilated exactly as if the outlier had never been there
    np.testing.assert_allclose(np.asarray(result.ensemble.members), np.asarray(without.ensemble.members), **TIGHT)


def test_every_disposition_code_is_recorded():
    members = jax.random.normal(jax.random.key(4), (10, 5)) + 5.0
    values = jnp.array([5.0, 5.0, 5.0, jnp.nan, 5.0, 500.0, 5.0, -1.0])
    index = jnp.array([0, 1, 2, 3, 7, 4, 0, 3])
    mask = jnp.array([True, False, True, True, True, True, True, True])
    qc_ok = jnp.array([True, True, False, True, True, True, True, True])
    obs = da.make_observations(values, 1.0, index, mask=mask, qc_ok=qc_ok)
    log_mask = jnp.array([False, False, False, True, False])
    result = analyse(da.Ensemble(members), obs, jax.random.key(0), da.FilterParams("etkf", outlier_threshold=5.0),
                     log_mask=log_mask)
    expected = [da.ASSIMILATED, da.MISSING, da.BAD_QC, da.MISSING, da.OUTSIDE_DOMAIN, da.REJECTED_OUTLIER,
                da.ASSIMILATED, da.INVALID_FOR_TRANSFORM]
    np.testing.assert_array_equal(np.asarray(result.disposition), expected)
    np.testing.assert_array_equal(np.asarray(result.diagnostics.counts), np.bincount(expected, minlength=6))
    assert set(da.DISPOSITION_NAMES) == set(range(da.NUM_DISPOSITIONS))
    assert np.all(np.isfinite(np.asarray(result.ensemble.members)))


def test_non_finite_operator_output_is_outside_domain():
    members = jax.random.normal(jax.random.key(5), (6, 3))

    def operator(x, obs):
        return jnp.stack([x[0], jnp.log(-jnp.abs(x[1]) - 1.0), x[2]])  # the second is always NaN

    obs = da.make_observations(jnp.array([0.1, 0.2, 0.3]), 1.0, jnp.array([0, 1, 2]))
    result = analyse(da.Ensemble(members), obs, jax.random.key(0), da.FilterParams("etkf"), obs_operator=operator)
    np.testing.assert_array_equal(np.asarray(result.disposition), [da.ASSIMILATED, da.OUTSIDE_DOMAIN, da.ASSIMILATED])
    assert np.all(np.isfinite(np.asarray(result.ensemble.members)))


# ---------------------------------------------------------------- localization

def test_gaspari_cohn_shape_and_dapper_radius_convention():
    c = 2.0
    taper = np.asarray(da.gaspari_cohn(jnp.array([0.0, c, 2 * c, 3 * c]), c))
    np.testing.assert_allclose(taper, [1.0, 0.20833333, 0.0, 0.0], atol=1e-6)
    # continuous at c (the two branches meet)
    np.testing.assert_allclose(da.gaspari_cohn(jnp.array([c - 1e-4, c + 1e-4]), c)[0],
                               da.gaspari_cohn(jnp.array([c + 1e-4]), c)[0], atol=1e-4)
    # DAPPER: c = 1.82 loc_rad, and the taper at loc_rad is DAPPER's value (dist2coeff, "GC")
    loc_rad = 4.0
    z = 1 / 1.82
    dapper_value = 1 + z**2 * (-(z**3) / 4 + z**2 / 2) + z**3 * (5 / 8) - z**2 * (5 / 3)
    ours = float(da.gaspari_cohn(jnp.array(loc_rad), da.half_width(loc_rad, "dapper")))
    np.testing.assert_allclose(ours, dapper_value, rtol=1e-6)
    assert abs(ours - np.exp(-0.5)) < 0.03  # "about exp(-1/2) at loc_rad"
    with pytest.raises(ValueError, match="valid conventions"):
        da.half_width(1.0, "gaussian")


def test_localization_1d_matches_dense_distances_on_a_circle():
    n = 40
    loc = da.localization_1d(np.arange(n), np.arange(n), 4.0, "dapper", period=n)
    d = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    dense = np.asarray(da.gaspari_cohn(jnp.asarray(np.minimum(d, n - d), jnp.float32), 1.82 * 4.0))
    rebuilt = np.zeros((n, n))
    np.add.at(rebuilt, (np.repeat(np.arange(n), loc.obs_slot.shape[1]), np.asarray(loc.obs_slot).ravel()),
              np.asarray(loc.taper).ravel())
    np.testing.assert_allclose(rebuilt, dense, atol=1e-6)
    with pytest.raises(ValueError, match="wraps around"):
        da.localization_1d(np.arange(n), np.arange(n), 10.0, "dapper", period=n)


# ---------------------------------------------------------------- inflation

def test_adaptive_inflation_finds_the_inflation_the_innovations_need():
    """Innovations drawn with variance 2 sigma_p^2 + sigma_o^2: lambda must converge to about 2."""
    m = 4000
    prior_var = jnp.full(m, 1.0)
    obs_var = jnp.full(m, 1.0)
    innovation = jnp.sqrt(3.0) * jax.random.normal(jax.random.key(6), (m,))
    state = da.adaptive_inflation_update(da.initial_inflation_state(), prior_var, obs_var, innovation,
                                         jnp.ones(m, bool), 0.01, (1.0, 100.0))
    # sd of the estimate from m innovations ~ sqrt(2/m) * 3 / 1 = 0.07: 4 sd tolerance
    assert abs(float(state.mean) - 2.0) < 0.3, state
    assert float(state.sd) < 0.6
    # inactive observations change nothing
    same = da.adaptive_inflation_update(da.initial_inflation_state(), prior_var, obs_var, innovation,
                                        jnp.zeros(m, bool), 0.01, (1.0, 100.0))
    assert float(same.mean) == 1.0 and float(same.sd) == pytest.approx(0.6)


def test_posterior_inflation_inflates_the_analysis_anomalies():
    with jax.enable_x64(True):
        members = jax.random.normal(jax.random.key(8), (9, 4))
        obs = da.make_observations(jnp.array([0.3, -0.2]), 0.8, jnp.array([0, 3]))
        plain = analyse(da.Ensemble(members), obs, jax.random.key(0), da.FilterParams("etkf"))
        post = analyse(da.Ensemble(members), obs, jax.random.key(0), da.FilterParams("etkf", 1.1, "posterior"))
        np.testing.assert_allclose(np.asarray(post.ensemble.members),
                                   np.asarray(da.inflate(plain.ensemble.members, 1.1)), **TIGHT)


def test_random_rotation_keeps_mean_and_covariance():
    with jax.enable_x64(True):
        members = jax.random.normal(jax.random.key(9), (10, 4))
        rotated = np.asarray(da.random_rotation(members, jax.random.key(1)))
    members = np.asarray(members)
    np.testing.assert_allclose(rotated.mean(axis=0), members.mean(axis=0), **TIGHT)
    np.testing.assert_allclose(np.cov(rotated, rowvar=False), np.cov(members, rowvar=False), **TIGHT)
    assert not np.allclose(rotated, members)


def test_window_perturbations_are_standard_normal_and_reproducible():
    """The EnKF's observation perturbations for a window (two draws per threefry evaluation): the same key
    gives the same draws, another key others; mean, sd and lag-one correlation within 5 sampling sd of
    N(0, 1), for 10^6 draws; float64 goes to jax.random.normal."""
    from assimilation import standard_normal
    shape = (625, 40, 40)
    draws = np.asarray(standard_normal(jax.random.key(5), shape))
    again = np.asarray(jax.jit(standard_normal, static_argnums=(1, 2))(jax.random.key(5), shape, jnp.float32))
    other = np.asarray(standard_normal(jax.random.key(6), shape))
    np.testing.assert_array_equal(draws, again)
    assert draws.dtype == np.float32 and draws.shape == shape and np.all(np.isfinite(draws))
    assert np.mean(draws == other) < 1e-3
    flat = draws.ravel().astype(np.float64)
    sd_of_mean = 1.0 / np.sqrt(flat.size)
    assert abs(flat.mean()) < 5 * sd_of_mean
    assert abs(flat.std() - 1.0) < 5 * np.sqrt(0.5) * sd_of_mean
    assert abs(np.mean(flat[1:] * flat[:-1])) < 5 * sd_of_mean
    half = flat.size // 2  # the two words of one threefry evaluation
    assert abs(np.mean(flat[:half] * flat[half:])) < 5 * np.sqrt(2.0) * sd_of_mean
    with jax.enable_x64(True):
        wide = standard_normal(jax.random.key(5), (3, 4), jnp.float64)
        np.testing.assert_array_equal(np.asarray(wide), np.asarray(jax.random.normal(jax.random.key(5), (3, 4),
                                                                                      jnp.float64)))


def test_lorenz96_tendency_equals_the_rolled_formula():
    """The sliced periodic extension gives the numbers of the textbook three-roll formula, bit for bit when
    both are compiled (eager op-by-op evaluation may round differently from a fused multiply-add)."""
    from assimilation.testbeds import lorenz96_tendency

    @jax.jit
    def rolled(x):
        return (jnp.roll(x, -1, -1) - jnp.roll(x, 2, -1)) * jnp.roll(x, 1, -1) - x + 8.0

    for n in (2, 3, 5, 40):
        x = jax.random.normal(jax.random.key(n), (7, n))
        np.testing.assert_array_equal(np.asarray(jax.jit(lorenz96_tendency)(x)), np.asarray(rolled(x)))


# ---------------------------------------------------------------- registry and parameters

def test_unknown_names_raise_and_list_valid_ones():
    with pytest.raises(ValueError, match=r"valid methods: \('etkf', 'enkf', 'letkf', 'ensrf'\)"):
        da.FilterParams(method="enkf-n")
    with pytest.raises(ValueError, match="valid methods"):
        da.get_analysis_kernel("sqrt")
    with pytest.raises(ValueError, match="valid: \\('prior', 'posterior'\\)"):
        da.FilterParams(inflation_position="before")
    with pytest.raises(ValueError, match="rtps_alpha"):
        da.FilterParams(rtps_alpha=1.5)
    with pytest.raises(ValueError, match="letkf needs a Localization"):
        da.letkf_update(jnp.ones((4, 2)), jnp.ones((4, 1)), jnp.ones(1), jnp.ones(1), None, None)
    with pytest.raises(ValueError, match="num_slots"):
        da.make_observations(jnp.ones(3), 1.0, jnp.arange(3), num_slots=2)


# ---------------------------------------------------------------- inflation mask (augmented parameters)

@pytest.mark.parametrize("method", ["etkf", "ensrf", "enkf"])
@pytest.mark.parametrize("position", ["prior", "posterior"])
def test_inflation_mask_leaves_the_masked_elements_uninflated(method, position):
    """Element 2 is a copy of element 0. The update is linear in the prior anomalies, so with element 2 left
    out of prior inflation its increments (mean and anomalies) are element 0's divided by the factor; left out
    of posterior inflation, its analysis anomalies are. Without a mask the two stay equal."""
    rng = np.random.default_rng(3)
    E = jnp.asarray(exact_ensemble(rng, np.array([1.0, 2.0]), np.array([[1.0, 0.3], [0.3, 0.5]]), 20))
    E = jnp.concatenate([E, E[:, :1]], axis=1)
    obs = da.make_observations(jnp.array([1.8]), 0.5, jnp.array([0]))
    factor = 1.3
    params = da.FilterParams(method=method, inflation_factor=factor, inflation_position=position)
    key = jax.random.PRNGKey(0)
    masked = da.analysis(da.Ensemble(E), obs, key, params, inflation_mask=jnp.array([True, True, False]))
    plain = da.analysis(da.Ensemble(E), obs, key, params)
    Ea, Ep = np.asarray(masked.ensemble.members), np.asarray(plain.ensemble.members)
    np.testing.assert_allclose(Ep[:, 2], Ep[:, 0], rtol=1e-6)
    np.testing.assert_allclose(Ea[:, :2], Ep[:, :2], rtol=1e-6)          # the others as without a mask
    if position == "prior":
        m = float(E[:, 0].mean())
        np.testing.assert_allclose(Ea[:, 2] - m, (Ea[:, 0] - m) / factor, rtol=1e-5, atol=1e-6)
    else:
        anomaly = lambda x: x - x.mean()  # noqa: E731
        np.testing.assert_allclose(anomaly(Ea[:, 2]), anomaly(Ea[:, 0]) / factor, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(Ea[:, 2].mean(), Ea[:, 0].mean(), rtol=1e-6)


# ---------------------------------------------------------------- variable localization (update_weight)

@pytest.mark.parametrize("method", ["etkf", "ensrf"])
def test_update_weight_is_the_kalman_gain_with_tapered_covariances(method):
    """Linear-Gaussian, exact ensemble, no inflation: elements 0 and 1 observed, element 2 not, with weight
    0.4. The reference is the Kalman update whose covariance has element 2's covariances with the others
    tapered by 0.4 (Kang et al. 2011): element 2's mean moves by 0.4 of its untapered increment and the
    observed elements as without a weight. Deterministic square-root filters are exact here: float64 round-off."""
    rng = np.random.default_rng(5)
    mean = np.array([1.0, 2.0, 0.5])
    cov = np.array([[1.0, 0.3, 0.6], [0.3, 0.5, -0.2], [0.6, -0.2, 0.8]])
    taper = np.ones((3, 3))
    taper[2, :2] = taper[:2, 2] = 0.4
    H, R, y = np.eye(3)[:2], np.diag([0.25, 0.09]), np.array([1.8, 1.6])
    ref_mean, _ = kalman(mean, cov * taper, H, y, R)
    with jax.enable_x64(True):
        E = jnp.asarray(exact_ensemble(rng, mean, cov, 30))
        obs = da.make_observations(jnp.asarray(y), jnp.array([0.5, 0.3]), jnp.array([0, 1]))
        params = da.FilterParams(method=method, inflation_factor=1.0)
        result = analyse(da.Ensemble(E), obs, jax.random.PRNGKey(0), params,
                         update_weight=jnp.array([1.0, 1.0, 0.4]))
        plain = analyse(da.Ensemble(E), obs, jax.random.PRNGKey(0), params)
    Ea, Ep = np.asarray(result.ensemble.members), np.asarray(plain.ensemble.members)
    np.testing.assert_allclose(Ea.mean(axis=0), ref_mean, **TIGHT)
    np.testing.assert_allclose(Ea[:, :2], Ep[:, :2], **TIGHT)
    E = np.asarray(E)
    np.testing.assert_allclose(Ea[:, 2] - E[:, 2], 0.4 * (Ep[:, 2] - E[:, 2]), **TIGHT)


def test_update_weight_zero_leaves_the_forecast_as_it_is_inflation_included():
    """Weight 0: the element's members come out as they went in (to float32 round-off of the log transform
    and back, rtol 1e-6), though the prior is inflated (x1.3) and the element is correlated with the observed
    one; the observed element is analysed as without a weight. Log space as in the twin."""
    rng = np.random.default_rng(6)
    E = jnp.asarray(np.exp(exact_ensemble(rng, np.array([0.0, 1.0]), np.array([[0.2, 0.15], [0.15, 0.3]]), 24)),
                    jnp.float32)
    obs = da.make_observations(jnp.array([1.8]), 0.3, jnp.array([0]))
    params = da.FilterParams(method="etkf", inflation_factor=1.3)
    log_mask = jnp.array([True, True])
    out = analyse(da.Ensemble(E), obs, jax.random.PRNGKey(0), params, log_mask=log_mask,
                  update_weight=jnp.array([1.0, 0.0]))
    plain = analyse(da.Ensemble(E), obs, jax.random.PRNGKey(0), params, log_mask=log_mask)
    np.testing.assert_allclose(np.asarray(out.ensemble.members[:, 1]), np.asarray(E[:, 1]), rtol=1e-6)
    assert not np.allclose(np.asarray(plain.ensemble.members[:, 1]), np.asarray(E[:, 1]), rtol=1e-2)
    np.testing.assert_allclose(np.asarray(out.ensemble.members[:, 0]), np.asarray(plain.ensemble.members[:, 0]),
                               rtol=1e-6)

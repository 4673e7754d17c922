"""Inflation: multiplicative prior, relaxation to prior spread, adaptive (Anderson 2009); random rotation.

All functions act on anomalies in the analysis (possibly log-transformed) space.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from assimilation.types import InflationState

_NEWTON_ITERATIONS = 6


def inflate(members: Array, factor: Array | float) -> Array:
    """Multiplicative inflation of the anomalies about the ensemble mean (mean preserved).

    Args:
        members: (N, n) ensemble.
        factor: () anomaly factor (sqrt of the variance inflation).

    Returns:
        (N, n) inflated ensemble.
    """
    mean = members.mean(axis=0)
    return mean + factor * (members - mean)


def relax_to_prior_spread(prior: Array, analysis: Array, alpha: float) -> Array:
    """RTPS: sigma_a <- alpha sigma_b + (1 - alpha) sigma_a, element-wise (Whitaker and Hamill 2012, eq. 3).

    Args:
        prior: (N, n) prior ensemble (as used in the analysis).
        analysis: (N, n) analysis ensemble.
        alpha: relaxation coefficient in [0, 1].

    Returns:
        (N, n) analysis ensemble with relaxed anomalies, same mean.
    """
    sd_b = prior.std(axis=0)
    mean_a = analysis.mean(axis=0)
    anomalies = analysis - mean_a
    sd_a = anomalies.std(axis=0)
    ratio = jnp.where(sd_a > 0, (alpha * sd_b + (1.0 - alpha) * sd_a) / jnp.where(sd_a > 0, sd_a, 1.0), 1.0)
    return mean_a + anomalies * ratio


def _basis_beginning_with_ones(num_members: int) -> np.ndarray:
    """(N, N) orthonormal basis whose first column is ones / sqrt(N) (a Householder reflection)."""
    v = np.ones(num_members) / np.sqrt(num_members)
    v[0] -= 1.0
    norm = v @ v
    return np.eye(num_members) - 2.0 * np.outer(v, v) / norm if norm > 0 else np.eye(num_members)


def random_rotation(members: Array, key: Array) -> Array:
    """Random mean-preserving orthogonal rotation of the anomalies (Sakov and Oke 2008b; DAPPER ``rot``).

    The anomalies keep their mean (zero) and sample covariance; the rotation spreads non-Gaussian features
    over the members, which a symmetric square-root filter otherwise accumulates.

    Args:
        members: (N, n) ensemble.
        key: PRNG key.

    Returns:
        (N, n) rotated ensemble, same mean and covariance.
    """
    num_members = members.shape[0]
    V = jnp.asarray(_basis_beginning_with_ones(num_members), members.dtype)
    Q, R = jnp.linalg.qr(jax.random.normal(key, (num_members - 1, num_members - 1), members.dtype))
    Q = Q * jnp.sign(jnp.diag(R))[None, :]  # Haar-distributed (Mezzadri 2007)
    rot = V @ jax.scipy.linalg.block_diag(jnp.ones((1, 1), members.dtype), Q) @ V.T
    mean = members.mean(axis=0)
    return mean + rot @ (members - mean)


def damp_inflation(state: InflationState, damping: float) -> InflationState:
    """Relax lambda toward 1 between cycles: lambda <- 1 + damping (lambda - 1) (Anderson 2009, sec. 4b)."""
    return InflationState(1.0 + damping * (state.mean - 1.0), state.sd)


def adaptive_inflation_update(state: InflationState, prior_obs_var: Array, obs_error_var: Array,
                              innovation: Array, active: Array, sd_lower_bound: float,
                              bounds: tuple[float, float]) -> InflationState:
    """Bayesian update of a spatially uniform variance inflation lambda, one observation at a time.

    Anderson (2009) with the localization/correlation factor gamma = 1 (spatially uniform, as his 2007
    algorithm): the prior of lambda is N(mean, sd^2); the likelihood of each innovation d is
    N(0, lambda sigma_p^2 + sigma_o^2). The posterior mode is found by Newton's method (instead of his
    closed-form cubic root), the sd by his density-ratio rule, never below ``sd_lower_bound``.

    Args:
        state: lambda before this cycle (already damped).
        prior_obs_var: (m,) ensemble variance of the predicted observations, not inflated.
        obs_error_var: (m,) observation error variances.
        innovation: (m,) y - mean H(x) (any value where not active).
        active: (m,) bool, observations used (assimilated ones).
        sd_lower_bound: floor of the sd of lambda.
        bounds: (lower, upper) bounds of lambda.

    Returns:
        The updated :class:`InflationState`.
    """
    low, high = bounds

    def log_post(lam, lam0, sd, a, b, d2):
        theta2 = a * lam + b
        return -0.5 * (lam - lam0) ** 2 / sd**2 - 0.5 * jnp.log(theta2) - 0.5 * d2 / theta2

    def step(carry, inputs):
        lam0, sd = carry
        a, b, d, act = inputs
        d2 = d**2
        lam = lam0
        for _ in range(_NEWTON_ITERATIONS):
            theta2 = a * lam + b
            grad = -(lam - lam0) / sd**2 - 0.5 * a / theta2 + 0.5 * d2 * a / theta2**2
            hess = -1.0 / sd**2 + 0.5 * a**2 / theta2**2 - d2 * a**2 / theta2**3
            lam = jnp.clip(lam - grad / jnp.minimum(hess, -1e-12), low, high)
        ratio = jnp.exp(log_post(lam + sd, lam0, sd, a, b, d2) - log_post(lam, lam0, sd, a, b, d2))
        new_sd = jnp.sqrt(-(sd**2) / (2.0 * jnp.log(jnp.clip(ratio, 1e-30, 1.0 - 1e-7))))
        new_sd = jnp.where(jnp.isfinite(new_sd), jnp.clip(new_sd, sd_lower_bound, sd), sd)
        new_sd = jnp.where(sd <= sd_lower_bound, sd, new_sd)
        ok = act & jnp.isfinite(lam) & (a > 0)
        return (jnp.where(ok, lam, lam0), jnp.where(ok, new_sd, sd)), None

    (mean, sd), _ = jax.lax.scan(step, (state.mean, state.sd),
                                 (prior_obs_var, obs_error_var, jnp.where(active, innovation, 0.0), active))
    return InflationState(mean, sd)

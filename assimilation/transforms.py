"""Log transform of positive state variables and their observations (lognormal moments).

The analysis of a log-transformed element is done on ``z = log x`` and returned as ``exp(z)``, so nothing
negative leaves the analysis. An observation of such an element (``log_mask[state_index]``) is converted by
matching the first two moments of a lognormal: a value ``y`` with error sd ``s`` becomes, in log space,

    sigma^2 = log(1 + (s / y)^2),    y_log = log(y) - sigma^2 / 2,    r_log = sigma,

so that exp(N(y_log, sigma^2)) has mean ``y`` and standard deviation ``s`` exactly. Values ``y <= 0`` cannot
be converted and get disposition ``INVALID_FOR_TRANSFORM``. The predicted observation is ``log(H(x))``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def lognormal_obs(value: Array, error_sd: Array) -> tuple[Array, Array]:
    """Observation mean and error sd in log space by lognormal moment matching.

    Args:
        value: (m,) observed values, > 0 (others give NaN).
        error_sd: (m,) error standard deviations in the same units.

    Returns:
        (y_log (m,), r_log (m,)): mean and standard deviation of the log-space observation.
    """
    positive = value > 0
    safe = jnp.where(positive, value, 1.0)
    var = jnp.log1p((error_sd / safe) ** 2)
    y_log = jnp.where(positive, jnp.log(safe) - 0.5 * var, jnp.nan)
    return y_log, jnp.sqrt(var)


def to_transformed(members: Array, log_mask: Array | None, floor: float) -> Array:
    """Physical state -> analysis space: log of the masked elements (clipped at ``floor``).

    Args:
        members: (N, n) physical states.
        log_mask: (n,) bool, True for log-transformed elements, or None for no transform.
        floor: values below it are raised to it before the log.
    """
    if log_mask is None:
        return members
    return jnp.where(log_mask, jnp.log(jnp.maximum(members, floor)), members)


def from_transformed(members: Array, log_mask: Array | None) -> Array:
    """Analysis space -> physical state: exp of the masked elements (strictly positive)."""
    if log_mask is None:
        return members
    return jnp.where(log_mask, jnp.exp(jnp.where(log_mask, members, 0.0)), members)

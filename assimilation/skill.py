"""Skill against a known truth (twin experiments) and divergence detection."""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array


class Skill(NamedTuple):
    """Time-mean scores after burn-in, as DAPPER's ``rmse.a`` and ``spread.a``.

    Attributes:
        rmse: () time mean of the analysis RMSE sqrt(mean_i (mean_a - truth)^2).
        spread: () time mean of the analysis spread sqrt(mean_i var_a).
        ratio: () rmse / spread.
        diverged: () bool, non-finite values, rmse / spread above ``ratio_limit``, or rmse above
            ``rmse_limit``.
    """

    rmse: Array
    spread: Array
    ratio: Array
    diverged: Array


def assess_skill(analysis_mean: Array, analysis_spread: Array, truth: Array, burn_in: int = 0,
                 ratio_limit: float = 3.0, rmse_limit: float = jnp.inf) -> Skill:
    """Time-mean analysis RMSE and spread, and whether the filter diverged.

    A diverged filter is reported, never averaged away: callers (tests, benchmarks) check ``diverged``
    for every seed before taking a median.

    Args:
        analysis_mean: (..., T, n) analysis means.
        analysis_spread: (..., T, n) analysis standard deviations.
        truth: (..., T, n) true states at the same times.
        burn_in: number of leading cycles excluded.
        ratio_limit: rmse / spread above this means divergence (the ensemble no longer describes its error).
        rmse_limit: rmse above this means divergence (e.g. the climatological spread).

    Returns:
        :class:`Skill` with leading batch dims.
    """
    err = analysis_mean[..., burn_in:, :] - truth[..., burn_in:, :]
    rmse_t = jnp.sqrt(jnp.mean(err**2, axis=-1))
    spread_t = jnp.sqrt(jnp.mean(analysis_spread[..., burn_in:, :] ** 2, axis=-1))
    rmse = jnp.mean(rmse_t, axis=-1)
    spread = jnp.mean(spread_t, axis=-1)
    ratio = rmse / spread
    finite = jnp.all(jnp.isfinite(rmse_t), axis=-1) & jnp.all(jnp.isfinite(spread_t), axis=-1)
    diverged = ~finite | ~(ratio <= ratio_limit) | ~(rmse <= rmse_limit)
    return Skill(rmse, spread, ratio, diverged)

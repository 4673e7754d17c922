"""The cycling driver: ``lax.scan`` over forecast-analysis cycles, compiled once per window."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
from jax import Array

from assimilation.analysis import ObsOperator, analysis
from assimilation.types import (
    Diagnostics,
    Ensemble,
    FilterParams,
    InflationState,
    Localization,
    Observations,
    initial_inflation_state,
)

ForecastFn = Callable[[Array, Any, Array], Array]
"""forecast(members (N, n), forcing of this cycle (any pytree, or None), key) -> (N, n) at the next
analysis time. Written for the whole ensemble (vmap a one-member model inside it)."""


class CycleResult(NamedTuple):
    """Output of :func:`run_cycles` over T cycles.

    Attributes:
        ensemble: the ensemble after the last analysis.
        inflation_state: the adaptive inflation state after the last cycle.
        analysis_mean: (T, n) analysis ensemble mean, physical units.
        analysis_spread: (T, n) analysis ensemble standard deviation, physical units.
        diagnostics: :class:`Diagnostics` with a leading (T,) axis.
        disposition: (T, m) disposition code of every observation slot.
    """

    ensemble: Ensemble
    inflation_state: InflationState
    analysis_mean: Array
    analysis_spread: Array
    diagnostics: Diagnostics
    disposition: Array


def cycle_scan(forecast: ForecastFn, ensemble: Ensemble, observations: Observations, key: Array,
               params: FilterParams = FilterParams(), *, forcing: Any = None,
               inflation_state: InflationState | None = None, localization: Localization | None = None,
               log_mask: Array | None = None, obs_operator: ObsOperator | None = None) -> CycleResult:
    """Forecast then analyse, for each of the T cycles in ``observations`` (not jitted; see run_cycles).

    Cycle t: split the cycle's key into a forecast key and an analysis key, ``forecast`` the ensemble to
    the observation time, then :func:`analysis` with the cycle's observations (all masked = forecast only).

    Args:
        forecast: the model, see ``ForecastFn``.
        ensemble: initial ensemble, members (N, n).
        observations: :class:`Observations` with a leading (T,) axis on every field.
        key: PRNG key, split into one key per cycle.
        params: filter settings (static).
        forcing: optional pytree with a leading (T,) axis, passed to ``forecast`` one cycle at a time.
        inflation_state: initial adaptive inflation state.
        localization: local observation sets (LETKF).
        log_mask: (n,) bool, elements analysed in log space.
        obs_operator: optional forward operator (see ``analysis``).

    Returns:
        :class:`CycleResult`.
    """
    if inflation_state is None:
        inflation_state = initial_inflation_state()
    num_cycles = observations.value.shape[0]
    keys = jax.random.split(key, num_cycles)
    # The stochastic EnKF's observation perturbations for the whole window in one draw: drawing them cycle by
    # cycle inside the scan cost several times more.
    perturbations = None
    if params.method == "enkf":
        shape = (num_cycles, ensemble.members.shape[0], observations.value.shape[-1])
        perturbations = standard_normal(jax.random.fold_in(key, 0x5EED), shape, ensemble.members.dtype)

    def step(carry, inputs):
        members, infl = carry
        obs_t, forcing_t, key_t, eps_t = inputs
        key_f, key_a = jax.random.split(key_t)
        prior = forecast(members, forcing_t, key_f)
        result = analysis(Ensemble(prior), obs_t, key_a, params, infl, localization, log_mask, obs_operator,
                          obs_perturbations=eps_t)
        post = result.ensemble.members
        out = (post.mean(axis=0), post.std(axis=0, ddof=1), result.diagnostics, result.disposition)
        return (post, result.inflation_state), out

    (members, infl), (mean, spread, diagnostics, disposition) = jax.lax.scan(
        step, (ensemble.members, inflation_state), (observations, forcing, keys, perturbations))
    return CycleResult(Ensemble(members), infl, mean, spread, diagnostics, disposition)


def standard_normal(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """N(0, 1) draws of ``shape``, a function of ``key``, at half the cost of ``jax.random.normal`` in float32.

    ``jax.random.normal`` with JAX's default (partitionable) threefry evaluates the threefry2x32 hash once
    per 32-bit draw and keeps one of its two output words; here every evaluation gives two draws (the
    hash of counters i and i + n/2), then the same uniform-to-normal map as ``jax.random.normal``
    (uniform on (-1, 1) from the mantissa bits, sqrt(2) erfinv). On CPU the hash is most of the cost of
    a stochastic EnKF cycle. Other dtypes, and draws past 2^32 counters, go to ``jax.random.normal``.

    Args:
        key: PRNG key (any implementation; two words of threefry key are drawn from it).
        shape: output shape.
        dtype: float dtype.

    Returns:
        ``shape`` array of standard normal draws.
    """
    size = math.prod(shape)
    if jnp.dtype(dtype) != jnp.float32 or size >= 2**32:
        return jax.random.normal(key, shape, dtype)
    keypair = jax.random.bits(key, (2,), jnp.uint32)
    bits = jax.extend.random.threefry_2x32(keypair, jnp.arange(size, dtype=jnp.uint32))
    nmant = jnp.finfo(jnp.float32).nmant
    float_bits = jax.lax.shift_right_logical(bits, jnp.uint32(32 - nmant)) | jnp.uint32(0x3F800000)  # 1.0f
    unit = jax.lax.bitcast_convert_type(float_bits, jnp.float32) - 1.0                      # [0, 1)
    low = jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0))
    uniform = jnp.maximum(low, unit * (1.0 - low) + low)                                  # (-1, 1)
    return (jnp.sqrt(jnp.float32(2.0)) * jax.lax.erf_inv(uniform)).reshape(shape)


@functools.partial(jax.jit, static_argnames=("forecast", "params", "obs_operator"))
def run_cycles(forecast: ForecastFn, ensemble: Ensemble, observations: Observations, key: Array,
               params: FilterParams = FilterParams(), *, forcing: Any = None,
               inflation_state: InflationState | None = None, localization: Localization | None = None,
               log_mask: Array | None = None, obs_operator: ObsOperator | None = None) -> CycleResult:
    """:func:`cycle_scan` compiled once per window (``forecast``, ``params``, ``obs_operator`` static).

    Pass the same ``forecast`` function object every window so that the compiled code is reused.
    """
    return cycle_scan(forecast, ensemble, observations, key, params, forcing=forcing,
                      inflation_state=inflation_state, localization=localization, log_mask=log_mask,
                      obs_operator=obs_operator)


def stack_observations(per_cycle: list[Observations]) -> Observations:
    """Stack per-cycle :class:`Observations` (same number of slots) along a new leading time axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_cycle)


def make_observations(value, error_sd, state_index, mask=None, qc_ok=None, num_slots: int | None = None
                      ) -> Observations:
    """Build :class:`Observations`, padded with masked slots to ``num_slots`` along the last axis.

    Args:
        value: (..., k) observed values.
        error_sd: (..., k) or scalar error sd.
        state_index: (..., k) or (k,) int index into the flattened state.
        mask: (..., k) bool, default: finite values.
        qc_ok: (..., k) bool, default all True.
        num_slots: pad to this many slots (default k).

    Raises:
        ValueError: ``num_slots`` smaller than the number of observations.
    """
    value = jnp.asarray(value)
    shape = value.shape
    error_sd = jnp.broadcast_to(jnp.asarray(error_sd, value.dtype), shape)
    state_index = jnp.broadcast_to(jnp.asarray(state_index, jnp.int32), shape)
    mask = jnp.isfinite(value) if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool), shape)
    qc_ok = jnp.ones(shape, bool) if qc_ok is None else jnp.broadcast_to(jnp.asarray(qc_ok, bool), shape)
    k = shape[-1]
    num_slots = k if num_slots is None else num_slots
    if num_slots < k:
        raise ValueError(f"num_slots={num_slots} is smaller than the {k} observations given")
    pad = [(0, 0)] * (len(shape) - 1) + [(0, num_slots - k)]
    return Observations(jnp.pad(value, pad, constant_values=jnp.nan), jnp.pad(error_sd, pad, constant_values=1.0),
                        jnp.pad(state_index, pad), jnp.pad(mask, pad), jnp.pad(qc_ok, pad))

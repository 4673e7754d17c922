"""The cycle engine: a window of forecast-analysis cycles as one ``lax.scan`` under one ``jit``.

Like ``assimilation.run_cycles``, but it records what the twin's products need on every cycle: the forecast
and analysis ensemble means, spreads and 5/50/95 % quantiles of every state element, and the forecast and
analysis values in observation space. The analysis itself is ``assimilation.analysis``. With alerts, each
cycle also runs its analysis ensemble ahead and records the probability of each alert's event over its horizon
(``AlertSpec``).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from assimilation import Diagnostics, Ensemble, FilterParams, InflationState, Observations, analysis
from twin.localization import LocalTaper, local_observations

QUANTILES = (0.05, 0.5, 0.95)


class WindowOutputs(NamedTuple):
    """Per-cycle records of a window of T cycles (n state elements, m observation slots)."""
    forecast_mean: jax.Array      # (T, n)
    forecast_sd: jax.Array        # (T, n)
    analysis_mean: jax.Array      # (T, n)
    analysis_sd: jax.Array        # (T, n)
    analysis_quantiles: jax.Array  # (T, 3, n) at QUANTILES
    obs_forecast: jax.Array       # (T, m) forecast ensemble mean at each observation
    obs_forecast_sd: jax.Array    # (T, m)
    obs_analysis: jax.Array       # (T, m) analysis ensemble mean at each observation
    diagnostics: Diagnostics      # fields with a (T,) axis
    disposition: jax.Array        # (T, m)
    # (T, A) probability of each AlertSpec's event within its horizon, issued from the cycle's analysis;
    # (T, 0) without alerts. None only in records not made by run_window.
    alert_probability: jax.Array | None = None


class AlertSpec(NamedTuple):
    """One alert as the engine computes it (hashable: the alerts are a static argument of ``run_window``).

    The probability is ``twin.alerts.window_probability``'s: per member, the largest over lead days
    1..horizon_days of the probability that an observation (member value + N(0, error_sd^2)) is beyond
    the threshold, averaged over members; with ``error_sd == 0``, the fraction of members strictly beyond
    on some lead day.
    """
    state_index: int      # element of the state vector
    threshold: float      # in the variable's canonical unit
    sign: int             # +1: event when above the threshold, -1: when below
    error_sd: float       # observation error sd, same unit (>= 0)
    horizon_days: int     # >= 1


def alert_window_probability(lead_members: jax.Array, alerts: tuple[AlertSpec, ...]) -> jax.Array:
    """Probability of each alert's event within its horizon, from a forecast ensemble.

    Args:
        lead_members: (H, N, n) forecast members, row ``k`` valid ``k + 1`` days after the issue time,
            with H >= every alert's horizon_days.
        alerts: the alerts.

    Returns:
        (A,) probabilities in [0, 1]; NaN where a member used is NaN.
    """
    out = []
    for a in alerts:
        x = lead_members[: a.horizon_days, :, a.state_index]            # (h, N)
        excess = a.sign * (x - a.threshold)                               # > 0: beyond
        if a.error_sd > 0:
            q = jax.scipy.special.ndtr(excess / a.error_sd)
        else:
            q = jnp.where(jnp.isnan(x), jnp.nan, (excess > 0).astype(x.dtype))
        out.append(jnp.mean(jnp.max(q, axis=0)))
    return jnp.stack(out) if out else jnp.zeros((0,), lead_members.dtype)


def sort_members(members: jax.Array) -> jax.Array:
    """``members`` (N, ...) sorted along the member axis by a bitonic network (N padded to a power of two
    with +inf): min/max on reshaped halves, which XLA fuses. On CPU, XLA's comparator sort of a (64, 36)
    ensemble took 230 us, a third of a hindcast cycle; the network takes 23 us. NaN does not order: a
    column holding one comes out scrambled (``ensemble_quantiles`` makes it NaN)."""
    num = members.shape[0]
    size = 1 << max(num - 1, 1).bit_length()
    rest = members.shape[1:]
    a = members
    if size > num:
        a = jnp.concatenate([a, jnp.full((size - num,) + rest, jnp.inf, a.dtype)])
    block = 2
    while block <= size:
        # Merge sorted runs of block/2 into runs of block: compare each element with its mirror in the
        # other half (so no up/down directions are needed), then half-cleaners of distance block/4 .. 1.
        b = a.reshape((size // block, 2, block // 2) + rest)
        lo, hi = b[:, 0], jnp.flip(b[:, 1], axis=1)
        a = jnp.concatenate([jnp.minimum(lo, hi), jnp.flip(jnp.maximum(lo, hi), axis=1)], axis=1)
        a = a.reshape((size,) + rest)
        d = block // 4
        while d >= 1:
            b = a.reshape((size // (2 * d), 2, d) + rest)
            a = jnp.stack([jnp.minimum(b[:, 0], b[:, 1]), jnp.maximum(b[:, 0], b[:, 1])], axis=1)
            a = a.reshape((size,) + rest)
            d //= 2
        block *= 2
    return a[:num]


def ensemble_quantiles(members: jax.Array, quantiles=QUANTILES) -> jax.Array:
    """``jnp.quantile(members, quantiles, axis=0)`` (linear interpolation between order statistics, NaN
    where a member is NaN), through :func:`sort_members`: (len(quantiles), ...)."""
    ordered = sort_members(members)
    out = jnp.stack(_interpolate(lambda k: ordered[k], members.shape[0], quantiles))
    return jnp.where(jnp.isnan(members).any(axis=0), jnp.nan, out)


def _interpolate(order_statistic, num: int, quantiles) -> list:
    """Each quantile by linear interpolation between the order statistics of ``num`` values (``jnp.quantile``'s
    default), from ``order_statistic(k)``, the k-th smallest (0-based), for JAX and NumPy arrays alike."""
    rows = []
    for q in quantiles:
        pos = q * (num - 1)
        lo = int(pos // 1)
        hi = min(lo + 1, num - 1)
        frac = pos - lo
        rows.append(order_statistic(lo) * (1.0 - frac) + order_statistic(hi) * frac if frac else order_statistic(lo))
    return rows


def _sorted_quantiles(members: np.ndarray, quantiles=QUANTILES) -> np.ndarray:
    """:func:`ensemble_quantiles` of ``members`` (T, N, n) for each of the T records, in NumPy: (T, 3, n)."""
    members = np.asarray(members)  # the host call may hand over a jax.Array: its methods would dispatch to XLA
    ordered = np.ascontiguousarray(np.swapaxes(members, 1, 2))              # (T, n, N): rows contiguous
    ordered.sort(axis=2)                                                    # NaN sorts last
    out = np.stack(_interpolate(lambda k: ordered[..., k], members.shape[1], quantiles), axis=1)
    out[np.broadcast_to(np.isnan(ordered[:, None, :, -1]), out.shape)] = np.nan
    return out.astype(members.dtype, copy=False)


def window_quantiles(members: jax.Array, quantiles=QUANTILES) -> jax.Array:
    """:func:`ensemble_quantiles` of every record of ``members`` (T, N, n): (T, len(quantiles), n), the same
    numbers (the same order statistics, interpolated alike).

    Through NumPy's sort on the host (``jax.pure_callback``): it sorts the (T n) rows of N members with
    SIMD sorting networks, 11 us per 64 x 36 record on a 2-core CPU, against about 50 us for the record's
    :func:`sort_members` in XLA inside a cycle.
    """
    shape = jax.ShapeDtypeStruct((members.shape[0], len(quantiles), members.shape[2]), members.dtype)
    return jax.pure_callback(functools.partial(_sorted_quantiles, quantiles=tuple(quantiles)), shape, members,
                             vmap_method="sequential")


class EngineState(NamedTuple):
    """What carries from one window to the next."""
    members: jax.Array            # (N, n)
    inflation: InflationState


def cycle_keys(key: jax.Array, first_cycle, num_cycles: int) -> jax.Array:
    """The random key of each cycle, from its number since the start of the run: the same cycle gets the
    same key whether it runs in a long hindcast window or in a one-day operational cycle."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(first_cycle + jnp.arange(num_cycles))


HOST_QUANTILES_MAX_BYTES = 256 * 2**20  # the most a window's analysis members may take to be sorted after its scan
ALERT_KEY = 0xA1E27  # folded into a cycle's key for its alert forecast; the cycle's own stream is untouched


@functools.partial(jax.jit, static_argnames=("forecast", "params", "alerts", "host_quantiles"))
def run_window(forecast, state: EngineState, observations: Observations, forcing: Any, key: jax.Array,
               params: FilterParams, log_mask: jax.Array, first_cycle: jax.Array | int = 0,
               model_params: Any = None, alerts: tuple[AlertSpec, ...] | None = None,
               forcing_ahead: Any = None, inflation_mask: jax.Array | None = None,
               update_weight: jax.Array | None = None, localization: LocalTaper | None = None,
               host_quantiles: bool | None = None) -> tuple[EngineState, WindowOutputs]:
    """Run T cycles (T = observations.value.shape[0]); ``forcing`` has a leading (T,) axis.

    ``key`` is the run's key and ``first_cycle`` the number of the window's first cycle (see
    :func:`cycle_keys`). ``model_params`` is passed to ``forecast`` as data (the emulator's weights, which
    a refit replaces, or the process model's parameters), so a new value does not recompile the window.

    ``alerts`` (static): after each analysis, the analysis ensemble is run H = max horizon days ahead
    (``forecast``, model error included, with a key folded from the cycle's, so the cycles themselves are
    the same with or without alerts) and ``alert_window_probability`` is recorded in
    ``WindowOutputs.alert_probability`` (T, A). Lead day k of cycle i uses the forcing of cycle i + k:
    ``forcing_ahead`` holds the forcing of the H days after the window, leading (H,) axis (or more); when
    None, the window's last day is repeated (a forecast past the end of the known forcing).

    ``inflation_mask``: (n,) bool, the elements inflation acts on (``analysis``); None: all.
    ``update_weight``: (n,) variable localization, the share of its analysis increment each element takes
    (``analysis``); None: all of it.
    ``localization``: the LETKF's local domains and tapers (``twin.localization``), for ``params.method`` letkf.
    ``host_quantiles`` (static): take the window's analysis quantiles after the scan with NumPy
    (:func:`window_quantiles`) rather than in each cycle; None: on CPU, when the window's analysis members take
    at most ``HOST_QUANTILES_MAX_BYTES``. A program exported with ``jax.export`` (``twin.programs``) cannot
    hold the host call: pass False.
    """
    num_cycles = observations.value.shape[0]
    keys = cycle_keys(key, first_cycle, num_cycles)
    alerts = tuple(alerts or ())
    horizon = max((a.horizon_days for a in alerts), default=0)
    lead_forcing = None  # (T, H, ...) forcing of each cycle's lead days 1..H
    if horizon:
        if forcing_ahead is None:
            forcing_ahead = jax.tree.map(lambda a: jnp.repeat(a[-1:], horizon, axis=0), forcing)
        else:
            forcing_ahead = jax.tree.map(lambda a: a[:horizon], forcing_ahead)
            short = [a.shape[0] for a in jax.tree.leaves(forcing_ahead) if a.shape[0] < horizon]
            if short:
                raise ValueError(f"forcing_ahead covers {min(short)} days; the alerts need {horizon}")
        lead = jnp.arange(num_cycles)[:, None] + jnp.arange(1, horizon + 1)[None, :]
        lead_forcing = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0)[lead], forcing, forcing_ahead)
    perturbations = None  # the stochastic EnKF's, drawn per cycle from the cycle's key
    if params.method == "enkf":
        shape = (state.members.shape[0], observations.value.shape[-1])
        perturbations = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0x5EED), shape,
                                                             state.members.dtype))(keys)

    def alert_probability(post, lead_forcing_t, key_t):
        if not alerts:
            return jnp.zeros((0,), post.dtype)
        lead_keys = jax.random.split(jax.random.fold_in(key_t, ALERT_KEY), horizon)

        def day(x, inputs):
            nxt = forecast(x, inputs[0], inputs[1], model_params)
            return nxt, nxt

        lead_members = jax.lax.scan(day, post, (lead_forcing_t, lead_keys))[1]  # (H, N, n)
        return alert_window_probability(lead_members, alerts)

    split_keys = jax.vmap(jax.random.split)(keys)                     # (T, 2): forecast, analysis
    model_noise = None  # every cycle's model errors, drawn in one batched call when the forecast can
    if hasattr(forecast, "with_noise"):
        model_noise = jax.vmap(lambda k: forecast.draw_noise(state.members, k))(split_keys[:, 0])

    # On CPU the quantiles are taken after the scan, from every cycle's analysis members at once (see
    # window_quantiles); in the scan they were a sixth of a hindcast cycle. The window then holds every
    # cycle's members (3.4 MB for a year of 64 x 36): past HOST_QUANTILES_MAX_BYTES, the scan sorts them.
    record_bytes = num_cycles * state.members.size * state.members.dtype.itemsize
    quantiles_after = host_quantiles if host_quantiles is not None else (
        jax.default_backend() == "cpu" and record_bytes <= HOST_QUANTILES_MAX_BYTES)

    def cycle(carry: EngineState, inputs):
        obs_t, forcing_t, key_t, keys_t, noise_t, eps_t, lead_forcing_t = inputs
        key_f, key_a = keys_t
        if noise_t is None:
            prior = forecast(carry.members, forcing_t, key_f, model_params)
        else:
            prior = forecast.with_noise(carry.members, forcing_t, noise_t, model_params)
        local = None if localization is None else local_observations(localization, obs_t.state_index)
        result = analysis(Ensemble(prior), obs_t, key_a, params, carry.inflation, local, log_mask,
                          obs_perturbations=eps_t, inflation_mask=inflation_mask, update_weight=update_weight)
        post = result.ensemble.members
        out = WindowOutputs(
            forecast_mean=prior.mean(0), forecast_sd=prior.std(0, ddof=1),
            analysis_mean=post.mean(0), analysis_sd=post.std(0, ddof=1),
            analysis_quantiles=None if quantiles_after else ensemble_quantiles(post),
            obs_forecast=None, obs_forecast_sd=None, obs_analysis=None,
            diagnostics=result.diagnostics, disposition=result.disposition,
            alert_probability=alert_probability(post, lead_forcing_t, key_t))
        return EngineState(post, result.inflation_state), (out, post if quantiles_after else None)

    final, (out, analysed) = jax.lax.scan(cycle, state, (observations, forcing, keys, split_keys, model_noise,
                                                         perturbations, lead_forcing))
    # The observation-space records are the state's records at each slot's element, taken for the whole window
    # after the scan (the same numbers: a column's mean and sd do not depend on which other columns are there).
    idx = jnp.clip(observations.state_index, 0, state.members.shape[1] - 1)
    at_slots = jax.vmap(lambda records, i: records[i])
    return final, out._replace(
        analysis_quantiles=window_quantiles(analysed) if quantiles_after else out.analysis_quantiles,
        obs_forecast=at_slots(out.forecast_mean, idx), obs_forecast_sd=at_slots(out.forecast_sd, idx),
        obs_analysis=at_slots(out.analysis_mean, idx))


@functools.partial(jax.jit, static_argnames=("forecast", "num_days"))
def free_forecast(forecast, members: jax.Array, forcing: Any, key: jax.Array, num_days: int,
                  model_params: Any = None) -> jax.Array:
    """Ensemble run without assimilation; returns the members after each day, (num_days, N, n)."""
    keys = jax.random.split(key, num_days)

    def day(x, inputs):
        forcing_t, key_t = inputs
        nxt = forecast(x, forcing_t, key_t, model_params)
        return nxt, nxt

    return jax.lax.scan(day, members, (forcing, keys))[1]

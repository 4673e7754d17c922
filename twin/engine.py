"""The cycle engine: a window of forecast-analysis cycles as one ``lax.scan`` under one ``jit``.

Like ``assimilation.run_cycles``, but it records what the twin's products need on every cycle: the forecast
and analysis ensemble means, spreads and 5/50/95 % quantiles of every state element, and the forecast and
analysis values in observation space. The analysis itself is ``assimilation.analysis``.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from assimilation import Diagnostics, Ensemble, FilterParams, InflationState, Observations, analysis

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


class EngineState(NamedTuple):
    """What carries from one window to the next."""
    members: jax.Array            # (N, n)
    inflation: InflationState


def cycle_keys(key: jax.Array, first_cycle, num_cycles: int) -> jax.Array:
    """The random key of each cycle, from its number since the start of the run: the same cycle gets the
    same key whether it runs in a long hindcast window or in a one-day operational cycle."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(first_cycle + jnp.arange(num_cycles))


@functools.partial(jax.jit, static_argnames=("forecast", "params"))
def run_window(forecast, state: EngineState, observations: Observations, forcing: Any, key: jax.Array,
               params: FilterParams, log_mask: jax.Array, first_cycle: jax.Array | int = 0,
               model_params: Any = None) -> tuple[EngineState, WindowOutputs]:
    """Run T cycles (T = observations.value.shape[0]); ``forcing`` has a leading (T,) axis.

    ``key`` is the run's key and ``first_cycle`` the number of the window's first cycle (see
    :func:`cycle_keys`). ``model_params`` is passed to ``forecast`` as data (the emulator's weights, which
    a refit replaces, or the process model's parameters), so a new value does not recompile the window.
    """
    num_cycles = observations.value.shape[0]
    keys = cycle_keys(key, first_cycle, num_cycles)
    q = jnp.asarray(QUANTILES)
    perturbations = None  # the stochastic EnKF's, drawn per cycle from the cycle's key
    if params.method == "enkf":
        shape = (state.members.shape[0], observations.value.shape[-1])
        perturbations = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0x5EED), shape,
                                                             state.members.dtype))(keys)

    def cycle(carry: EngineState, inputs):
        obs_t, forcing_t, key_t, eps_t = inputs
        key_f, key_a = jax.random.split(key_t)
        prior = forecast(carry.members, forcing_t, key_f, model_params)
        result = analysis(Ensemble(prior), obs_t, key_a, params, carry.inflation, None, log_mask,
                          obs_perturbations=eps_t)
        post = result.ensemble.members
        idx = jnp.clip(obs_t.state_index, 0, prior.shape[1] - 1)
        out = WindowOutputs(
            forecast_mean=prior.mean(0), forecast_sd=prior.std(0, ddof=1),
            analysis_mean=post.mean(0), analysis_sd=post.std(0, ddof=1),
            analysis_quantiles=jnp.quantile(post, q, axis=0),
            obs_forecast=prior[:, idx].mean(0), obs_forecast_sd=prior[:, idx].std(0, ddof=1),
            obs_analysis=post[:, idx].mean(0),
            diagnostics=result.diagnostics, disposition=result.disposition)
        return EngineState(post, result.inflation_state), out

    return jax.lax.scan(cycle, state, (observations, forcing, keys, perturbations))


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

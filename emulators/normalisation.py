"""Normalisation of the emulator's inputs and outputs, and its limits of use.

Concentrations are positive and span orders of magnitude, so the emulator works on the log of the state,
standardised per variable: ``z = (log(max(x, floor)) - mean) / sd``. Its output is the one-step increment of
the log state, standardised with the mean and sd of the increments seen in training. Forcing features are
standardised per feature.

The training inputs' ranges (minimum and maximum of every state variable and forcing feature) are the
emulator's limits of use: :func:`check_inputs` flags, and warns about, inputs outside them (DESIGN section 1,
need 5).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Full float32 matrix products on every backend: JAX's GPU default (TF32) keeps 10 mantissa bits, which
# loses three digits in Kalman analyses and implicit solves. A precision the user set is kept.
if jax.config.jax_default_matmul_precision is None:
    jax.config.update("jax_default_matmul_precision", "highest")

__all__ = [
    "InputFlags",
    "Normalisation",
    "OutOfRangeWarning",
    "TrainingRanges",
    "check_inputs",
    "fit_normalisation",
    "fit_ranges",
    "from_log_state",
    "to_log_state",
]

DEFAULT_LOG_FLOOR = 1e-4
"""Concentration floor (mmol m-3) before the log: keeps log finite for an exact zero in the data."""

_MIN_SD = 1e-6
"""An sd below this (a constant feature) is replaced by 1 so that standardising does not divide by zero."""


class Normalisation(NamedTuple):
    """Per-feature statistics of the emulator's normalised spaces (a pytree of float32 arrays).

    Attributes:
        log_floor: scalar, concentration floor (state units) before the log.
        state_mean: (num_state,), mean of log(max(x, log_floor)).
        state_sd: (num_state,), sd of the same.
        forcing_mean: (num_forcing,), mean of each forcing feature (its own units).
        forcing_sd: (num_forcing,), sd of each forcing feature.
        increment_mean: (num_state,), mean of the one-step increment of the log state.
        increment_sd: (num_state,), sd of the same.
        log_state_max: (num_state,), ceiling of the log state in a free run: the training maximum plus
            log(10). It keeps a free run finite far outside the training data; reaching it is out of the
            limits of use and :func:`check_inputs` flags it.
    """

    log_floor: jnp.ndarray
    state_mean: jnp.ndarray
    state_sd: jnp.ndarray
    forcing_mean: jnp.ndarray
    forcing_sd: jnp.ndarray
    increment_mean: jnp.ndarray
    increment_sd: jnp.ndarray
    log_state_max: jnp.ndarray


class TrainingRanges(NamedTuple):
    """Minimum and maximum of every input seen in training (a pytree of float32 arrays).

    Attributes:
        state_min, state_max: (num_state,), state units (mmol m-3).
        forcing_min, forcing_max: (num_forcing,), each forcing feature's units.
    """

    state_min: jnp.ndarray
    state_max: jnp.ndarray
    forcing_min: jnp.ndarray
    forcing_max: jnp.ndarray


class InputFlags(NamedTuple):
    """Which inputs lie outside the training ranges (numpy bool arrays).

    Attributes:
        state: (num_state,), True where any value of that state variable is out of range.
        forcing: (num_forcing,), True where any value of that forcing feature is out of range.
    """

    state: np.ndarray
    forcing: np.ndarray

    @property
    def any(self) -> bool:
        return bool(self.state.any() or self.forcing.any())


class OutOfRangeWarning(UserWarning):
    """An emulator input lies outside the ranges of its training data (outside its limits of use)."""


def to_log_state(state: jnp.ndarray, log_floor: float | jnp.ndarray) -> jnp.ndarray:
    """Log of a concentration state, floored. state: (..., num_state), mmol m-3."""
    return jnp.log(jnp.maximum(state, log_floor))


def from_log_state(log_state: jnp.ndarray) -> jnp.ndarray:
    """Concentrations from their log: positive by construction. Returns (..., num_state), mmol m-3."""
    return jnp.exp(log_state)


def _mean_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    sd = flat.std(axis=0)
    return flat.mean(axis=0), np.where(sd < _MIN_SD, 1.0, sd)


def fit_normalisation(
    states: np.ndarray,
    forcing: np.ndarray,
    *,
    log_floor: float = DEFAULT_LOG_FLOOR,
) -> Normalisation:
    """Fits the normalisation to training trajectories.

    Args:
        states: (num_traj, num_steps + 1, num_state), mmol m-3.
        forcing: (num_traj, num_steps, num_forcing), forcing features over each step.
        log_floor: concentration floor before the log, mmol m-3.

    Returns:
        The normalisation, float32.
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 3 or np.asarray(forcing).ndim != 3:
        raise ValueError(
            f"states must be (num_traj, num_steps + 1, num_state) and forcing (num_traj, num_steps, "
            f"num_forcing); got states {states.shape} and forcing {np.shape(forcing)}"
        )
    log_states = np.log(np.maximum(states, log_floor))
    state_mean, state_sd = _mean_sd(log_states)
    forcing_mean, forcing_sd = _mean_sd(np.asarray(forcing))
    increment_mean, increment_sd = _mean_sd(np.diff(log_states, axis=1))
    log_state_max = log_states.reshape(-1, states.shape[-1]).max(axis=0) + np.log(10.0)
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
    return Normalisation(
        log_floor=f32(log_floor),
        state_mean=f32(state_mean),
        state_sd=f32(state_sd),
        forcing_mean=f32(forcing_mean),
        forcing_sd=f32(forcing_sd),
        increment_mean=f32(increment_mean),
        increment_sd=f32(increment_sd),
        log_state_max=f32(log_state_max),
    )


def fit_ranges(states: np.ndarray, forcing: np.ndarray) -> TrainingRanges:
    """Minimum and maximum per variable of training states (..., num_state) and forcing (..., num_forcing)."""
    states = np.asarray(states).reshape(-1, np.shape(states)[-1])
    forcing = np.asarray(forcing).reshape(-1, np.shape(forcing)[-1])
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
    return TrainingRanges(
        state_min=f32(states.min(axis=0)),
        state_max=f32(states.max(axis=0)),
        forcing_min=f32(forcing.min(axis=0)),
        forcing_max=f32(forcing.max(axis=0)),
    )


def check_inputs(
    ranges: TrainingRanges,
    state: np.ndarray | None = None,
    forcing: np.ndarray | None = None,
    *,
    state_names: Sequence[str] | None = None,
    forcing_names: Sequence[str] | None = None,
    tolerance: float = 0.05,
    warn: bool = True,
) -> InputFlags:
    """Flags inputs outside the training ranges and warns with :class:`OutOfRangeWarning`.

    A value is out of range when it lies beyond the training minimum or maximum by more than
    ``tolerance`` times that variable's training range (the range is a sample, so a small margin avoids
    warning on every new extreme day). NaN counts as out of range.

    This runs on the host (numpy), at the edge of a run, not inside a jitted kernel.

    Args:
        ranges: the training ranges.
        state: (..., num_state), mmol m-3, or None to skip.
        forcing: (..., num_forcing), forcing features, or None to skip.
        state_names, forcing_names: names for the warning message (indices when None).
        tolerance: allowed excursion as a fraction of the training range.
        warn: whether to emit the warning (flags are returned either way).

    Returns:
        Per-variable flags.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")

    def flags_of(values, low, high, names, kind):
        low = np.asarray(low, dtype=np.float64)
        high = np.asarray(high, dtype=np.float64)
        if values is None:
            return np.zeros(low.shape, dtype=bool), []
        values = np.asarray(values, dtype=np.float64)
        if values.shape[-1:] != low.shape:
            raise ValueError(f"{kind} must have a last axis of {low.shape[0]} features, got shape {values.shape}")
        margin = tolerance * (high - low)
        flat = values.reshape(-1, low.shape[0])
        outside = ~((flat >= low - margin) & (flat <= high + margin))
        flags = outside.any(axis=0)
        labels = list(names) if names is not None else [f"{kind}[{i}]" for i in range(low.shape[0])]
        details = []
        for i in np.flatnonzero(flags):
            column = flat[:, i]
            finite = column[np.isfinite(column)]
            seen = f"[{finite.min():.4g}, {finite.max():.4g}]" if finite.size else "non-finite"
            details.append(f"{labels[i]} {seen} outside training range [{low[i]:.4g}, {high[i]:.4g}]")
        return flags, details

    state_flags, state_details = flags_of(state, ranges.state_min, ranges.state_max, state_names, "state")
    forcing_flags, forcing_details = flags_of(
        forcing, ranges.forcing_min, ranges.forcing_max, forcing_names, "forcing"
    )
    details = state_details + forcing_details
    if warn and details:
        warnings.warn(
            "emulator inputs outside its limits of use: " + "; ".join(details),
            OutOfRangeWarning,
            stacklevel=2,
        )
    return InputFlags(state=state_flags, forcing=forcing_flags)

"""Neural surrogate of the process model: a small Flax NNX network stepping the state by one day.

The network maps (normalised log state at t, normalised forcing over the step, time of year, site embedding)
to the normalised increment of the log state over the step (DESIGN section 5). Stepping adds the
de-normalised increment to the log state and exponentiates, so concentrations stay positive by
construction.

The kernels are pure functions of ``(graphdef, weights, normalisation, ...)`` (the ``nnx.split`` /
``nnx.merge`` bridge), usable under ``jit``, ``vmap`` and ``lax.scan``; :class:`Emulator` bundles a trained
network with everything a checkpoint holds and only delegates to them.

Legend: ``x`` state (mmol m-3), ``y = log(max(x, floor))``, ``z = (y - state_mean) / state_sd``,
``u`` the network's normalised increment, ``y' = y + u * increment_sd + increment_mean``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emulators.normalisation import (
    InputFlags,
    Normalisation,
    TrainingRanges,
    check_inputs,
    from_log_state,
    to_log_state,
)

__all__ = [
    "ACTIVATIONS",
    "Emulator",
    "EmulatorNet",
    "ModelError",
    "NetworkConfig",
    "build_network",
    "log_step",
    "normalised_increment",
    "predict_step",
    "rollout",
    "time_features",
]

Activation = Literal["tanh", "gelu", "silu"]
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}
DAYS_PER_YEAR = 365.25


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the emulator network; its repr is the record.

    Attributes:
        state_names: names of the state variables, in state-vector order (length num_state).
        forcing_names: names of the forcing features, in feature order (length num_forcing).
        num_sites: number of sites the site embedding covers (1: no embedding).
        site_features: size of the site embedding.
        hidden_sizes: widths of the hidden layers.
        activation: one of ``ACTIVATIONS``.
        seed: seed of the initial weights.
        dt_days: the step, days.
    """

    state_names: tuple[str, ...]
    forcing_names: tuple[str, ...]
    num_sites: int = 1
    site_features: int = 4
    hidden_sizes: tuple[int, ...] = (96, 96)
    activation: Activation = "tanh"
    seed: int = 0
    dt_days: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "state_names", tuple(self.state_names))
        object.__setattr__(self, "forcing_names", tuple(self.forcing_names))
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if not self.state_names:
            raise ValueError("state_names must name at least one state variable")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.num_sites < 1:
            raise ValueError(f"num_sites must be >= 1, got {self.num_sites}")
        if self.site_features < 1:
            raise ValueError(f"site_features must be >= 1, got {self.site_features}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.dt_days <= 0:
            raise ValueError(f"dt_days must be > 0, got {self.dt_days}")

    @property
    def num_state(self) -> int:
        return len(self.state_names)

    @property
    def num_forcing(self) -> int:
        return len(self.forcing_names)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown NetworkConfig fields {sorted(unknown)}; valid fields: {sorted(known)}")
        return cls(**values)


assert set(get_args(Activation)) == set(ACTIVATIONS)


class EmulatorNet(nnx.Module):
    """MLP from normalised inputs to the normalised increment of the log state.

    Args:
        num_state: size of the state vector.
        num_forcing: number of forcing features.
        hidden_sizes: widths of the hidden layers.
        num_sites: number of sites; above 1 a learned site embedding is an input.
        site_features: size of the site embedding.
        activation: name in ``ACTIVATIONS``.
        rngs: random streams for the initial weights.
    """

    def __init__(
        self,
        num_state: int,
        num_forcing: int,
        *,
        hidden_sizes: Sequence[int] = (96, 96),
        num_sites: int = 1,
        site_features: int = 4,
        activation: Activation = "tanh",
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.site_embedding = nnx.Embed(num_sites, site_features, rngs=rngs) if num_sites > 1 else None
        num_inputs = num_state + num_forcing + 2 + (site_features if num_sites > 1 else 0)
        widths = [num_inputs, *hidden_sizes]
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        # A small last layer starts the network near "mean increment", a stable rollout.
        self.output = nnx.Linear(
            widths[-1],
            num_state,
            kernel_init=nnx.initializers.variance_scaling(1e-2, "fan_in", "truncated_normal"),
            rngs=rngs,
        )

    def __call__(
        self,
        z_state: jax.Array,
        z_forcing: jax.Array,
        time: jax.Array,
        site: jax.Array,
    ) -> jax.Array:
        """Normalised increment.

        Args:
            z_state: (..., num_state), normalised log state.
            z_forcing: (..., num_forcing), normalised forcing features.
            time: (..., 2), sin and cos of the time of year.
            site: (...,) int, site index (ignored when num_sites == 1).

        Returns:
            (..., num_state), normalised increment.
        """
        parts = [z_state, z_forcing, time]
        if self.site_embedding is not None:
            parts.append(self.site_embedding(site))
        h = jnp.concatenate(parts, axis=-1)
        act = ACTIVATIONS[self.activation]
        for layer in self.hidden:
            h = act(layer(h))
        return self.output(h)


def build_network(config: NetworkConfig) -> EmulatorNet:
    """A freshly initialised network for ``config``."""
    return EmulatorNet(
        config.num_state,
        config.num_forcing,
        hidden_sizes=config.hidden_sizes,
        num_sites=config.num_sites,
        site_features=config.site_features,
        activation=config.activation,
        rngs=nnx.Rngs(config.seed),
    )


def time_features(day_of_year: jax.Array) -> jax.Array:
    """sin and cos of the time of year. day_of_year: (...,) days (0 = 1 January). Returns (..., 2)."""
    angle = 2.0 * jnp.pi * jnp.asarray(day_of_year, dtype=jnp.float32) / DAYS_PER_YEAR
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def _broadcast_inputs(log_state, forcing_t, day_of_year, site):
    batch = log_state.shape[:-1]
    forcing_t = jnp.broadcast_to(forcing_t, batch + forcing_t.shape[-1:])
    time = jnp.broadcast_to(time_features(day_of_year), batch + (2,))
    site = jnp.broadcast_to(jnp.asarray(site, dtype=jnp.int32), batch)
    return forcing_t, time, site


def normalised_increment(
    graphdef: nnx.GraphDef,
    weights: nnx.State,
    normalisation: Normalisation,
    log_state: jax.Array,
    forcing_t: jax.Array,
    day_of_year: jax.Array,
    site: jax.Array,
) -> jax.Array:
    """The network's output, the normalised increment u, for log state y (..., num_state)."""
    net = nnx.merge(graphdef, weights)
    forcing_t, time, site = _broadcast_inputs(log_state, forcing_t, day_of_year, site)
    z_state = (log_state - normalisation.state_mean) / normalisation.state_sd
    z_forcing = (forcing_t - normalisation.forcing_mean) / normalisation.forcing_sd
    return net(z_state, z_forcing, time, site)


def log_step(
    graphdef: nnx.GraphDef,
    weights: nnx.State,
    normalisation: Normalisation,
    log_state: jax.Array,
    forcing_t: jax.Array,
    day_of_year: jax.Array,
    site: jax.Array | int = 0,
) -> jax.Array:
    """One step in log space: y (..., num_state) -> y', clipped to [log(log_floor), log_state_max].

    The kernel of :func:`predict_step` and :func:`rollout`; arguments as in :func:`predict_step`.
    """
    u = normalised_increment(graphdef, weights, normalisation, log_state, forcing_t, day_of_year, site)
    next_log_state = log_state + u * normalisation.increment_sd + normalisation.increment_mean
    return jnp.clip(next_log_state, jnp.log(normalisation.log_floor), normalisation.log_state_max)


def predict_step(
    graphdef: nnx.GraphDef,
    weights: nnx.State,
    normalisation: Normalisation,
    state: jax.Array,
    forcing_t: jax.Array,
    day_of_year: jax.Array,
    site: jax.Array | int = 0,
) -> jax.Array:
    """State one step later.

    Pure: jit with ``graphdef`` static, vmap over any argument but ``graphdef``.

    Args:
        graphdef, weights: the network, from ``nnx.split``.
        normalisation: the emulator's normalisation.
        state: (..., num_state), mmol m-3.
        forcing_t: (..., num_forcing) or (num_forcing,), forcing features over the step.
        day_of_year: () or (...,), day of year at the start of the step.
        site: () or (...,) int, site index.

    Returns:
        (..., num_state), mmol m-3, positive.
    """
    log_state = to_log_state(state, normalisation.log_floor)
    return from_log_state(
        log_step(graphdef, weights, normalisation, log_state, forcing_t, day_of_year, site)
    )


def rollout(
    graphdef: nnx.GraphDef,
    weights: nnx.State,
    normalisation: Normalisation,
    state0: jax.Array,
    forcing: jax.Array,
    day_of_year: jax.Array,
    site: jax.Array | int = 0,
) -> jax.Array:
    """Free run of the emulator over ``num_steps`` steps with ``lax.scan``.

    Args:
        graphdef, weights: the network, from ``nnx.split``.
        normalisation: the emulator's normalisation.
        state0: (..., num_state), initial state, mmol m-3; leading axes are a batch (members, sites).
        forcing: (num_steps, ..., num_forcing) or (num_steps, num_forcing), forcing features per step.
        day_of_year: (num_steps,) or (num_steps, ...), day of year at the start of each step.
        site: () or (...,) int, site index per batch element.

    Returns:
        (num_steps, ..., num_state): the state after each step, mmol m-3.
    """

    def _step(log_state, inputs):
        forcing_t, day_t = inputs
        next_log_state = log_step(graphdef, weights, normalisation, log_state, forcing_t, day_t, site)
        return next_log_state, next_log_state

    log_state0 = to_log_state(state0, normalisation.log_floor)
    _, log_states = jax.lax.scan(_step, log_state0, (forcing, jnp.asarray(day_of_year)))
    return from_log_state(log_states)


class ModelError(NamedTuple):
    """One-step model error of the emulator, from its residuals on validation data (for the filter).

    Attributes:
        log_bias: (num_state,), mean one-step residual of the log state (prediction minus truth).
        log_sd: (num_state,), sd of the same: a multiplicative (fractional) error per step.
        normalised_sd: (num_state,), log_sd over the state's sd in log space.
        state_sd: (num_state,), sd of the one-step residual in state units, mmol m-3 (additive error).
    """

    log_bias: jnp.ndarray
    log_sd: jnp.ndarray
    normalised_sd: jnp.ndarray
    state_sd: jnp.ndarray


_predict_step_jit = jax.jit(predict_step, static_argnums=0)
_rollout_jit = jax.jit(rollout, static_argnums=0)


@dataclasses.dataclass(frozen=True, eq=False)
class Emulator:
    """A trained emulator: the network and everything its checkpoint holds.

    Attributes:
        config: the network's architecture.
        graphdef, weights: the network, from ``nnx.split``.
        normalisation: normalisation of inputs and outputs.
        ranges: ranges of the training inputs (limits of use).
        model_error: one-step model error for the filter.
        config_hash: hash of the configuration that trained it.
        lineage: what it was trained on, in order: dicts with ``kind`` ("pretrain" or "refit"), ``time``
            (ISO 8601 UTC), ``data``, ``skill_before``, ``skill_after``, ``kept``.
        parameter_values: values of its ``param/`` inputs calibrated to a site's analyses by a refit
            (name -> value); the process model's defaults for those not given.
    """

    config: NetworkConfig
    graphdef: nnx.GraphDef
    weights: nnx.State
    normalisation: Normalisation
    ranges: TrainingRanges
    model_error: ModelError
    config_hash: str = ""
    lineage: tuple[dict[str, Any], ...] = ()
    parameter_values: dict[str, float] = dataclasses.field(default_factory=dict)

    def module(self) -> EmulatorNet:
        """The network as a module (a copy: changing it does not change the emulator)."""
        return nnx.merge(self.graphdef, self.weights)

    def replace(self, **changes) -> Emulator:
        return dataclasses.replace(self, **changes)

    def check_inputs(self, state=None, forcing=None, *, warn: bool = True) -> InputFlags:
        """Flags state (..., num_state) and forcing (..., num_forcing) values outside the training ranges."""
        return check_inputs(
            self.ranges,
            state,
            forcing,
            state_names=self.config.state_names,
            forcing_names=self.config.forcing_names,
            warn=warn,
        )

    def step(self, state, forcing_t, day_of_year, site=0) -> jax.Array:
        """One step, see :func:`predict_step` (no range check: this is the filter's hot path)."""
        return _predict_step_jit(
            self.graphdef, self.weights, self.normalisation, state, forcing_t, day_of_year, site
        )

    def run(self, state0, forcing, day_of_year, site=0, *, check: bool = True) -> jax.Array:
        """Free run, see :func:`rollout`; with ``check``, warns when inputs or the run leave the ranges."""
        if check:
            self.check_inputs(np.asarray(state0), np.asarray(forcing))
        states = _rollout_jit(
            self.graphdef, self.weights, self.normalisation, state0, forcing, day_of_year, site
        )
        if check:
            self.check_inputs(np.asarray(states))
        return states

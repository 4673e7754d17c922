"""Test beds: Lorenz-63 and Lorenz-96 with RK4, set up as DAPPER's published experiments.

- ``lorenz96_sakov2008``: ``dapper/mods/Lorenz96/sakov2008.py`` (Sakov and Oke 2008): n = 40, F = 8,
  dt = 0.05, every variable observed every step, R = I, X0 ~ N(x0, 0.001 I), x0 = e_0.
- ``lorenz63_sakov2012``: ``dapper/mods/Lorenz63/sakov2012.py``: dt = 0.01, observed every 25 steps,
  R = 2 I, X0 ~ N(x0, 2 I), x0 = (1.509, -1.531, 25.46).

These are generic dynamics, nothing coastal; the truth starts from a draw of X0, as in DAPPER.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from assimilation.cycling import make_observations
from assimilation.types import Ensemble, Observations


def rk4_step(tendency: Callable[[Array], Array], x: Array, dt: float) -> Array:
    """One classical fourth-order Runge-Kutta step of an autonomous ODE dx/dt = tendency(x)."""
    k1 = tendency(x)
    k2 = tendency(x + 0.5 * dt * k1)
    k3 = tendency(x + 0.5 * dt * k2)
    k4 = tendency(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2.0 * (k2 + k3) + k4)


def lorenz96_tendency(x: Array, forcing: float = 8.0) -> Array:
    """Lorenz (1996): dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, periodic, on the last axis."""
    n = x.shape[-1]
    if n < 2:
        return (jnp.roll(x, -1, -1) - jnp.roll(x, 2, -1)) * jnp.roll(x, 1, -1) - x + forcing
    # One periodic extension (x_{n-2}, x_{n-1}, x_0, ..., x_{n-1}, x_0) sliced three ways: the same numbers
    # as three jnp.roll, which XLA on CPU materialises one by one (a third of the RK4 step's cost).
    ext = jnp.concatenate([x[..., -2:], x, x[..., :1]], axis=-1)
    return (ext[..., 3:] - ext[..., :n]) * ext[..., 1:n + 1] - x + forcing


def lorenz63_tendency(x: Array, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0) -> Array:
    """Lorenz (1963) on the last axis (size 3)."""
    a, b, c = x[..., 0], x[..., 1], x[..., 2]
    return jnp.stack([sigma * (b - a), rho * a - b - a * c, a * b - beta * c], axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class Testbed:
    """A perfect-model twin set-up (hashed by identity, so ``forecast`` can be a static jit argument).

    Attributes:
        name: the DAPPER scenario it reproduces.
        state_dim: n.
        dt: model time step.
        steps_per_cycle: model steps between analyses.
        obs_error_sd: sd of the (uncorrelated) observation errors, every variable observed.
        x0: (n,) centre of the initial distribution.
        initial_sd: sd of the initial distribution N(x0, initial_sd^2 I).
        tendency: dx/dt on the last axis.
    """

    __test__ = False  # not a pytest test class

    name: str
    state_dim: int
    dt: float
    steps_per_cycle: int
    obs_error_sd: float
    x0: Array
    initial_sd: float
    tendency: Callable[[Array], Array]

    def step(self, x: Array) -> Array:
        """Advance (..., n) states by one analysis cycle (``steps_per_cycle`` RK4 steps)."""
        return jax.lax.fori_loop(0, self.steps_per_cycle, lambda _, s: rk4_step(self.tendency, s, self.dt), x)

    def forecast(self, members: Array, forcing=None, key: Array | None = None) -> Array:
        """The ``ForecastFn`` of the cycling driver (deterministic, perfect model)."""
        return self.step(members)


def lorenz96_sakov2008(state_dim: int = 40) -> Testbed:
    """Lorenz-96 as ``dapper.mods.Lorenz96.sakov2008`` (any ``state_dim``; 40 there)."""
    return Testbed("Lorenz96/sakov2008", state_dim, 0.05, 1, 1.0, jnp.zeros(state_dim).at[0].set(1.0),
                   jnp.sqrt(0.001).item(), lorenz96_tendency)


def lorenz63_sakov2012() -> Testbed:
    """Lorenz-63 as ``dapper.mods.Lorenz63.sakov2012``."""
    return Testbed("Lorenz63/sakov2012", 3, 0.01, 25, jnp.sqrt(2.0).item(), jnp.array([1.509, -1.531, 25.46]),
                   jnp.sqrt(2.0).item(), lorenz63_tendency)


class Twin(NamedTuple):
    """A synthetic truth, its observations and a first-guess ensemble.

    Attributes:
        truth: (T, n) true state at each analysis time (after the first forecast).
        observations: :class:`Observations` with leading (T,) axis, every variable observed.
        ensemble: initial ensemble, members (N, n), drawn from X0.
    """

    truth: Array
    observations: Observations
    ensemble: Ensemble


def simulate_twin(testbed: Testbed, key: Array, num_cycles: int, num_members: int) -> Twin:
    """Draw a truth from X0, run it ``num_cycles`` cycles, observe it with N(0, R) errors, draw the ensemble.

    Jittable (``num_cycles`` and ``num_members`` static) and vmappable over ``key``.
    """
    k_truth, k_obs, k_ens = jax.random.split(key, 3)
    n = testbed.state_dim
    x_init = testbed.x0 + testbed.initial_sd * jax.random.normal(k_truth, (n,))

    def advance(x, _):
        x = testbed.step(x)
        return x, x

    _, truth = jax.lax.scan(advance, x_init, None, length=num_cycles)
    values = truth + testbed.obs_error_sd * jax.random.normal(k_obs, truth.shape)
    obs = make_observations(values, testbed.obs_error_sd, jnp.arange(n))
    members = testbed.x0 + testbed.initial_sd * jax.random.normal(k_ens, (num_members, n))
    return Twin(truth, obs, Ensemble(members))

"""Localization: Gaspari-Cohn taper and the local observation sets of the LETKF.

Radius conventions (``RadiusConvention``):

- ``"half_width"`` (ours): the radius is the Gaspari-Cohn half-width ``c`` of Gaspari and Cohn (1999,
  eq. 4.10); the taper is 1 at distance 0, 0.208 at ``c`` and exactly 0 beyond ``2 c``. This is DART's
  ``cutoff``.
- ``"dapper"``: DAPPER's ``loc_rad`` (``dapper.tools.localization.dist2coeff``), meant to give a taper of
  about exp(-1/2) at ``loc_rad``; DAPPER sets ``c = 1.82 loc_rad`` (sqrt(10/3), the Gaussian of the same
  curvature at 0), so the taper at ``loc_rad`` is in fact 0.634, and the support is ``3.64 loc_rad``.

The taper multiplies R^-1 of each observation in a local analysis (Hunt et al. 2007, section 2.3), i.e.
sqrt(taper) multiplies the standardized innovations and observation anomalies, as DAPPER does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from assimilation.types import RADIUS_CONVENTIONS, Localization, RadiusConvention

DAPPER_GC_FACTOR = 1.82  # c = 1.82 loc_rad in dapper.tools.localization.dist2coeff ("GC")


def gaspari_cohn(distance: Array, half_width: float | Array) -> Array:
    """Gaspari-Cohn fifth-order piecewise rational taper (Gaspari and Cohn 1999, eq. 4.10).

    Args:
        distance: (...) non-negative distances.
        half_width: the half-width ``c``; the taper vanishes beyond ``2 c``; ``inf`` gives 1 everywhere.

    Returns:
        (...) taper in [0, 1].
    """
    z = jnp.abs(distance) / half_width
    inner = 1.0 - 5.0 / 3.0 * z**2 + 5.0 / 8.0 * z**3 + 0.5 * z**4 - 0.25 * z**5
    zs = jnp.where(z > 1.0, z, 1.0)  # keeps 1/z finite on the unused branch
    outer = z**5 / 12.0 - 0.5 * z**4 + 5.0 / 8.0 * z**3 + 5.0 / 3.0 * z**2 - 5.0 * z + 4.0 - 2.0 / (3.0 * zs)
    taper = jnp.where(z <= 1.0, inner, jnp.where(z <= 2.0, outer, 0.0))
    return jnp.clip(taper, 0.0, 1.0)


def half_width(radius: float, convention: RadiusConvention = "half_width") -> float:
    """Gaspari-Cohn half-width ``c`` for a localization radius given in ``convention``."""
    if convention not in RADIUS_CONVENTIONS:
        raise ValueError(f"unknown radius convention {convention!r}; valid conventions: {RADIUS_CONVENTIONS}")
    return float(radius) * (DAPPER_GC_FACTOR if convention == "dapper" else 1.0)


def localization_from_distances(distances: Array, radius: float, convention: RadiusConvention = "half_width",
                                max_local: int | None = None,
                                domain_of_state: Array | None = None) -> Localization:
    """Local observation sets from a dense distance matrix (small problems, or sites).

    Works inside ``jit`` (obs positions may change every cycle) when ``max_local`` is given.

    Args:
        distances: (num_domains, m) distance from each local domain to each observation slot.
        radius: localization radius in ``convention``; ``inf`` gives no localization.
        convention: ``"half_width"`` or ``"dapper"`` (see module docstring).
        max_local: number of nearest observations kept per domain (default: all m).
        domain_of_state: (n,) domain of each state element (default: one domain per state element,
            ``num_domains == n``).

    Returns:
        The :class:`Localization`.
    """
    distances = jnp.asarray(distances)
    num_domains, num_obs = distances.shape
    c = half_width(radius, convention)
    k = num_obs if max_local is None else min(int(max_local), num_obs)
    neg, slot = jax.lax.top_k(-distances, k)
    taper = gaspari_cohn(-neg, c)
    if domain_of_state is None:
        domain_of_state = jnp.arange(num_domains, dtype=jnp.int32)
    return Localization(slot.astype(jnp.int32), taper, jnp.asarray(domain_of_state, jnp.int32))


def localization_1d(domain_coords, obs_coords, radius: float, convention: RadiusConvention = "half_width",
                    period: float | None = None, domain_of_state=None) -> Localization:
    """Local observation sets on a line or a circle, for large states (O(n log m), numpy, set-up time).

    Args:
        domain_coords: (num_domains,) coordinate of each local domain.
        obs_coords: (m,) coordinate of each observation slot (any order).
        radius: localization radius in ``convention`` (finite).
        convention: ``"half_width"`` or ``"dapper"``.
        period: domain length for a periodic domain (Lorenz-96: n), None for a line.
        domain_of_state: (n,) domain of each state element (default: identity).

    Returns:
        The :class:`Localization`, ``max_local`` = the largest number of observations within the support.

    Raises:
        ValueError: infinite radius, or a support that wraps around the periodic domain (use
            :func:`localization_from_distances` then).
    """
    c = half_width(radius, convention)
    support = 2.0 * c
    if not np.isfinite(support):
        raise ValueError("localization_1d needs a finite radius; use localization_from_distances for inf")
    domain_coords = np.asarray(domain_coords, dtype=float)
    obs_coords = np.asarray(obs_coords, dtype=float)
    order = np.argsort(obs_coords, kind="stable")
    coords, slots = obs_coords[order], order
    if period is not None:
        if 2.0 * support >= period:
            raise ValueError(f"support 2c = {support:g} wraps around the period {period:g}; "
                             "use localization_from_distances")
        coords = np.concatenate([coords - period, coords, coords + period])
        slots = np.concatenate([slots, slots, slots])
    lo = np.searchsorted(coords, domain_coords - support, side="left")
    hi = np.searchsorted(coords, domain_coords + support, side="right")
    max_local = max(int(np.max(hi - lo)) if len(lo) else 0, 1)
    idx = lo[:, None] + np.arange(max_local)[None, :]
    valid = idx < hi[:, None]
    idx = np.minimum(idx, len(coords) - 1)
    dist = np.abs(coords[idx] - domain_coords[:, None])
    taper = np.where(valid, np.asarray(gaspari_cohn(dist, c)), 0.0)
    if domain_of_state is None:
        domain_of_state = np.arange(len(domain_coords))
    return Localization(jnp.asarray(np.where(valid, slots[idx], 0), jnp.int32),
                        jnp.asarray(taper, jnp.float32), jnp.asarray(domain_of_state, jnp.int32))

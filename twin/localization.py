"""LETKF localization (``filter.method: letkf``): between the sites of a network, and between variables.

The analysis is local (Hunt et al. 2007): the state elements are grouped into local domains, and each
domain's ETKF transform is computed from every observation of the cycle, each with its R^-1 multiplied by
a taper for that domain. Two tapers multiply:

- between sites (``filter.localization_radius_km``): the Gaspari-Cohn taper of the great-circle distance
  between the domain's site and the observation's site, with the radius as half-width ``c``
  (``assimilation.localization``'s "half_width" convention, DART's cutoff): 1 at the same site, 0.208 at
  ``c``, 0 beyond ``2 c``. Without a radius the sites are not localized.
- between variables (``filter.cross_variable_localization``, Kang et al. 2011):
  ``{observed variable: {state variable: taper}}``, e.g. ``{ammonium: {nitrate: 0}}``: an ammonium sample
  does not move nitrate through their ensemble correlation, while both still take their own samples. Pairs
  not named take 1. The state variables include the augmented elements: ``{oxygen: {chlorophyll_bias: 0}}``
  keeps the oxygen samples off the model's Chl:N error, which only the chlorophyll samples should estimate. A
  sensor's reading of a variable (``oxygen_buoy``) takes that variable's taper, on both sides.

The elements whose taper rows are equal form one domain, so a network with no cross-variable taper has one
domain per site, and one site with one zeroed pair has two: the taper is computed once per run as a
(domains, state elements) table, and each cycle picks its columns for its observation slots.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from assimilation import Localization, gaspari_cohn
from twin.geodesy import haversine_km
from twin.state_layout import StateLayout, seen_name


class LocalTaper(NamedTuple):
    """The LETKF's local domains, as data for the compiled cycle."""
    taper: jax.Array            # (D, n): taper on R^-1 of an observation of element j in domain d's analysis
    domain_of_state: jax.Array  # (n,) int32: the local domain of each state element


def site_distances_km(config, layout: StateLayout) -> np.ndarray:
    """(S, S) great-circle distances between the layout's sites, from the configured coordinates."""
    by_name = {site.name: site for site in config.sites}
    missing = [name for name in layout.sites if name not in by_name]
    if missing:
        raise ValueError(f"filter.method letkf: no coordinates for site(s) {missing} (sites[] lists "
                         f"{sorted(by_name)})")
    lat = np.array([by_name[name].latitude for name in layout.sites], np.float64)
    lon = np.array([by_name[name].longitude for name in layout.sites], np.float64)
    return haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])


def observed_variable_of_state(layout: StateLayout) -> list[str]:
    """(n,) the variable an observation of each element measures: the element's own variable, or for a
    sensor's reading of a variable (``oxygen_buoy``), that variable."""
    seen = {seen_name(v, s): v for s, v in layout.sensors}
    return [seen.get(v, v) for v, _, _ in layout.variables()]


def local_taper(config, layout: StateLayout) -> LocalTaper | None:
    """The localization of ``config.filter`` for ``layout``; None unless the method is the LETKF."""
    flt = config.filter
    if flt.method != "letkf":
        return None
    site = layout.site_of_state()                                                     # (n,)
    if flt.localization_radius_km is None:
        between_sites = np.ones((len(layout.sites),) * 2)
    else:
        between_sites = np.asarray(gaspari_cohn(jnp.asarray(site_distances_km(config, layout)),
                                                float(flt.localization_radius_km)), np.float64)
    # A sensor's reading of a variable (oxygen_buoy) is that variable on both sides (observation and state):
    # a taper on oxygen also keeps the reading, oxygen times exp(offset), from moving where neither factor does.
    observed = observed_variable_of_state(layout)
    pairs = flt.cross_variable_localization
    readings = {seen_name(v, s) for s, v in layout.sensors}
    carried = [v for v in layout.state_variables() if v not in readings]
    absent = sorted({v for shares in pairs.values() for v in shares} - set(carried))
    if absent:
        raise ValueError(f"filter.cross_variable_localization names {absent}, which the state does not carry "
                         f"(model.bias, model.estimate_parameters and sources[].offsets add elements); it carries "
                         f"{list(carried)}")
    between_variables = np.array([[pairs.get(obs, {}).get(var, 1.0) for obs in observed]
                                  for var in observed])                                # (n, n)
    rows = (between_sites[site][:, site] * between_variables).astype(np.float32)     # element i's taper row
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)                                # domains numbered in state order (site 0 first)
    number = np.empty_like(order)
    number[order] = np.arange(order.size)
    return LocalTaper(jnp.asarray(rows[first[order]]), jnp.asarray(number[np.reshape(inverse, -1)], jnp.int32))


def local_observations(localization: LocalTaper, state_index: jax.Array) -> Localization:
    """The cycle's local observation sets: every slot in every domain, tapered for that domain (slots with
    no state element get element 0's column; their R^-1 is 0 anyway)."""
    n = localization.taper.shape[1]
    column = jnp.clip(state_index, 0, n - 1)
    taper = localization.taper[:, column]                             # (D, m)
    slots = jnp.broadcast_to(jnp.arange(state_index.shape[0], dtype=jnp.int32), taper.shape)
    return Localization(slots, taper, localization.domain_of_state)

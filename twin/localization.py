"""LETKF localization between the sites of a network (``filter.method: letkf``).

Each site's state elements form one local domain (Hunt et al. 2007): its ETKF transform is computed from
every observation of the cycle, each with its R^-1 multiplied by the Gaspari-Cohn taper of the distance
between the domain's site and the observation's site (great circle, km). ``filter.localization_radius_km``
is the taper's half-width ``c`` (``assimilation.localization``'s "half_width" convention, DART's cutoff):
1 at the same site, 0.208 at ``c``, 0 beyond ``2 c``, where a site's observations no longer reach another
site. Within a site nothing is localized (the layers and variables of a station share their water); a
single site gives the ETKF.

The taper depends only on which state element an observation sees, so it is computed once per run as a
(sites, state elements) table; each cycle picks its columns for its observation slots.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from assimilation import Localization, gaspari_cohn
from twin.readers.gridded import haversine_km
from twin.state_layout import StateLayout


class SiteTaper(NamedTuple):
    """The LETKF's localization between sites, as data for the compiled cycle."""
    taper: jax.Array            # (S, n): taper on R^-1 of an observation of element j in site s's analysis
    domain_of_state: jax.Array  # (n,) int32: the site (local domain) of each state element


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


def site_taper(config, layout: StateLayout) -> SiteTaper | None:
    """The localization of ``config.filter`` for ``layout``; None unless the method is the LETKF."""
    if config.filter.method != "letkf":
        return None
    distance = site_distances_km(config, layout)                     # (S, S)
    site = layout.site_of_state()                                     # (n,)
    taper = gaspari_cohn(jnp.asarray(distance[:, site], jnp.float32), float(config.filter.localization_radius_km))
    return SiteTaper(taper.astype(jnp.float32), jnp.asarray(site, jnp.int32))


def local_observations(localization: SiteTaper, state_index: jax.Array) -> Localization:
    """The cycle's local observation sets: every slot in every domain, tapered by the site distance
    (slots with no state element get element 0's column; their R^-1 is 0 anyway)."""
    n = localization.taper.shape[1]
    column = jnp.clip(state_index, 0, n - 1)
    taper = localization.taper[:, column]                             # (S, m)
    slots = jnp.broadcast_to(jnp.arange(state_index.shape[0], dtype=jnp.int32), taper.shape)
    return Localization(slots, taper, localization.domain_of_state)

"""The twin's state vector: which element is which variable at which site and layer.

Per site, the process-model state (``emulators.parameters.TRACERS`` per layer, layer-major) followed by the
diagnostic chlorophyll of each layer. Chlorophyll depends on the state through a Chl:N ratio (light,
temperature, nutrients); carrying it as an augmented element, recomputed after every forecast, makes the
chlorophyll observations a plain index into the state, and the filter spreads their information to
phytoplankton through the ensemble covariance. A network of sites is the concatenation of the per-site
vectors, in the config's site order. Names read ``variable@site/layer`` (``nitrate@Point B/surface``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from emulators.parameters import LAYERS as MODEL_LAYERS
from emulators.parameters import NUM_TRACERS, TRACERS

DIAGNOSTICS = ("chlorophyll",)
STATE_VARIABLES = TRACERS + DIAGNOSTICS  # per site and layer, in state order
# Canonical observed variable -> state variable it sees directly.
OBSERVABLE = {"nitrate": "nitrate", "ammonium": "ammonium", "phosphate": "phosphate",
              "silicate": "silicate", "oxygen": "oxygen", "chlorophyll": "chlorophyll"}
# Units of each state variable, for products.
STATE_UNITS = {"nitrate": "mmol m-3", "ammonium": "mmol m-3", "phosphate": "mmol m-3",
               "silicate": "mmol m-3", "phytoplankton": "mmol N m-3", "zooplankton": "mmol N m-3",
               "detritus": "mmol N m-3", "oxygen": "mmol m-3", "chlorophyll": "mg m-3"}


class StateLayout(NamedTuple):
    """Layout of the twin state for ``sites`` with ``num_layers`` layers each (1 surface, 2 + bottom)."""
    sites: tuple[str, ...]
    num_layers: int

    @property
    def layers(self) -> tuple[str, ...]:
        return MODEL_LAYERS[: self.num_layers]

    @property
    def model_dim(self) -> int:
        """Process-model entries per site."""
        return self.num_layers * NUM_TRACERS

    @property
    def site_dim(self) -> int:
        """Entries per site: model state then diagnostics."""
        return self.model_dim + self.num_layers * len(DIAGNOSTICS)

    @property
    def dim(self) -> int:
        return len(self.sites) * self.site_dim

    def variables(self) -> list[tuple[str, str, str]]:
        """(variable, site, layer) of every element, in state order."""
        out = []
        for site in self.sites:
            out += [(tracer, site, layer) for layer in self.layers for tracer in TRACERS]
            out += [(diag, site, layer) for diag in DIAGNOSTICS for layer in self.layers]
        return out

    def names(self) -> list[str]:
        return [f"{v}@{s}/{l}" for v, s, l in self.variables()]

    def index(self, variable: str, site: str, layer: str) -> int:
        """Index of a state variable; -1 when the twin does not carry it."""
        if site not in self.sites or layer not in self.layers:
            return -1
        base = self.sites.index(site) * self.site_dim
        li = self.layers.index(layer)
        if variable in TRACERS:
            return base + li * NUM_TRACERS + TRACERS.index(variable)
        if variable in DIAGNOSTICS:
            return base + self.model_dim + DIAGNOSTICS.index(variable) * self.num_layers + li
        return -1

    def observation_index(self, variable: str, site: str, layer: str) -> int:
        """State index an observation of canonical ``variable`` sees; -1 when none (e.g. temperature,
        which is forcing, or a site or layer outside the twin)."""
        state_variable = OBSERVABLE.get(variable)
        return -1 if state_variable is None else self.index(state_variable, site, layer)

    def model_slices(self) -> np.ndarray:
        """Indices of the process-model entries in the flat state, shape (num_sites, model_dim)."""
        base = np.arange(len(self.sites))[:, None] * self.site_dim
        return base + np.arange(self.model_dim)[None, :]

    def diagnostic_slices(self) -> np.ndarray:
        """Indices of the diagnostic entries, shape (num_sites, num_layers * len(DIAGNOSTICS))."""
        base = np.arange(len(self.sites))[:, None] * self.site_dim + self.model_dim
        return base + np.arange(self.site_dim - self.model_dim)[None, :]

    def site_of_state(self) -> np.ndarray:
        """Site number of every state element, shape (dim,) (the localization domain)."""
        return np.repeat(np.arange(len(self.sites)), self.site_dim)

"""The twin's state vector: which element is which variable at which site and layer.

Per site, the process-model state (``emulators.parameters.TRACERS`` per layer, layer-major) followed by the
diagnostic chlorophyll of each layer. Chlorophyll depends on the state through a Chl:N ratio (light,
temperature, nutrients); carrying it as an augmented element, recomputed after every forecast, makes the
chlorophyll observations a plain index into the state, and the filter spreads their information to
phytoplankton through the ensemble covariance. A network of sites is the concatenation of the per-site
vectors, in the config's site order. Names read ``variable@site/layer`` (``nitrate@Point B/surface``).

With a model bias (``model.bias`` in the config), each site's vector goes on with one more element per biased
tracer and layer, ``<tracer>_bias``: the log-rate per day of the model's persistent error for that tracer,
estimated by the filter like any other element (augmented-state bias estimation, see ``twin.forecast``).
``chlorophyll`` can be biased too: its element is then the log of the model's Chl:N ratio error (a level, not
a rate: the diagnostic is recomputed every day, so the error does not accumulate in it).
With sensor offsets (``sources[].offsets``), it ends with, per (sensor, variable) and layer, the sensor's
offset ``<variable>_offset_<sensor>`` and the variable as that sensor reads it, ``<variable>_<sensor>``.
With estimated parameters (``model.estimate_parameters``), each site's vector ends with one element per
parameter, ``<parameter>_log_factor``: the log of the factor on the emulator's input of that parameter (joint
state-parameter estimation). A parameter belongs to the site, not to a layer: its element is listed once, at
the first layer, and :meth:`StateLayout.index` gives it for every layer (products show it at each).
The biases, offsets and parameter factors are analysed in linear space (they can be negative) and left out of
the filter's inflation (their AR(1) sets their spread); every other element is analysed in log space.
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
BIAS_SUFFIX = "_bias"
PARAMETER_SUFFIX = "_log_factor"


def bias_name(variable: str) -> str:
    """Name of the model-bias element of ``variable`` (a tracer's log-rate per day; chlorophyll's log factor
    of the Chl:N ratio)."""
    return variable + BIAS_SUFFIX


STATE_UNITS.update({bias_name(t): "d-1" for t in TRACERS})
STATE_UNITS[bias_name("chlorophyll")] = "1"   # log factor of the Chl:N ratio


def parameter_name(parameter: str) -> str:
    """Name of the element holding the log of the factor on the emulator's input of ``parameter``."""
    return parameter + PARAMETER_SUFFIX


def offset_name(variable: str, sensor: str) -> str:
    """Name of the element holding ``sensor``'s offset for ``variable`` (log of its reading over the sea's)."""
    return f"{variable}_offset_{sensor}"


def seen_name(variable: str, sensor: str) -> str:
    """Name of the element holding ``variable`` as ``sensor`` reads it (the sea's value times exp(offset))."""
    return f"{variable}_{sensor}"


class StateLayout(NamedTuple):
    """Layout of the twin state for ``sites`` with ``num_layers`` layers each (1 surface, 2 + bottom), a
    model-bias element per variable in ``biased`` (tracers, chlorophyll) and layer, and per ``(sensor,
    variable)`` in ``sensors`` and layer an offset element and the variable as that sensor reads it (its
    observations see this one), and per site one log factor per parameter in ``estimated``."""
    sites: tuple[str, ...]
    num_layers: int
    biased: tuple[str, ...] = ()
    sensors: tuple[tuple[str, str], ...] = ()
    estimated: tuple[str, ...] = ()

    @classmethod
    def for_config(cls, config, num_layers: int) -> "StateLayout":
        """The layout of a twin config: its sites, its model biases (``model.bias``), the offsets of its
        named sources (``sources[].offsets``) and its estimated parameters (``model.estimate_parameters``)."""
        return cls(tuple(s.name for s in config.sites), num_layers, tuple(config.model.bias),
                   tuple((s.name, v) for s in config.sources for v in s.offsets),
                   tuple(config.model.estimate_parameters))

    @property
    def layers(self) -> tuple[str, ...]:
        return MODEL_LAYERS[: self.num_layers]

    @property
    def model_dim(self) -> int:
        """Process-model entries per site."""
        return self.num_layers * NUM_TRACERS

    @property
    def site_dim(self) -> int:
        """Entries per site: model state, diagnostics, model biases, sensor offsets, sensor readings, then the
        parameter factors (one per site each)."""
        return self._layered_dim + len(self.estimated)

    @property
    def _layered_dim(self) -> int:
        """Entries per site before the parameter factors (every block has one entry per layer)."""
        return self.model_dim + self.num_layers * (len(DIAGNOSTICS) + len(self.biased) + 2 * len(self.sensors))

    def state_variables(self) -> tuple[str, ...]:
        """Every variable the twin carries per site (and layer), in the order of a site's blocks."""
        return (STATE_VARIABLES + tuple(bias_name(t) for t in self.biased)
                + tuple(offset_name(v, s) for s, v in self.sensors) + tuple(seen_name(v, s) for s, v in self.sensors)
                + tuple(parameter_name(p) for p in self.estimated))

    def estimated_variables(self) -> tuple[str, ...]:
        """The variables the filter estimates besides the sea's state: model biases, sensor offsets, parameter
        factors (not the sensors' readings, which are the state as a sensor sees it)."""
        return (tuple(bias_name(t) for t in self.biased) + tuple(offset_name(v, s) for s, v in self.sensors)
                + tuple(parameter_name(p) for p in self.estimated))

    @property
    def dim(self) -> int:
        return len(self.sites) * self.site_dim

    def variables(self) -> list[tuple[str, str, str]]:
        """(variable, site, layer) of every element, in state order."""
        out = []
        for site in self.sites:
            out += [(tracer, site, layer) for layer in self.layers for tracer in TRACERS]
            out += [(diag, site, layer) for diag in DIAGNOSTICS for layer in self.layers]
            out += [(bias_name(t), site, layer) for t in self.biased for layer in self.layers]
            out += [(offset_name(v, s), site, layer) for s, v in self.sensors for layer in self.layers]
            out += [(seen_name(v, s), site, layer) for s, v in self.sensors for layer in self.layers]
            out += [(parameter_name(p), site, self.layers[0]) for p in self.estimated]
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
        factors = [parameter_name(p) for p in self.estimated]
        if variable in factors:  # the site's, the same at every layer
            return base + self._layered_dim + factors.index(variable)
        augmented = self.state_variables()[len(STATE_VARIABLES):]
        augmented = augmented[:len(augmented) - len(factors)]
        if variable in augmented:  # one block of num_layers each
            blocks = len(DIAGNOSTICS) + augmented.index(variable)
            return base + self.model_dim + self.num_layers * blocks + li
        return -1

    def observation_index(self, variable: str, site: str, layer: str, sensor: str | None = None) -> int:
        """State index an observation of canonical ``variable`` sees; -1 when none (e.g. temperature,
        which is forcing, or a site or layer outside the twin). An observation from a ``sensor`` whose
        offset the twin estimates for this variable sees the variable as that sensor reads it."""
        state_variable = OBSERVABLE.get(variable)
        if state_variable is None:
            return -1
        if sensor is not None and (sensor, state_variable) in self.sensors:
            return self.index(seen_name(state_variable, sensor), site, layer)
        return self.index(state_variable, site, layer)

    def model_slices(self) -> np.ndarray:
        """Indices of the process-model entries in the flat state, shape (num_sites, model_dim)."""
        base = np.arange(len(self.sites))[:, None] * self.site_dim
        return base + np.arange(self.model_dim)[None, :]

    def diagnostic_slices(self) -> np.ndarray:
        """Indices of the diagnostic entries, shape (num_sites, num_layers * len(DIAGNOSTICS))."""
        base = np.arange(len(self.sites))[:, None] * self.site_dim + self.model_dim
        return base + np.arange(self.num_layers * len(DIAGNOSTICS))[None, :]

    def bias_slices(self) -> np.ndarray:
        """Indices of the model-bias entries, shape (num_sites, len(biased) * num_layers), variable-major."""
        base = np.arange(len(self.sites))[:, None] * self.site_dim + self.model_dim \
            + self.num_layers * len(DIAGNOSTICS)
        return base + np.arange(len(self.biased) * self.num_layers)[None, :]

    def bias_targets(self) -> np.ndarray:
        """Position within a site's vector of the variable each bias entry acts on (a tracer in the model
        state, or the chlorophyll diagnostic), in the order of :meth:`bias_slices`, shape
        (len(biased) * num_layers,)."""
        return np.array([self.index(t, self.sites[0], layer) for t in self.biased for layer in self.layers],
                        np.int64)

    def sensor_offset_slices(self) -> np.ndarray:
        """Indices of the sensor-offset entries, shape (num_sites, len(sensors) * num_layers)."""
        base = np.arange(len(self.sites))[:, None] * self.site_dim + self.model_dim \
            + self.num_layers * (len(DIAGNOSTICS) + len(self.biased))
        return base + np.arange(len(self.sensors) * self.num_layers)[None, :]

    def sensor_seen_slices(self) -> np.ndarray:
        """Indices of the sensor-reading entries, in the order of :meth:`sensor_offset_slices`."""
        return self.sensor_offset_slices() + len(self.sensors) * self.num_layers

    def sensor_targets(self) -> np.ndarray:
        """Position within a site's vector of the variable each sensor reading is made of (a tracer or a
        diagnostic), in the order of :meth:`sensor_offset_slices`."""
        # The first site's vector starts at 0: its indices are the positions within any site's vector.
        return np.array([self.index(v, self.sites[0], layer) for _, v in self.sensors for layer in self.layers],
                        np.int64)

    def parameter_slices(self) -> np.ndarray:
        """Indices of the parameter factors, shape (num_sites, len(estimated))."""
        base = np.arange(len(self.sites))[:, None] * self.site_dim + self._layered_dim
        return base + np.arange(len(self.estimated))[None, :]

    def units(self, variable: str) -> str:
        """Units of one of :meth:`state_variables` (an offset is a log factor: "1")."""
        if variable in STATE_UNITS:
            return STATE_UNITS[variable]
        for sensor, v in self.sensors:
            if variable == seen_name(v, sensor):
                return STATE_UNITS[v]
        return "1"

    def _not_ar1(self) -> np.ndarray:
        """(dim,) bool: False at the model biases, sensor offsets and parameter factors (the AR(1) elements)."""
        mask = np.ones(self.dim, bool)
        mask[self.bias_slices().ravel()] = False
        mask[self.sensor_offset_slices().ravel()] = False
        mask[self.parameter_slices().ravel()] = False
        return mask

    def log_mask(self) -> np.ndarray:
        """(dim,) bool: the elements the filter analyses in log space (all but the model biases, the sensor
        offsets and the parameter factors, which can be negative)."""
        return self._not_ar1()

    def inflation_mask(self) -> np.ndarray | None:
        """(dim,) bool: the elements the filter's multiplicative inflation acts on: all but the model biases,
        sensor offsets and parameter factors, whose spread their AR(1) sets; None when the layout has none."""
        return self._not_ar1() if self.biased or self.sensors or self.estimated else None

    def update_weight(self, weights: dict[str, float]) -> np.ndarray | None:
        """(dim,) float32, the share of its analysis increment each element takes (variable localization,
        ``filter.variable_localization``): ``weights[variable]`` for the state variables named, at every site
        and layer, 1 elsewhere; None when none is named."""
        if not weights:
            return None
        unknown = sorted(set(weights) - set(STATE_VARIABLES))
        if unknown:
            raise ValueError(f"variable localization names {unknown}, not state variables {list(STATE_VARIABLES)}")
        return np.array([weights.get(v, 1.0) for v, _, _ in self.variables()], np.float32)

    def site_of_state(self) -> np.ndarray:
        """Site number of every state element, shape (dim,) (the localization domain)."""
        return np.repeat(np.arange(len(self.sites)), self.site_dim)

"""Parameters of the NPZD-O2 process model and the description of a site.

Two frozen pytrees (NamedTuples, so they pass through ``jit``, ``vmap`` and ``grad`` unchanged):

- :class:`ProcessParams`: biological and mixing rates, uncertain, with a literature range each
  (:data:`PARAM_RANGES`) from which :func:`sample_params` draws ensembles;
- :class:`Site`: what is known about a place: latitude, layer thicknesses, offshore boundary and the volume
  that receives the river.

The state layout (:data:`TRACERS`, :data:`LAYERS`) lives here too so that a site's offshore boundary can be
written in it; :mod:`emulators.process_model` re-exports it.

References:
    Fasham, Ducklow and McKelvie 1990, J. Mar. Res. 48, 591-639 (NPZD structure and most rate values).
    Eppley 1972, Fish. Bull. 70, 1063-1085 (temperature dependence of phytoplankton growth).
    Parker 1993, Ecol. Model. 66, 113-120 (ammonium preference, total N limitation bounded by 1).
    Brzezinski 1985, J. Phycol. 21, 347-357 (Si:N of diatoms, about 1).
    Anderson 1995, Deep-Sea Res. I 42, 1675-1680 (oxygen to nitrogen stoichiometry).
    Wanninkhof 2014, Limnol. Oceanogr. Methods 12, 351-362 (gas transfer velocity).
    Lacroix and Gregoire 2002, J. Mar. Syst. 33, 427-455 (NPZD-O2 box models of coastal sites).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Full float32 matrix products on every backend: JAX's GPU default (TF32) keeps 10 mantissa bits, which
# loses three digits in Kalman analyses and implicit solves. A precision the user set is kept.
if jax.config.jax_default_matmul_precision is None:
    jax.config.update("jax_default_matmul_precision", "highest")

__all__ = [
    "TRACERS",
    "NUM_TRACERS",
    "LAYERS",
    "ProcessParams",
    "PARAM_RANGES",
    "PARAM_DOCS",
    "LOG_UNIFORM_PARAMS",
    "Site",
    "default_params",
    "sample_params",
    "default_site",
    "closed_site",
    "OXYGEN_PER_NITRATE_UPTAKE",
    "OXYGEN_PER_AMMONIUM_UPTAKE",
    "OXYGEN_PER_NITRIFICATION",
]

# State layout: per layer, in this order; concentrations in mmol m-3 (phytoplankton, zooplankton and detritus
# in mmol N m-3, oxygen in mmol O2 m-3). The state of a site is layer-major: all surface tracers, then all
# bottom tracers.
TRACERS: tuple[str, ...] = (
    "nitrate",
    "ammonium",
    "phosphate",
    "silicate",
    "phytoplankton",
    "zooplankton",
    "detritus",
    "oxygen",
)
NUM_TRACERS = len(TRACERS)
LAYERS: tuple[str, ...] = ("surface", "bottom")

# Oxygen stoichiometry, mol O2 per mol N (Anderson 1995: C106 H175 O42 N16 P, 150 O2 for full oxidation).
# New production on nitrate releases the oxygen of nitrate reduction as well; regenerated production on
# ammonium only that of carbon fixation; nitrification takes 2 O2 per NH4.
OXYGEN_PER_AMMONIUM_UPTAKE = 118.0 / 16.0
OXYGEN_PER_NITRIFICATION = 2.0
OXYGEN_PER_NITRATE_UPTAKE = OXYGEN_PER_AMMONIUM_UPTAKE + OXYGEN_PER_NITRIFICATION


class ProcessParams(NamedTuple):
    """Uncertain rates of the process model. Each field is a float or an array (a batch of members).

    Rates are per day at the reference temperature of 20 degC unless stated; ranges in :data:`PARAM_RANGES`,
    one line of documentation per field in :data:`PARAM_DOCS`.
    """

    max_growth_rate: float = 1.4
    growth_temperature_coefficient: float = 0.0633
    light_saturation: float = 60.0
    half_sat_nitrate: float = 0.5
    half_sat_ammonium: float = 0.1
    half_sat_phosphate: float = 0.03
    half_sat_silicate: float = 1.0
    phyto_mortality: float = 0.05
    phyto_sinking: float = 0.5
    max_grazing_rate: float = 1.0
    grazing_half_sat: float = 1.0
    assimilation_efficiency: float = 0.75
    zoo_excretion: float = 0.1
    zoo_mortality: float = 0.2
    remineralisation_rate: float = 0.1
    detritus_sinking: float = 5.0
    nitrification_rate: float = 0.1
    heterotroph_q10: float = 2.0
    background_attenuation: float = 0.15
    phyto_attenuation: float = 0.03
    phosphorus_to_nitrogen: float = 1.0 / 16.0
    silicon_to_nitrogen: float = 0.8
    mixed_exchange_velocity: float = 20.0
    stratified_exchange_velocity: float = 0.2


# The documentation of ProcessParams, one entry per field: "unit; meaning; literature range; reference (its value)".
# Defaults are the field defaults of ProcessParams.
PARAM_DOCS: dict[str, str] = {
    "max_growth_rate": "d-1; phytoplankton maximum growth rate at 20 degC; 0.6-3.0; Eppley 1972, Fasham et al. 1990",
    "growth_temperature_coefficient": (
        "degC-1; Eppley exponent, growth ~ exp(c (T - 20)); "
        "0.04-0.07; Eppley 1972 (0.0633)"
    ),
    "light_saturation": (
        "umol photons m-2 s-1 (daily mean PAR); light limitation 1 - exp(-I/Ik); "
        "25-150; Webb et al. 1974"
    ),
    "half_sat_nitrate": "mmol N m-3; Michaelis-Menten half-saturation for nitrate; 0.1-2.0; Fasham et al. 1990 (0.5)",
    "half_sat_ammonium": "mmol N m-3; half-saturation for ammonium; 0.02-0.5; Fasham et al. 1990 (0.05)",
    "half_sat_phosphate": "mmol P m-3; half-saturation for phosphate; 0.005-0.1; Lacroix and Gregoire 2002",
    "half_sat_silicate": (
        "mmol Si m-3; half-saturation for silicate; "
        "0.3-3.0; Brzezinski 1985, Lacroix and Gregoire 2002"
    ),
    "phyto_mortality": "d-1; linear phytoplankton mortality to detritus; 0.01-0.1; Fasham et al. 1990 (0.05)",
    "phyto_sinking": "m d-1; phytoplankton sinking velocity; 0.1-2.0; Smayda 1970",
    "max_grazing_rate": "d-1; zooplankton maximum grazing at 20 degC; 0.5-2.0; Fasham et al. 1990 (1.0)",
    "grazing_half_sat": "mmol N m-3; Holling III grazing half-saturation; 0.5-2.0; Fasham et al. 1990 (1.0)",
    "assimilation_efficiency": (
        "1; fraction of grazing assimilated, the rest to detritus; "
        "0.6-0.9; Fasham et al. 1990 (0.75)"
    ),
    "zoo_excretion": "d-1; zooplankton excretion to ammonium at 20 degC; 0.05-0.2; Fasham et al. 1990 (0.1)",
    "zoo_mortality": (
        "(mmol N m-3)-1 d-1; quadratic zooplankton mortality to detritus; "
        "0.05-0.5; Steele and Henderson 1992"
    ),
    "remineralisation_rate": "d-1; detritus to ammonium at 20 degC; 0.03-0.3; Fasham et al. 1990 (0.05)",
    "detritus_sinking": "m d-1; detritus sinking velocity; 1-20; Fasham et al. 1990 (10)",
    "nitrification_rate": "d-1; ammonium to nitrate at 20 degC; 0.02-0.3; Yool et al. 2007",
    "heterotroph_q10": "1; Q10 of grazing, excretion, remineralisation and nitrification; 1.5-3.0; Eppley 1972",
    "background_attenuation": "m-1; PAR attenuation by water, CDOM and sediment; 0.05-0.4; coastal Kd(PAR) range",
    "phyto_attenuation": "m-1 (mmol N m-3)-1; self-shading by phytoplankton; 0.02-0.06; Fasham et al. 1990 (0.03)",
    "phosphorus_to_nitrogen": "mol P mol N-1; Redfield ratio of organic matter; 1/20-1/12; Redfield 1963 (1/16)",
    "silicon_to_nitrogen": "mol Si mol N-1; Si:N of the community (diatom share); 0.4-1.1; Brzezinski 1985",
    "mixed_exchange_velocity": (
        "m d-1; surface-bottom exchange velocity when well mixed (winter); "
        "5-50 (Kz 2e-3..2e-2 m2 s-1 over 30 m); Lacroix and Gregoire 2002"
    ),
    "stratified_exchange_velocity": (
        "m d-1; surface-bottom exchange velocity when stratified; "
        "0.05-1.0 (Kz 2e-5..3e-4 m2 s-1); Lacroix and Gregoire 2002"
    ),
}

PARAM_RANGES: dict[str, tuple[float, float]] = {
    "max_growth_rate": (0.6, 3.0),
    "growth_temperature_coefficient": (0.04, 0.07),
    "light_saturation": (25.0, 150.0),
    "half_sat_nitrate": (0.1, 2.0),
    "half_sat_ammonium": (0.02, 0.5),
    "half_sat_phosphate": (0.005, 0.1),
    "half_sat_silicate": (0.3, 3.0),
    "phyto_mortality": (0.01, 0.1),
    "phyto_sinking": (0.1, 2.0),
    "max_grazing_rate": (0.5, 2.0),
    "grazing_half_sat": (0.5, 2.0),
    "assimilation_efficiency": (0.6, 0.9),
    "zoo_excretion": (0.05, 0.2),
    "zoo_mortality": (0.05, 0.5),
    "remineralisation_rate": (0.03, 0.3),
    "detritus_sinking": (1.0, 20.0),
    "nitrification_rate": (0.02, 0.3),
    "heterotroph_q10": (1.5, 3.0),
    "background_attenuation": (0.05, 0.4),
    "phyto_attenuation": (0.02, 0.06),
    "phosphorus_to_nitrogen": (1.0 / 20.0, 1.0 / 12.0),
    "silicon_to_nitrogen": (0.4, 1.1),
    "mixed_exchange_velocity": (5.0, 50.0),
    "stratified_exchange_velocity": (0.05, 1.0),
}

# Ranges spanning a factor of three or more are sampled log-uniformly (a rate is as likely halved as doubled).
LOG_UNIFORM_PARAMS: frozenset[str] = frozenset(
    name for name, (low, high) in PARAM_RANGES.items() if high / low >= 3.0
)

assert set(PARAM_RANGES) == set(ProcessParams._fields) == set(PARAM_DOCS)  # module invariant, not user input


def default_params() -> ProcessParams:
    """The default parameters as float32 JAX scalars."""
    return ProcessParams(*(jnp.asarray(v, dtype=jnp.float32) for v in ProcessParams()))


def sample_params(
    key: jax.Array,
    num_samples: int,
    names: tuple[str, ...] | None = None,
    base: ProcessParams | None = None,
) -> ProcessParams:
    """Draw parameter sets uniformly within :data:`PARAM_RANGES` (log-uniformly for :data:`LOG_UNIFORM_PARAMS`).

    Args:
        key: PRNG key.
        num_samples: number of parameter sets.
        names: fields to draw; the others keep the value of ``base``. ``None`` draws all.
        base: values of the fields not drawn; defaults to :class:`ProcessParams` defaults.

    Returns:
        ProcessParams whose every field has shape ``(num_samples,)``; ``vmap`` over it with ``in_axes=0``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    names = ProcessParams._fields if names is None else tuple(names)
    unknown = [n for n in names if n not in PARAM_RANGES]
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; valid names are {list(ProcessParams._fields)}")
    base = ProcessParams() if base is None else base
    keys = jax.random.split(key, len(ProcessParams._fields))
    values = {}
    for field_key, name in zip(keys, ProcessParams._fields):
        if name not in names:
            values[name] = jnp.broadcast_to(jnp.asarray(getattr(base, name), jnp.float32), (num_samples,))
            continue
        low, high = PARAM_RANGES[name]
        u = jax.random.uniform(field_key, (num_samples,), dtype=jnp.float32)
        if name in LOG_UNIFORM_PARAMS:
            values[name] = jnp.exp(np.log(low) + u * (np.log(high) - np.log(low)))
        else:
            values[name] = low + u * (high - low)
        values[name] = jnp.clip(values[name], low, high)
    return ProcessParams(**values)


class Site(NamedTuple):
    """What is known about a site; a pytree, so a network of sites is a Site with a leading batch axis.

    Attributes:
        latitude: degrees north (clear-sky PAR is computed from it by :mod:`emulators.forcing`).
        layer_thickness: shape ``(num_layers,)``, m; surface layer first.
        offshore_exchange_rate: d-1; fraction of each layer renewed by offshore water per day (0 closes it):
            one rate, or shape ``(num_layers,)``.
        offshore_state: shape ``(num_layers * NUM_TRACERS,)``, mmol m-3; concentrations of the offshore
            water in the state layout.
        river_volume: m3; volume of the surface layer that the river discharge dilutes into (dilution rate
            = discharge * 86400 / river_volume, d-1).
        air_sea_exchange: 1 to exchange oxygen with the atmosphere, 0 to switch it off (closed set-ups).
    """

    latitude: float | jax.Array
    layer_thickness: jax.Array
    offshore_exchange_rate: float | jax.Array
    offshore_state: jax.Array
    river_volume: float | jax.Array
    air_sea_exchange: float | jax.Array

    @property
    def num_layers(self) -> int:
        return int(np.shape(self.layer_thickness)[-1])


# Offshore water of a temperate (north-western Mediterranean-like) shelf, surface then bottom.
_OFFSHORE_SURFACE = (1.0, 0.1, 0.06, 1.5, 0.3, 0.2, 0.2, 230.0)
_OFFSHORE_BOTTOM = (4.0, 0.1, 0.25, 4.0, 0.05, 0.05, 0.2, 220.0)


def default_site(
    num_layers: int = 2,
    latitude: float = 43.24,
    layer_thickness: tuple[float, ...] | None = None,
) -> Site:
    """A temperate coastal site (defaults: SOMLIT Marseille-Frioul, 43.24 N, 60 m split 10 m + 50 m).

    With one layer, the layer is the surface layer of the default (10 m) and the bottom is the seabed.
    """
    if num_layers not in (1, 2):
        raise ValueError(f"num_layers must be 1 or 2, got {num_layers}")
    if layer_thickness is None:
        layer_thickness = (10.0, 50.0)[:num_layers]
    if len(layer_thickness) != num_layers:
        raise ValueError(
            f"layer_thickness has {len(layer_thickness)} values for num_layers={num_layers}: {layer_thickness}"
        )
    if any(h <= 0 for h in layer_thickness):
        raise ValueError(f"layer_thickness must be positive, got {layer_thickness}")
    offshore = (_OFFSHORE_SURFACE + _OFFSHORE_BOTTOM)[: num_layers * NUM_TRACERS]
    return Site(
        latitude=_f32(latitude),
        layer_thickness=_f32(layer_thickness),
        offshore_exchange_rate=_f32(0.02),
        offshore_state=_f32(offshore),
        river_volume=_f32(5.0e9),
        air_sea_exchange=_f32(1.0),
    )


def _f32(value) -> jax.Array:
    # device_put, not jnp.asarray: an eager conversion compiles a small program per new shape, which
    # a scheduled cycle process pays for every field (tens of milliseconds each).
    return jax.device_put(np.asarray(value, np.float32))


def closed_site(num_layers: int = 2, latitude: float = 43.24) -> Site:
    """The default site with no offshore exchange and no air-sea exchange (river is off when its discharge is
    zero in the forcing): total nitrogen, phosphorus and silicon are then conserved."""
    return default_site(num_layers, latitude)._replace(
        offshore_exchange_rate=jnp.float32(0.0), air_sea_exchange=jnp.float32(0.0)
    )

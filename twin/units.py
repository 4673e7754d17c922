"""Canonical variables, their units, and conversion of native units at the data edge.

Canonical units (DESIGN section 3): degC, PSS-78, mmol m-3 for oxygen and nutrients, mg m-3 for
chlorophyll. A unit that is not in the table is an error naming it, never a guess.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# Molar masses (g/mol) and the molar volume of O2 at STP (L/mol, Garcia and Gordon 1992 use 22.3916).
_N, _P, _SI, _O2 = 14.0067, 30.973762, 28.0855, 31.9988
_O2_MOLAR_VOLUME = 22.3916
_SEAWATER_DENSITY = 1025.0  # kg m-3, nominal: converts per-kg to per-volume concentrations

CANONICAL_UNITS: dict[str, str] = {
    "temperature": "degC",
    "salinity": "1e-3",                 # PSS-78, dimensionless
    "oxygen": "mmol m-3",
    "oxygen_saturation": "percent",
    "nitrate": "mmol m-3",
    "nitrite": "mmol m-3",
    "nitrate_nitrite": "mmol m-3",
    "ammonium": "mmol m-3",
    "phosphate": "mmol m-3",
    "silicate": "mmol m-3",
    "chlorophyll": "mg m-3",
    "fluorescence": "1",                # raw sensor units; chlorophyll only through a stated calibration
    "turbidity": "NTU",
    "par": "umol m-2 s-1",
    "ph": "1",
    "poc": "mg m-3",
    "pon": "mg m-3",
    "spm": "g m-3",
    "delta15n": "permil",
    "delta13c": "permil",
    "conductivity": "S m-1",
    "depth": "m",
    "pressure": "dbar",
    "water_level": "m",
    "air_temperature": "degC",
    "air_pressure": "hPa",
    "relative_humidity": "percent",
    "wind_speed": "m s-1",
    "wind_direction": "degree",
    "precipitation": "mm",
}

CF_STANDARD_NAMES: dict[str, str] = {
    "temperature": "sea_water_temperature",
    "salinity": "sea_water_practical_salinity",
    "oxygen": "mole_concentration_of_dissolved_molecular_oxygen_in_sea_water",
    "oxygen_saturation": "fractional_saturation_of_oxygen_in_sea_water",
    "nitrate": "mole_concentration_of_nitrate_in_sea_water",
    "nitrite": "mole_concentration_of_nitrite_in_sea_water",
    "ammonium": "mole_concentration_of_ammonium_in_sea_water",
    "phosphate": "mole_concentration_of_phosphate_in_sea_water",
    "silicate": "mole_concentration_of_silicate_in_sea_water",
    "chlorophyll": "mass_concentration_of_chlorophyll_a_in_sea_water",
    "turbidity": "sea_water_turbidity",
    "par": "downwelling_photosynthetic_photon_flux_in_sea_water",
    "ph": "sea_water_ph_reported_on_total_scale",
    "conductivity": "sea_water_electrical_conductivity",
    "air_temperature": "air_temperature",
    "air_pressure": "air_pressure",
    "wind_speed": "wind_speed",
    "wind_direction": "wind_from_direction",
}


def _normalise(unit: str) -> str:
    u = unit.strip().lower().replace("µ", "u").replace("μ", "u").replace("**", "").replace("^", "")
    u = u.replace(".", " ").replace("*", " ").replace("/", " / ")
    return " ".join(u.split())


def _scale(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.asarray(x, dtype=float) * factor


_IDENTITY = _scale(1.0)

# (canonical variable, normalised native unit) -> converter. Nutrient "as N"/"as P" is the CDMO usage.
_CONVERSIONS: dict[tuple[str, str], Callable[[np.ndarray], np.ndarray]] = {}


def _register(variables: tuple[str, ...], units: tuple[str, ...], fn) -> None:
    for v in variables:
        for u in units:
            _CONVERSIONS[(v, _normalise(u))] = fn


_MOLAR = ("mmol m-3", "mmol/m3", "millimole/m3", "umol/l", "umol l-1", "umol/dm3", "micromole/l",
          "mmol m3", "umol l")
_NUTRIENTS = ("nitrate", "nitrite", "nitrate_nitrite", "ammonium", "phosphate", "silicate")
_register(("temperature", "air_temperature"), ("degC", "degree_celsius", "degree_Celsius", "celsius",
                                               "deg c", "°c", "c"), _IDENTITY)
_register(("salinity",), ("psu", "pss-78", "pss78", "1e-3", "0.001", "none", "", "ppt"), _IDENTITY)
_register(("oxygen",) + _NUTRIENTS, _MOLAR, _IDENTITY)
_register(("oxygen",), ("ml/l", "ml l-1"), _scale(1000.0 / _O2_MOLAR_VOLUME))
_register(("oxygen",), ("mg/l", "mg l-1", "g m-3"), _scale(1000.0 / _O2))
_register(("oxygen",), ("milligram/m3", "mg m-3", "mg/m3"), _scale(1.0 / _O2))
_register(("oxygen",) + _NUTRIENTS, ("umol/kg", "umol kg-1", "micromole/kg"),
          _scale(_SEAWATER_DENSITY / 1000.0))
_register(("nitrate", "nitrite", "nitrate_nitrite", "ammonium"), ("mg/l as n", "mg/l n", "mg l-1 as n"),
          _scale(1000.0 / _N))
_register(("phosphate",), ("mg/l as p", "mg/l p", "mg l-1 as p"), _scale(1000.0 / _P))
_register(("silicate",), ("mg/l as si", "mg/l si"), _scale(1000.0 / _SI))
_register(("chlorophyll", "poc", "pon"), ("mg m-3", "mg/m3", "ug/l", "ug l-1", "milligram/m3",
                                          "microgram/l"), _IDENTITY)
_register(("oxygen_saturation", "relative_humidity"), ("%", "percent"), _IDENTITY)
_register(("fluorescence",), ("ffu", "fu", "rfu", "1", "none", "raw", "counts"), _IDENTITY)
# Sonde chlorophyll fluorescence reported in chlorophyll-equivalent units (NERRS ChlFluor, ug/L):
# kept as fluorescence, a chlorophyll value only through a stated calibration.
_register(("fluorescence",), ("ug/l", "ug l-1", "mg m-3"), _IDENTITY)
_register(("turbidity",), ("ntu", "fnu"), _IDENTITY)
_register(("par",), ("umol m-2 s-1", "ue m-2 s-1", "umol/m2/s", "microeinstein/m2/s", "ue/m2/s",
                     "umol photons m-2 s-1"), _IDENTITY)
_register(("par",), ("w m-2", "w/m2"), _scale(4.57))  # PAR W m-2 to umol photons m-2 s-1 (McCree 1972)
_register(("ph", "delta15n", "delta13c"), ("1", "none", "", "permil", "per mil", "‰"), _IDENTITY)
_register(("spm",), ("mg/l", "g m-3", "g/m3"), _IDENTITY)
_register(("conductivity",), ("s/m", "s m-1"), _IDENTITY)
_register(("conductivity",), ("ms/cm", "ms cm-1"), _scale(0.1))
_register(("depth", "water_level"), ("m", "meter", "metre", "meters"), _IDENTITY)
_register(("pressure",), ("dbar", "decibar"), _IDENTITY)
_register(("air_pressure",), ("hpa", "mb", "mbar", "millibar"), _IDENTITY)
_register(("wind_speed",), ("m/s", "m s-1", "meter/second"), _IDENTITY)
_register(("wind_direction",), ("degree", "deg", "degrees"), _IDENTITY)
_register(("precipitation",), ("mm", "millimeter"), _IDENTITY)
# Spellings met in SOMLIT extractions and Coriolis-cotier (COAST-HF) CSV headers.
_register(("salinity",), ("pss",), _IDENTITY)
_register(("par",), ("micro einstein m-2 s-1", "microeinstein m-2 s-1", "umol photon m-2 s-1"), _IDENTITY)
_register(("air_pressure",), ("hectopascal",), _IDENTITY)
_register(("fluorescence",), ("relative unit", "relative units"), _IDENTITY)

# Gridded products and CF time series (added with the OceanSITES and gridded readers).
_register(("chlorophyll",), ("milligram m-3", "mg m^-3", "milligram/m^3"), _IDENTITY)
_register(("salinity",), ("1",), _IDENTITY)
_register(("temperature", "air_temperature"), ("k", "kelvin", "degK"), lambda x: np.asarray(x, dtype=float) - 273.15)


def converter(variable: str, unit: str) -> Callable[[np.ndarray], np.ndarray]:
    """Function converting values of ``variable`` from ``unit`` to the canonical unit.

    Raises:
        ValueError: the variable is not canonical, or the unit is not known for it; the message lists
            the units that are.
    """
    if variable not in CANONICAL_UNITS:
        raise ValueError(f"unknown variable {variable!r}; canonical variables: {sorted(CANONICAL_UNITS)}")
    key = (variable, _normalise(unit))
    if key not in _CONVERSIONS:
        known = sorted({u for (v, u) in _CONVERSIONS if v == variable})
        raise ValueError(f"unknown unit {unit!r} for {variable}; expected one of {known}")
    return _CONVERSIONS[key]


def to_canonical(variable: str, unit: str, values) -> np.ndarray:
    """Convert ``values`` of ``variable`` from ``unit`` to the canonical unit (float64 array)."""
    return converter(variable, unit)(values)


# Default observation error standard deviations in canonical units: instrument error plus a typical
# representativeness error for a coastal box. Config overrides per source and variable.
DEFAULT_ERROR_SD: dict[str, float] = {
    "temperature": 0.2, "salinity": 0.1, "oxygen": 8.0, "oxygen_saturation": 3.0,
    "nitrate": 0.3, "nitrite": 0.05, "nitrate_nitrite": 0.3, "ammonium": 0.15, "phosphate": 0.03,
    "silicate": 0.3, "chlorophyll": 0.3, "fluorescence": 0.5, "turbidity": 1.0, "par": 50.0,
    "ph": 0.02, "poc": 20.0, "pon": 3.0, "spm": 0.5, "delta15n": 0.3, "delta13c": 0.3,
    "conductivity": 0.01, "depth": 0.05, "pressure": 0.05, "water_level": 0.05,
    "air_temperature": 0.5, "air_pressure": 1.0, "relative_humidity": 3.0, "wind_speed": 1.0,
    "wind_direction": 20.0, "precipitation": 0.5,
}

"""Astronomical and clear-sky irradiance: solar declination, day length, daily mean clear-sky PAR.

Day of year is zero-based and continuous: 0.0 is 1 January 00:00 UTC, 171.5 is noon on 21 June (non-leap).
All functions are elementwise and broadcast latitude against day of year; with JAX arrays (or under ``jit``
and ``vmap``) they compute in ``jnp``, with NumPy or Python input in NumPy (no dispatch cost when building
forcing).

References:
    Spencer 1971, Search 2(5), 172 (Fourier series for declination and the eccentricity factor).
    Iqbal 1983, An Introduction to Solar Radiation, ch. 1 (sunset hour angle, daily extraterrestrial irradiance).
    Allen et al. 1998, FAO Irrigation and Drainage Paper 56, eq. 37 (clear-sky transmissivity 0.75).
    Kopp and Lean 2011, Geophys. Res. Lett. 38, L01706 (total solar irradiance 1361 W m-2).
    Baker and Frouin 1987, Limnol. Oceanogr. 32, 1370 (PAR share of shortwave, about 0.45).
    McCree 1972, Agric. Meteorol. 10, 443 (4.57 umol photons per J of PAR).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SOLAR_CONSTANT",
    "solar_declination",
    "eccentricity_factor",
    "day_length",
    "daily_extraterrestrial_irradiance",
    "clear_sky_par",
]

SOLAR_CONSTANT = 1361.0  # W m-2, Kopp and Lean 2011
PHOTONS_PER_JOULE_PAR = 4.57  # umol J-1, McCree 1972
SEA_SURFACE_ALBEDO = 0.06  # share of PAR reflected at the sea surface


def _xp(*args):
    """``jnp`` if any argument is a JAX array or tracer, else ``np``."""
    return jnp if any(isinstance(a, jax.Array) for a in args) else np


def _day_angle(day_of_year: jax.Array) -> jax.Array:
    xp = _xp(day_of_year)
    return 2.0 * np.pi * xp.asarray(day_of_year, dtype=float if xp is np else None) / 365.0


def solar_declination(day_of_year: jax.Array) -> jax.Array:
    """Solar declination (degrees) from Spencer 1971 (error below 0.035 degree).

    Args:
        day_of_year: zero-based, continuous (0.0 = 1 January 00:00), any shape.

    Returns:
        declination in degrees, same shape: about +23.44 at the June solstice, -23.44 in December, 0 at equinoxes.
    """
    g = _day_angle(day_of_year)
    xp = _xp(g)
    rad = (
        0.006918
        - 0.399912 * xp.cos(g)
        + 0.070257 * xp.sin(g)
        - 0.006758 * xp.cos(2 * g)
        + 0.000907 * xp.sin(2 * g)
        - 0.002697 * xp.cos(3 * g)
        + 0.00148 * xp.sin(3 * g)
    )
    return xp.degrees(rad)


def eccentricity_factor(day_of_year: jax.Array) -> jax.Array:
    """(mean Earth-Sun distance / distance)^2, Spencer 1971; 1.034 in early January, 0.967 in early July."""
    g = _day_angle(day_of_year)
    xp = _xp(g)
    return (
        1.000110
        + 0.034221 * xp.cos(g)
        + 0.001280 * xp.sin(g)
        + 0.000719 * xp.cos(2 * g)
        + 0.000077 * xp.sin(2 * g)
    )


def _sunset_hour_angle(latitude: jax.Array, day_of_year: jax.Array) -> jax.Array:
    """Sunset hour angle (radians) of the sun's centre, 0 in polar night and pi in polar day."""
    xp = _xp(latitude, day_of_year)
    phi = xp.radians(xp.asarray(latitude))
    delta = xp.radians(solar_declination(day_of_year))
    cos_ws = xp.clip(-xp.tan(phi) * xp.tan(delta), -1.0, 1.0)
    return xp.arccos(cos_ws)


def day_length(latitude: jax.Array, day_of_year: jax.Array) -> jax.Array:
    """Astronomical day length in hours (sun's centre above a flat horizon, no refraction).

    12 h everywhere at the equinoxes; 15.4 h at 45 N on the June solstice; 0 or 24 h in polar night or day.
    """
    return 24.0 / np.pi * _sunset_hour_angle(latitude, day_of_year)


def hourly_sun_height(latitude: float, longitude: float, day0: np.datetime64, num_days: int) -> np.ndarray:
    """(num_days, 24) cosine of the sun's zenith angle at the middle of each UTC hour of the days from ``day0``
    (00:00 UTC), 0 while the sun is below the horizon: the shape of a clear day's light (NumPy)."""
    hours = np.arange(num_days * 24, dtype=np.float64) + 0.5
    times = np.datetime64(day0, "ns") + (hours * 3600e9).astype("timedelta64[ns]")
    day_of_year = (times - times.astype("datetime64[Y]").astype("datetime64[ns]")) / np.timedelta64(1, "D")
    phi = np.radians(latitude)
    delta = np.radians(solar_declination(day_of_year))
    hour_angle = np.radians(15.0 * ((hours % 24.0) + longitude / 15.0 - 12.0))
    cos_zenith = np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.cos(hour_angle)
    return np.maximum(cos_zenith, 0.0).reshape(num_days, 24)


def daily_extraterrestrial_irradiance(latitude: jax.Array, day_of_year: jax.Array) -> jax.Array:
    """Daily mean shortwave irradiance on a horizontal surface at the top of the atmosphere, W m-2 (Iqbal 1983)."""
    xp = _xp(latitude, day_of_year)
    phi = xp.radians(xp.asarray(latitude))
    delta = xp.radians(solar_declination(day_of_year))
    ws = _sunset_hour_angle(latitude, day_of_year)
    geometry = ws * xp.sin(phi) * xp.sin(delta) + xp.cos(phi) * xp.cos(delta) * xp.sin(ws)
    return SOLAR_CONSTANT / np.pi * eccentricity_factor(day_of_year) * xp.maximum(geometry, 0.0)


def clear_sky_par(
    latitude: jax.Array,
    day_of_year: jax.Array,
    transmissivity: float = 0.75,
    par_fraction: float = 0.45,
    surface_albedo: float = SEA_SURFACE_ALBEDO,
) -> jax.Array:
    """Daily mean clear-sky PAR just below the sea surface, umol photons m-2 s-1.

    Extraterrestrial irradiance times a clear-sky transmissivity (FAO-56), the PAR share of shortwave
    (Baker and Frouin 1987), one minus the sea-surface albedo, and 4.57 umol J-1 (McCree 1972). At 45 N this
    gives about 700 umol m-2 s-1 (60 mol m-2 d-1) at the June solstice and 170 (15 mol m-2 d-1) in December.

    Args:
        latitude: degrees north, broadcast against ``day_of_year``.
        day_of_year: zero-based, continuous.
        transmissivity: clear-sky atmospheric transmissivity of shortwave, 1.
        par_fraction: PAR (400-700 nm) share of shortwave energy, 1.
        surface_albedo: fraction reflected at the sea surface, 1.

    Returns:
        daily mean PAR, umol m-2 s-1, broadcast shape of the inputs.
    """
    shortwave = transmissivity * daily_extraterrestrial_irradiance(latitude, day_of_year)
    return shortwave * par_fraction * (1.0 - surface_albedo) * PHOTONS_PER_JOULE_PAR

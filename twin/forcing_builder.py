"""Forcing of every model step at a site, built from the observation table (DESIGN section 4).

Temperature and salinity per layer: daily means of the usable observations, interpolated across short gaps
and filled from a harmonic climatology fitted on the same series across long ones
(``emulators.forcing.fill_series``). PAR and wind speed: the daily means of the site's above-surface
(layer "air") measurements where a day has them (a met mast on a buoy, a weather station), else clear-sky
irradiance from latitude and date scaled by a cloudiness factor, and a fixed wind (the days filled are
reported). River: the seasonal discharge climatology and river-water nutrients of the site's ``river`` config,
if any. A layer without its own series borrows the other layer's (reported). This is the only place where
observations become forcing; the result is plain arrays (``emulators.forcing.Forcing``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xarray as xr

from emulators.forcing import (
    RIVER_WATER,
    Forcing,
    clear_sky_par,
    daily_means,
    day_of_year_of,
    evaluate_climatology,
    fill_series,
    fit_harmonic_climatology,
    make_forcing,
    river_discharge_climatology,
    salinity_river_discharge,
)
from emulators.parameters import Site, default_site
from emulators.solar import SEA_SURFACE_ALBEDO, hourly_sun_height
from twin import flags

FORCING_VARIABLES = ("temperature", "salinity")
# A day's mean needs most of the day: 18 of its 24 hours (wind), or for light the hours that hold three quarters
# of a clear day's light.
MIN_HOURS_PER_DAY = 18
MIN_SUNLIGHT_SHARE = 0.75


class ForcingReport(NamedTuple):
    """Where the forcing came from: per ``variable/layer``, the fraction of days filled from climatology,
    and the source layer when a layer borrowed another's series."""
    filled_fraction: dict[str, float]
    borrowed: dict[str, str]


def days_since(times: np.ndarray, day0: np.datetime64) -> np.ndarray:
    """Float days from ``day0`` (UTC midnight of the first model day)."""
    return (np.asarray(times, "datetime64[ns]") - np.datetime64(day0, "ns")) / np.timedelta64(1, "D")


def usable_series(table: xr.Dataset, site: str, variable: str, layer: str, exclude: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(times, values) of a site's usable observations of ``variable`` in ``layer`` (usable QC, finite; rows
    marked in ``exclude``, such as the withheld ones, left out)."""
    sel = ((table["site"].values == site) & (table["variable"].values == variable)
           & (table["layer"].values == layer) & np.isin(table["qc"].values, flags.USABLE_QC)
           & np.isfinite(table["value"].values))
    if exclude is not None:
        sel &= ~exclude
    return table["time"].values[sel], table["value"].values[sel]


def causal_fill(daily: np.ndarray, max_gap_days: float, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Operational gap filling: each day's value uses no later observation.

    The observed daily mean where there is one; else the last observed daily mean if at most
    ``max_gap_days`` old; else ``fallback`` (T,) (the other layer, or the pre-period climatology). Returns
    (values, filled).
    """
    days = np.arange(daily.size)
    ok = np.isfinite(daily)
    last = np.maximum.accumulate(np.where(ok, days, -1))
    recent = (last >= 0) & (days - last <= max_gap_days)
    values = np.where(ok, daily, np.where(recent, daily[np.maximum(last, 0)], fallback))
    return values, ~ok


def observed_daily_series(table: xr.Dataset, site: str, variable: str, layers: tuple[str, ...],
                          day0: np.datetime64, num_days: int, max_gap_days: float = 20.0,
                          n_harmonics: int = 2, mode: str = "interpolate"
                          ) -> tuple[np.ndarray, dict[str, float], dict[str, str]]:
    """A gap-free daily series per layer, shape (num_days, num_layers), from the observations.

    ``mode="interpolate"`` (hindcasts): anomalies interpolated across gaps, climatology fitted on the whole
    series. ``mode="causal"`` (operations, and hindcasts that must reproduce them): a day's value uses no
    later observation (:func:`causal_fill`); a layer falls back to the other layer's value of the same day,
    and the climatology is fitted on observations before ``day0`` only (when there are none, the first
    observed value stands in before the record starts: the one exception, and operational cycles do not run
    before their first data).

    Raises:
        ValueError: no layer of ``site`` has enough ``variable`` observations to fit a climatology.
    """
    days = np.arange(num_days, dtype=np.float64)
    raw = {layer: usable_series(table, site, variable, layer) for layer in layers}
    need = 2 * n_harmonics + 2
    usable = {layer: v for layer, v in raw.items() if v[1].size >= need}
    if not usable:
        counts = {layer: int(v[1].size) for layer, v in raw.items()}
        raise ValueError(f"site {site!r}: not enough usable {variable} observations to build forcing "
                         f"(need {need} per layer, have {counts})")
    if mode == "causal":
        return _causal_series(raw, usable, variable, layers, day0, num_days, max_gap_days, n_harmonics)
    out = np.empty((num_days, len(layers)))
    filled, borrowed = {}, {}
    for j, layer in enumerate(layers):
        source = layer if layer in usable else next(iter(usable))
        if source != layer:
            borrowed[f"{variable}/{layer}"] = source
        times, values = usable[source]
        t = days_since(times, day0)
        clim = fit_harmonic_climatology(t, values, n_harmonics=n_harmonics)
        daily = daily_means(t, values, days)
        ok = np.isfinite(daily)
        series, was_filled = fill_series(days + 0.5, days[ok] + 0.5, daily[ok], clim, max_gap_days)
        out[:, j] = series
        filled[f"{variable}/{layer}"] = float(was_filled.mean())
    return out, filled, borrowed


def _causal_series(raw, usable, variable, layers, day0, num_days, max_gap_days, n_harmonics):
    days = np.arange(num_days, dtype=np.float64)
    daily = {}
    for layer, (times, values) in raw.items():
        t = days_since(times, day0)
        daily[layer] = daily_means(t, values, days) if values.size else np.full(num_days, np.nan)
    # Fallback of last resort: the pre-period climatology, else the first observed value of any layer.
    first = next(iter(usable.values()))
    t_first = days_since(first[0], day0)
    before = t_first < 0
    if before.sum() >= 2 * n_harmonics + 2:
        clim = fit_harmonic_climatology(t_first[before], first[1][before], n_harmonics=n_harmonics)
        base = evaluate_climatology(clim, days + 0.5)
    else:
        base = np.full(num_days, first[1][np.argmin(t_first)])
    out = np.empty((num_days, len(layers)))
    filled, borrowed = {}, {}
    own = {layer: causal_fill(daily[layer], max_gap_days, np.full(num_days, np.nan))[0] for layer in layers}
    for j, layer in enumerate(layers):
        others = [own[o] for o in layers if o != layer]
        fallback = base.copy()
        for other in others:  # the other layer's value of the same day before the climatology
            fallback = np.where(np.isfinite(other), other, fallback)
        if layer not in usable and others:
            borrowed[f"{variable}/{layer}"] = next(o for o in layers if o != layer)
        out[:, j], was_filled = causal_fill(daily[layer], max_gap_days, fallback)
        filled[f"{variable}/{layer}"] = float(was_filled.mean())
    return out, filled, borrowed


def daily_meteorology(table: xr.Dataset, site: str, variable: str, day0: np.datetime64, num_days: int,
                      sun_at: tuple[float, float] | None = None) -> np.ndarray | None:
    """(num_days,) daily means of a site's usable above-surface ``variable`` measurements (layer "air"), from
    their hourly means; None when the site has no such measurement.

    Without ``sun_at``: the mean of the hours measured, NaN on a day with fewer than ``MIN_HOURS_PER_DAY``. With
    ``sun_at`` (latitude, longitude), for PAR, weighted by the shape of a clear day's light there
    (``emulators.solar.hourly_sun_height``, computed only when the site has measurements): the day's mean is
    the light measured over the light a clear sky would have given in the same hours, times the clear day's
    mean (the mean of the 24 hours when all were measured), NaN on a day whose measured hours hold less than
    ``MIN_SUNLIGHT_SHARE`` of its clear-sky light. Night hours then count for nothing, measured
    or not (stations flag night-time PAR), and a day cut by a gap keeps the shape of the sun.
    """
    times, values = usable_series(table, site, variable, "air")
    if not values.size:
        return None
    hour = np.floor(days_since(times, day0) * 24.0).astype(np.int64)
    inside = (hour >= 0) & (hour < num_days * 24)
    hours, where = np.unique(hour[inside], return_inverse=True)
    hourly = np.bincount(where, values[inside]) / np.bincount(where)
    day = hours // 24
    if sun_at is None:
        count = np.bincount(day, minlength=num_days)
        total = np.bincount(day, hourly, minlength=num_days)
        return np.where(count >= MIN_HOURS_PER_DAY, total / np.maximum(count, 1), np.nan)
    sun = hourly_sun_height(*sun_at, day0, num_days)
    light = np.bincount(day, hourly, minlength=num_days)
    clear_measured = np.bincount(day, sun.reshape(-1)[hours], minlength=num_days)
    clear_day = sun.sum(axis=1)
    enough = (clear_day > 0) & (clear_measured >= MIN_SUNLIGHT_SHARE * clear_day)
    return np.where(enough, light / np.maximum(clear_measured, 1e-12) * clear_day / 24.0, np.nan)


def build_site_forcing(table: xr.Dataset, site: str, latitude: float, layers: tuple[str, ...],
                       day0: np.datetime64, num_days: int, *, longitude: float = 0.0, cloudiness: float = 0.25,
                       max_gap_days: float = 20.0, wind_speed: float = 5.0,
                       mode: str = "interpolate", river=None, model_site: Site | None = None
                       ) -> tuple[Forcing, ForcingReport]:
    """Forcing of one site on ``num_days`` daily steps from ``day0``.

    Args:
        table: canonical observation table (after QC).
        layers: the model layers, surface first ("surface", "bottom").
        longitude: degrees east (the sun's course in UTC, for a day's mean of measured PAR).
        cloudiness: mean fractional reduction of clear-sky PAR, on the days PAR is not measured.
        wind_speed: m s-1, on the days wind is not measured.
        mode: "interpolate" or "causal" (see :func:`observed_daily_series`).
        river: the site's ``twin.config.RiverConfig``, or None (no river).
        model_site: the process model's ``emulators.parameters.Site`` of this station, whose surface exchange
            and river volume a discharge taken from salinity needs (``default_site`` when None).
    """
    temperature, filled_t, borrowed_t = observed_daily_series(
        table, site, "temperature", layers, day0, num_days, max_gap_days, mode=mode)
    salinity, filled_s, borrowed_s = observed_daily_series(
        table, site, "salinity", layers, day0, num_days, max_gap_days, mode=mode)
    times = np.datetime64(day0, "ns") + np.arange(num_days) * np.timedelta64(1, "D")
    doy = day_of_year_of(times)
    par = np.asarray(clear_sky_par(latitude, doy + 0.5)) * (1.0 - cloudiness)
    wind = np.full(num_days, float(wind_speed))
    met_filled = {}
    measured_par = daily_meteorology(table, site, "par", day0, num_days, sun_at=(latitude, longitude))
    if measured_par is not None:  # the model's PAR is just below the surface
        par = np.where(np.isfinite(measured_par), measured_par * (1.0 - SEA_SURFACE_ALBEDO), par)
        met_filled["par/air"] = float(np.isnan(measured_par).mean())
    measured_wind = daily_meteorology(table, site, "wind_speed", day0, num_days)
    if measured_wind is not None:
        wind = np.where(np.isfinite(measured_wind), measured_wind, wind)
        met_filled["wind_speed/air"] = float(np.isnan(measured_wind).mean())
    rivers = {}
    if river is not None:
        rivers = {f"river_{nutrient}": getattr(river, nutrient) for nutrient in RIVER_WATER}
        if river.discharge_from_salinity:
            if river.offshore_salinity is None:
                raise ValueError(f"site {site!r}: river.offshore_salinity is not resolved (twin.hindcast."
                                 f"resolve_boundaries fills it from the data)")
            if model_site is None:
                model_site = default_site(len(layers), latitude)
            surface_exchange = float(np.ravel(model_site.offshore_exchange_rate)[0])
            rivers["river_discharge"] = salinity_river_discharge(salinity[:, 0], river.offshore_salinity,
                                                                 surface_exchange, float(model_site.river_volume))
        else:
            rivers["river_discharge"] = river_discharge_climatology(
                doy + 0.5, river.mean_discharge_m3s, river.seasonal_amplitude, river.peak_day_of_year)
    forcing = make_forcing(temperature=temperature, salinity=salinity, day_of_year=doy, par=par,
                           wind_speed=wind, **rivers)
    return forcing, ForcingReport({**filled_t, **filled_s, **met_filled}, {**borrowed_t, **borrowed_s})

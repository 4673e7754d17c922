"""Forcing of the process model: a value on every model step (daily), gaps included.

A :class:`Forcing` holds arrays on the model's daily time axis (axis 0). It is built from observed series
(:func:`fit_harmonic_climatology`, :func:`fill_series`), from astronomy (:func:`clear_sky_par`), or
synthetically (:func:`synthetic_forcing`), and changed for scenarios (:class:`ForcingChange`,
:func:`apply_change`). NumPy and JAX only: the twin turns observation tables into arrays before calling here.

Units:
    temperature     (T, L) degC, per layer (surface first)
    salinity        (T, L) PSS-78, per layer
    par             (T,)   umol photons m-2 s-1, daily mean just below the surface
    wind_speed      (T,)   m s-1 at 10 m
    mixing_index    (T,)   1, 0 stratified .. 1 well mixed (see :func:`mixing_index_from_temperature`)
    river_discharge (T,)   m3 s-1
    river_nitrate, river_ammonium, river_phosphate, river_silicate  (T,) mmol m-3 in river water
    day_of_year     (T,)   zero-based, continuous (0.0 = 1 January 00:00 UTC)
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np

from emulators.solar import clear_sky_par, day_length, solar_declination

__all__ = [
    "Forcing",
    "FORCING_FIELDS",
    "HarmonicClimatology",
    "ForcingChange",
    "ChangeOp",
    "forcing_at",
    "num_steps",
    "clear_sky_par",
    "solar_declination",
    "day_length",
    "fit_harmonic_climatology",
    "evaluate_climatology",
    "fill_series",
    "daily_means",
    "mixing_index_from_temperature",
    "make_forcing",
    "synthetic_forcing",
    "RIVER_WATER",
    "river_discharge_climatology",
    "salinity_river_discharge",
    "apply_change",
    "apply_changes",
    "day_of_year_of",
]

DAYS_PER_YEAR = 365.25


class Forcing(NamedTuple):
    """Forcing on the model's daily time axis (axis 0, length T); see the module docstring for units.

    A single step (``forcing_at(forcing, t)``) is the same NamedTuple without the time axis.
    """

    temperature: jax.Array
    salinity: jax.Array
    par: jax.Array
    wind_speed: jax.Array
    mixing_index: jax.Array
    river_discharge: jax.Array
    river_nitrate: jax.Array
    river_ammonium: jax.Array
    river_phosphate: jax.Array
    river_silicate: jax.Array
    day_of_year: jax.Array


FORCING_FIELDS: tuple[str, ...] = Forcing._fields


def forcing_at(forcing: Forcing, t: int | jax.Array) -> Forcing:
    """The forcing of step ``t`` (time axis removed)."""
    return jax.tree_util.tree_map(lambda a: a[t], forcing)


def num_steps(forcing: Forcing) -> int:
    """Number of steps T on the forcing's time axis."""
    return int(np.shape(forcing.par)[0])


def day_of_year_of(times: np.ndarray) -> np.ndarray:
    """Zero-based continuous day of year of datetime64 values (UTC)."""
    times = np.asarray(times, dtype="datetime64[ns]")
    year_start = times.astype("datetime64[Y]").astype("datetime64[ns]")
    return (times - year_start) / np.timedelta64(1, "D")


# --------------------------------------------------------------------------------------------------------------
# Harmonic climatology and gap filling


class HarmonicClimatology(NamedTuple):
    """value(t) = mean + sum_k cos_coef[k] cos(2 pi (k+1) t / period) + sin_coef[k] sin(...).

    Attributes:
        mean: the constant term, units of the series.
        cos_coef, sin_coef: shape ``(n_harmonics,)``.
        residual_sd: standard deviation of the observations about the fit (ddof = number of coefficients).
        period: days (365.25 by default).
    """

    mean: float
    cos_coef: np.ndarray
    sin_coef: np.ndarray
    residual_sd: float
    period: float = DAYS_PER_YEAR


def _harmonic_design(times_days: np.ndarray, n_harmonics: int, period: float) -> np.ndarray:
    phase = 2.0 * np.pi * np.asarray(times_days, dtype=np.float64)[:, None] / period
    k = np.arange(1, n_harmonics + 1)[None, :]
    return np.concatenate([np.ones_like(phase), np.cos(k * phase), np.sin(k * phase)], axis=1)


def fit_harmonic_climatology(
    times_days: np.ndarray,
    values: np.ndarray,
    n_harmonics: int = 2,
    period: float = DAYS_PER_YEAR,
) -> HarmonicClimatology:
    """Least-squares fit of a mean and ``n_harmonics`` annual harmonics to a series; NaNs are ignored.

    Args:
        times_days: shape ``(N,)``, days (any origin shared with later evaluation, e.g. day of year or days
            since an epoch; only the phase within ``period`` matters).
        values: shape ``(N,)``.
        n_harmonics: number of harmonics (1 annual, 2 annual + semi-annual, ...).
        period: days.

    Raises:
        ValueError: if fewer finite observations than 2 * n_harmonics + 2 remain, or shapes differ.
    """
    times_days = np.asarray(times_days, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if times_days.shape != values.shape or times_days.ndim != 1:
        raise ValueError(
            f"times_days and values must be 1-D of the same shape, got {times_days.shape} and {values.shape}"
        )
    if n_harmonics < 0:
        raise ValueError(f"n_harmonics must be >= 0, got {n_harmonics}")
    ok = np.isfinite(times_days) & np.isfinite(values)
    num_coef = 2 * n_harmonics + 1
    if ok.sum() < num_coef + 1:
        raise ValueError(
            f"need at least {num_coef + 1} finite observations to fit {n_harmonics} harmonics, got {ok.sum()}"
        )
    design = _harmonic_design(times_days[ok], n_harmonics, period)
    coef, *_ = np.linalg.lstsq(design, values[ok], rcond=None)
    residual = values[ok] - design @ coef
    residual_sd = float(np.sqrt(np.sum(residual**2) / (ok.sum() - num_coef)))
    return HarmonicClimatology(
        mean=float(coef[0]),
        cos_coef=coef[1 : 1 + n_harmonics],
        sin_coef=coef[1 + n_harmonics :],
        residual_sd=residual_sd,
        period=float(period),
    )


def evaluate_climatology(climatology: HarmonicClimatology, times_days: np.ndarray) -> np.ndarray:
    """The climatology at ``times_days`` (same time origin as the fit), shape of ``times_days``."""
    times_days = np.asarray(times_days, dtype=np.float64)
    n = len(climatology.cos_coef)
    design = _harmonic_design(times_days.ravel(), n, climatology.period)
    coef = np.concatenate([[climatology.mean], climatology.cos_coef, climatology.sin_coef])
    return (design @ coef).reshape(times_days.shape)


def daily_means(obs_times: np.ndarray, obs_values: np.ndarray, day_starts: np.ndarray) -> np.ndarray:
    """Mean of the finite observations within each day ``[day_starts[i], day_starts[i] + 1)``, NaN where none.

    Use it to bring high-frequency series (buoys every 10 min) to the model's daily step before
    :func:`fill_series`. Times in days on a common origin.
    """
    obs_times = np.asarray(obs_times, dtype=np.float64)
    obs_values = np.asarray(obs_values, dtype=np.float64)
    day_starts = np.asarray(day_starts, dtype=np.float64)
    ok = np.isfinite(obs_times) & np.isfinite(obs_values)
    idx = np.searchsorted(day_starts, obs_times[ok], side="right") - 1
    inside = (idx >= 0) & (obs_times[ok] < day_starts[np.clip(idx, 0, None)] + 1.0)
    idx, vals = idx[inside], obs_values[ok][inside]
    sums = np.bincount(idx, weights=vals, minlength=len(day_starts))
    counts = np.bincount(idx, minlength=len(day_starts))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def fill_series(
    target_times: np.ndarray,
    obs_times: np.ndarray,
    obs_values: np.ndarray,
    climatology: HarmonicClimatology,
    max_gap_days: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate a series onto ``target_times`` and fill its gaps from a climatology.

    The anomaly about the climatology is interpolated linearly between consecutive observations that are at
    most ``max_gap_days`` apart. In longer gaps and before or after the record, the anomaly of the nearest
    observation decays linearly to zero over ``max_gap_days`` (the series is continuous and relaxes to the
    climatology). Interpolating the anomaly rather than the value keeps the seasonal curvature across gaps.

    Args:
        target_times: shape ``(T,)``, days, increasing (the model's steps).
        obs_times: shape ``(N,)``, days on the same origin; need not be sorted; NaN values are dropped.
        obs_values: shape ``(N,)``.
        climatology: fitted on the same origin (:func:`fit_harmonic_climatology`).
        max_gap_days: longest gap bridged by interpolation.

    Returns:
        ``(values, filled)``: values shape ``(T,)``; ``filled`` boolean ``(T,)``, True where the value is
        not bracketed by observations at most ``max_gap_days`` apart (it comes wholly or partly from the
        climatology).
    """
    target_times = np.asarray(target_times, dtype=np.float64)
    obs_times = np.asarray(obs_times, dtype=np.float64)
    obs_values = np.asarray(obs_values, dtype=np.float64)
    if obs_times.shape != obs_values.shape:
        raise ValueError(f"obs_times {obs_times.shape} and obs_values {obs_values.shape} differ in shape")
    if max_gap_days < 0:
        raise ValueError(f"max_gap_days must be >= 0, got {max_gap_days}")
    clim = evaluate_climatology(climatology, target_times)
    ok = np.isfinite(obs_times) & np.isfinite(obs_values)
    if not ok.any():
        return clim, np.ones(target_times.shape, dtype=bool)
    order = np.argsort(obs_times[ok], kind="stable")
    t_obs = obs_times[ok][order]
    anomaly = obs_values[ok][order] - evaluate_climatology(climatology, t_obs)
    # Duplicate times: average them so interpolation is well defined.
    t_obs, inverse = np.unique(t_obs, return_inverse=True)
    anomaly = np.bincount(inverse, weights=anomaly) / np.bincount(inverse)

    right = np.searchsorted(t_obs, target_times, side="left")  # first obs >= target
    left = right - 1
    n = len(t_obs)
    exact = (right < n) & (t_obs[np.clip(right, 0, n - 1)] == target_times)
    inside = (left >= 0) & (right < n)
    li, ri = np.clip(left, 0, n - 1), np.clip(right, 0, n - 1)
    gap = t_obs[ri] - t_obs[li]
    bridged = inside & (gap <= max_gap_days)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(gap > 0, (target_times - t_obs[li]) / np.where(gap > 0, gap, 1.0), 0.0)
    interp = anomaly[li] * (1.0 - w) + anomaly[ri] * w
    # Outside bridged gaps: the nearest observation's anomaly, tapered to zero over max_gap_days.
    dist_left = np.where(left >= 0, target_times - t_obs[li], np.inf)
    dist_right = np.where(right < n, t_obs[ri] - target_times, np.inf)
    nearest = np.where(dist_left <= dist_right, li, ri)
    distance = np.minimum(dist_left, dist_right)
    taper = np.clip(1.0 - distance / max_gap_days, 0.0, 1.0) if max_gap_days > 0 else (distance == 0) * 1.0
    observed = exact | bridged
    anomaly_at = np.where(exact, anomaly[ri], np.where(bridged, interp, anomaly[nearest] * taper))
    return clim + anomaly_at, ~observed


# --------------------------------------------------------------------------------------------------------------
# Building forcing


def mixing_index_from_temperature(temperature: np.ndarray, stratification_scale: float = 1.0) -> np.ndarray:
    """Mixing index exp(-max(T_surface - T_bottom, 0) / scale), 1 when well mixed, toward 0 when stratified.

    Args:
        temperature: shape ``(T, L)`` degC; with one layer the index is 1 (not used by the model).
        stratification_scale: degC; the surface-bottom difference at which exchange is reduced by e.
    """
    xp = jnp if isinstance(temperature, jax.Array) else np
    temperature = xp.asarray(temperature)
    if temperature.shape[-1] < 2:
        return xp.ones(temperature.shape[:-1], temperature.dtype)
    delta = xp.maximum(temperature[..., 0] - temperature[..., -1], 0.0)
    return xp.exp(-delta / stratification_scale)


def make_forcing(
    temperature: np.ndarray,
    salinity: np.ndarray,
    day_of_year: np.ndarray,
    latitude: float | None = None,
    par: np.ndarray | None = None,
    wind_speed: np.ndarray | float = 5.0,
    mixing_index: np.ndarray | None = None,
    river_discharge: np.ndarray | float = 0.0,
    river_nitrate: np.ndarray | float = 0.0,
    river_ammonium: np.ndarray | float = 0.0,
    river_phosphate: np.ndarray | float = 0.0,
    river_silicate: np.ndarray | float = 0.0,
    stratification_scale: float = 1.0,
) -> Forcing:
    """Assemble a :class:`Forcing` from gap-free daily arrays, with defaults for the optional fields.

    Args:
        temperature, salinity: shape ``(T, L)`` (or ``(T,)`` for one layer).
        day_of_year: shape ``(T,)``.
        latitude: degrees north; needed when ``par`` is None (clear-sky PAR is then used).
        par: shape ``(T,)``, measured daily mean PAR, or None.
        wind_speed, river_*: shape ``(T,)`` or scalars (broadcast).
        mixing_index: shape ``(T,)``; derived from the layer temperature difference when None.

    Raises:
        ValueError: on shape mismatch, NaN in any field, or missing latitude without PAR.
    """
    temperature = np.asarray(temperature, np.float32)
    salinity = np.asarray(salinity, np.float32)
    if temperature.ndim == 1:
        temperature = temperature[:, None]
    if salinity.ndim == 1:
        salinity = salinity[:, None]
    day_of_year = np.asarray(day_of_year, np.float32)
    T = day_of_year.shape[0]
    if temperature.shape[0] != T or salinity.shape != temperature.shape:
        raise ValueError(
            f"temperature {temperature.shape} and salinity {salinity.shape} must be (T, L) with T = {T}"
        )
    if par is None:
        if latitude is None:
            raise ValueError("give either measured par or the latitude for clear-sky PAR")
        par = np.asarray(clear_sky_par(latitude, day_of_year + 0.5))
    if mixing_index is None:
        mixing_index = np.asarray(mixing_index_from_temperature(temperature, stratification_scale))

    def series(name, value):
        arr = np.broadcast_to(np.asarray(value, np.float32), (T,)).copy()
        return arr

    fields = dict(
        temperature=temperature,
        salinity=salinity,
        par=series("par", par),
        wind_speed=series("wind_speed", wind_speed),
        mixing_index=series("mixing_index", mixing_index),
        river_discharge=series("river_discharge", river_discharge),
        river_nitrate=series("river_nitrate", river_nitrate),
        river_ammonium=series("river_ammonium", river_ammonium),
        river_phosphate=series("river_phosphate", river_phosphate),
        river_silicate=series("river_silicate", river_silicate),
        day_of_year=day_of_year,
    )
    for name, arr in fields.items():
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"forcing field {name!r} has non-finite values; fill gaps first (fill_series)")
    # device_put, not jnp.asarray: no eager conversion program per field shape (a cycle process pays each)
    return Forcing(**{k: v if isinstance(v, jax.Array) else jax.device_put(np.asarray(v)) for k, v in fields.items()})


def _ar1(key: jax.Array, n: int, sd: float, correlation_days: float) -> np.ndarray:
    """AR(1) noise of stationary standard deviation ``sd`` and e-folding time ``correlation_days``."""
    phi = np.exp(-1.0 / correlation_days)
    normal = np.asarray(jax.random.normal(key, (n,)), np.float64)
    innovations = normal * sd * np.sqrt(1 - phi**2)
    innovations[0] = normal[0] * sd  # start from the stationary distribution
    import scipy.signal  # imported here: it costs most of a second, and only perturbed forcing needs it
    return scipy.signal.lfilter([1.0], [1.0, -phi], innovations)


# Nutrients of a nitrate-rich river, mmol m-3 in river water: the river of the synthetic forcing and the
# default of a site's river in a config (twin.config.RiverConfig).
RIVER_WATER = {"nitrate": 150.0, "ammonium": 5.0, "phosphate": 1.5, "silicate": 120.0}


def river_discharge_climatology(day_of_year: np.ndarray, mean_discharge: float, amplitude: float = 0.6,
                                peak_day_of_year: float = 60.0) -> np.ndarray:
    """Seasonal river discharge, m3 s-1: ``mean_discharge`` times a cosine of relative ``amplitude`` peaking on
    ``peak_day_of_year`` (late-winter floods of a Mediterranean river by default)."""
    phase = 2.0 * np.pi * (np.asarray(day_of_year, np.float64) - peak_day_of_year) / DAYS_PER_YEAR
    return mean_discharge * (1.0 + amplitude * np.cos(phase))


def salinity_river_discharge(surface_salinity: np.ndarray, offshore_salinity: float, exchange_per_day: float,
                             river_volume: float, max_fraction: float = 0.5) -> np.ndarray:
    """River discharge, m3 s-1, that the surface layer's salinity tells: its freshwater fraction
    f = 1 - S / S_offshore (clipped to [0, ``max_fraction``]) is held by a river dilution rate
    d = k f / (1 - f) against the offshore exchange k (``exchange_per_day``), the salt balance
    d S = k (S_offshore - S) of a layer renewed by offshore water and river water. At steady state each
    nutrient then sits on the mixing line f C_river + (1 - f) C_offshore. Returned as the discharge that gives
    d through ``river_volume`` (m3; d = discharge * 86400 / river_volume)."""
    fresh = np.clip(1.0 - np.asarray(surface_salinity, np.float64) / offshore_salinity, 0.0, max_fraction)
    return exchange_per_day * fresh / (1.0 - fresh) * river_volume / 86400.0


def synthetic_forcing(
    num_days: int,
    latitude: float = 43.24,
    start_day_of_year: float = 0.0,
    key: jax.Array | None = None,
    num_layers: int = 2,
    surface_temperature_range: tuple[float, float] = (13.0, 26.0),
    bottom_winter_temperature: float = 13.0,
    max_stratification: float = 6.0,
    salinity: float = 38.0,
    mean_river_discharge: float = 0.0,
    cloudiness: float = 0.25,
) -> Forcing:
    """Forcing of a temperate (north-western Mediterranean-like) coastal site.

    Surface temperature follows an annual cosine between ``surface_temperature_range`` (minimum mid-February,
    maximum mid-August); the water column stratifies from May to October with a surface-bottom difference up
    to ``max_stratification``; PAR is clear-sky (:func:`clear_sky_par`), reduced by clouds when ``key`` is
    given; wind is stronger in winter. With ``key=None`` the forcing is deterministic and cloud-free.

    Args:
        num_days: T, number of daily steps.
        latitude: degrees north.
        start_day_of_year: zero-based day of year of the first step (steps are days starting at 00:00; the
            day-of-year field of the forcing is the step's start).
        key: PRNG key for weather noise (AR(1) temperature, wind and cloud anomalies), or None.
        num_layers: 1 (surface only) or 2.
        mean_river_discharge: m3 s-1; 0 switches the river off. Nutrient loads are those of a nitrate-rich
            river (nitrate 150, ammonium 5, phosphate 1.5, silicate 120 mmol m-3).
        cloudiness: mean fractional reduction of clear-sky PAR when ``key`` is given.
    """
    if num_layers not in (1, 2):
        raise ValueError(f"num_layers must be 1 or 2, got {num_layers}")
    doy_start = (start_day_of_year + np.arange(num_days, dtype=np.float64)) % DAYS_PER_YEAR
    doy_mid = doy_start + 0.5
    t_low, t_high = surface_temperature_range
    phase = 2.0 * np.pi * (doy_mid - 225.0) / DAYS_PER_YEAR
    surface = 0.5 * (t_low + t_high) + 0.5 * (t_high - t_low) * np.cos(phase)
    season = np.clip(np.sin(np.pi * (doy_mid - 110.0) / 200.0), 0.0, None) * ((doy_mid > 110) & (doy_mid < 310))
    stratification = max_stratification * season**1.5
    wind = 6.0 + 2.0 * np.cos(2.0 * np.pi * (doy_mid - 15.0) / DAYS_PER_YEAR)
    par = np.asarray(clear_sky_par(latitude, doy_mid), np.float64)
    discharge = river_discharge_climatology(doy_mid, mean_river_discharge)
    if key is not None:
        k_temp, k_wind, k_cloud, k_river = jax.random.split(key, 4)
        surface = surface + _ar1(k_temp, num_days, 0.4, 5.0)
        wind = wind + _ar1(k_wind, num_days, 2.0, 2.0)
        cloud = np.clip(cloudiness + _ar1(k_cloud, num_days, 0.2, 2.0), 0.0, 0.85)
        par = par * (1.0 - cloud)
        discharge = discharge * np.exp(_ar1(k_river, num_days, 0.4, 7.0))
    wind = np.maximum(wind, 0.5)
    bottom = np.maximum(surface - stratification, bottom_winter_temperature)
    bottom = np.minimum(bottom, surface)
    temperature = np.stack([surface, bottom], axis=1)[:, :num_layers]
    salt = np.stack([np.full(num_days, salinity - 0.2), np.full(num_days, salinity)], axis=1)[:, :num_layers]
    return make_forcing(
        temperature=temperature,
        salinity=salt,
        day_of_year=doy_start,
        par=par,
        wind_speed=wind,
        mixing_index=np.asarray(mixing_index_from_temperature(np.stack([surface, bottom], axis=1))),
        river_discharge=discharge,
        **{f"river_{name}": value if mean_river_discharge > 0 else 0.0 for name, value in RIVER_WATER.items()},
    )


# --------------------------------------------------------------------------------------------------------------
# Scenarios

ChangeOp = Literal["shift", "scale", "replace"]
CHANGE_OPS: tuple[str, ...] = get_args(ChangeOp)


class ForcingChange(NamedTuple):
    """A scenario change of one forcing field over steps ``[start, end)`` (None: from the first / to the last).

    ``shift`` adds ``value``, ``scale`` multiplies by it, ``replace`` sets it; ``value`` is a scalar or an
    array broadcastable to the field over the period (e.g. shape ``(L,)`` for a per-layer temperature shift).
    """

    field: str
    op: ChangeOp
    value: float | np.ndarray
    start: int | None = None
    end: int | None = None


def apply_change(
    forcing: Forcing,
    field: str,
    op: ChangeOp,
    value: float | np.ndarray,
    start: int | None = None,
    end: int | None = None,
) -> Forcing:
    """A copy of ``forcing`` with ``field`` shifted, scaled or replaced over steps ``[start, end)``.

    Derived fields are not recomputed: shifting both layers' temperature leaves ``mixing_index`` as it is;
    change it explicitly if the scenario alters stratification. Non-negative fields (PAR, wind, river) are
    clipped at zero after the change.

    Raises:
        ValueError: unknown field or op (the message lists the valid ones), or an empty period.
    """
    if field not in FORCING_FIELDS:
        raise ValueError(f"unknown forcing field {field!r}; valid fields are {list(FORCING_FIELDS)}")
    if op not in CHANGE_OPS:
        raise ValueError(f"unknown change op {op!r}; valid ops are {list(CHANGE_OPS)}")
    if field == "day_of_year":
        raise ValueError("day_of_year is the time axis and cannot be changed by a scenario")
    arr = jnp.asarray(getattr(forcing, field))
    T = arr.shape[0]
    lo = 0 if start is None else int(start)
    hi = T if end is None else int(end)
    if not (0 <= lo < hi <= T):
        raise ValueError(f"change period [{start}, {end}) is empty or outside the forcing's {T} steps")
    value = jnp.asarray(value, arr.dtype)
    period = arr[lo:hi]
    if op == "shift":
        new = period + value
    elif op == "scale":
        new = period * value
    else:
        new = jnp.broadcast_to(value, period.shape)
    if field not in ("temperature",):
        new = jnp.maximum(new, 0.0)
    return forcing._replace(**{field: arr.at[lo:hi].set(new)})


def apply_changes(forcing: Forcing, changes: list[ForcingChange] | tuple[ForcingChange, ...]) -> Forcing:
    """Apply scenario changes in order."""
    for change in changes:
        forcing = apply_change(forcing, *change)
    return forcing

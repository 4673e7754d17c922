"""The twin experiment (OSSE): a synthetic truth, sampled like a SOMLIT station and a COAST-HF buoy.

The truth is the process model run with perturbed parameters under perturbed (weather-noise) forcing, so
neither the emulator nor the process model with default parameters is perfect. It is sampled:

- like SOMLIT: weekly bottles at the surface and the bottom (temperature, salinity, nitrate, ammonium,
  phosphate, silicate, chlorophyll, oxygen), with realistic errors, values below detection flagged 0 and
  about one week in ten missed;
- like a COAST-HF buoy: hourly surface temperature, salinity, oxygen and fluorescence, with multi-day
  gaps, a few spikes and a slow oxygen-sensor drift; optionally (``buoy_meteorology``) a met mast's hourly
  PAR and wind speed, which the twin's forcing then takes instead of its climatology,

and written in those real formats (``twin.writers``), so the real readers and QC run on it. The truth
itself (every state variable, daily) is saved for scoring.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd
import xarray as xr

from emulators.forcing import Forcing, synthetic_forcing
from emulators.parameters import ProcessParams, default_site, sample_params
from emulators.process_model import chlorophyll, initial_state, run
from emulators.solar import SEA_SURFACE_ALBEDO, hourly_sun_height
from twin.state_layout import StateLayout
from twin.writers import write_coasthf, write_somlit_native

SOMLIT_VARIABLES = ("temperature", "salinity", "nitrate", "ammonium", "phosphate", "silicate",
                    "chlorophyll", "oxygen")
# Observation error sd of the synthetic samples (canonical units), and detection limits.
BOTTLE_ERROR = {"temperature": 0.05, "salinity": 0.02, "nitrate": 0.05, "ammonium": 0.03,
                "phosphate": 0.01, "silicate": 0.1, "chlorophyll": 0.05, "oxygen": 3.0}
BOTTLE_RELATIVE_ERROR = {"nitrate": 0.05, "ammonium": 0.1, "phosphate": 0.05, "silicate": 0.05,
                         "chlorophyll": 0.1}
DETECTION_LIMIT = {"nitrate": 0.05, "ammonium": 0.03, "phosphate": 0.01, "silicate": 0.1}
BUOY_ERROR = {"temperature": 0.02, "salinity": 0.02, "oxygen": 4.0, "fluorescence": 0.08}
# The buoy's met mast (layer "air", Coriolis LEVEL-1): hourly PAR's error is relative (sensor and passing
# clouds, log sd), wind speed's absolute (gusts, m s-1).
BUOY_MET_ERROR = {"par": 0.08, "wind_speed": 1.0}
BUOY_LEVELS = {"par": -1, "wind_speed": -1}  # Coriolis LEVEL of each buoy column other than the first water level
BUOY_SPIKE = {"temperature": 3.0, "salinity": 1.5, "oxygen": 60.0, "fluorescence": 3.0}


class ExperimentSpec(NamedTuple):
    """Settings of a twin experiment (see ``twin.config.TwinExperimentConfig`` for the YAML form)."""
    site: str
    platform: str
    latitude: float
    longitude: float
    start: np.datetime64
    num_days: int
    seed: int = 1
    bottle_interval_days: int = 7
    missed_fraction: float = 0.1
    buoy: bool = True
    buoy_gap_fraction: float = 0.15
    buoy_spikes: int = 6
    oxygen_drift_per_year: float = -12.0   # mmol m-3 per year, sensor fouling
    fluorescence_slope: float = 1.0        # chlorophyll = slope * fluorescence (mg m-3 per FFU)
    parameter_spread: float = 0.25         # relative perturbation of the truth's parameters
    river_discharge_m3s: float = 0.0       # mean discharge of the site's river, m3 s-1 (0: none)
    buoy_meteorology: bool = False         # the buoy also measures PAR and wind speed above the surface


class Truth(NamedTuple):
    """The synthetic truth: ``states`` (num_days + 1, site_dim) in the twin's state layout, daily from
    ``start`` 00:00, with the forcing and parameters that made it."""
    times: np.ndarray
    states: np.ndarray
    forcing: Forcing
    params: ProcessParams
    layout: StateLayout


def truth_params(key: jax.Array, spread: float) -> ProcessParams:
    """Default parameters perturbed by up to ``spread`` (relative), drawn within their literature ranges."""
    base = ProcessParams()
    drawn = sample_params(key, 1)
    mixed = {name: float(getattr(base, name)) * (1.0 - spread) + float(getattr(drawn, name)[0]) * spread
             for name in ProcessParams._fields}
    return ProcessParams(**mixed)


def make_truth(spec: ExperimentSpec, spin_up_days: int = 365) -> Truth:
    """Run the process model for the truth (after a spin-up year under the same forcing statistics)."""
    key = jax.random.PRNGKey(spec.seed)
    k_params, k_forcing = jax.random.split(key)
    params = truth_params(k_params, spec.parameter_spread)
    start = pd.Timestamp(spec.start)
    doy0 = float(start.day_of_year - 1)
    total = spin_up_days + spec.num_days
    forcing = synthetic_forcing(total, latitude=spec.latitude, start_day_of_year=doy0 - spin_up_days % 365.25,
                                key=k_forcing, mean_river_discharge=spec.river_discharge_m3s)
    site = default_site(2, spec.latitude)
    trajectory = np.asarray(run(initial_state(2), forcing, params, site))
    forcing_run = jax.tree.map(lambda a: a[spin_up_days:], forcing)
    model = trajectory[spin_up_days:]
    chl_forcing = jax.tree.map(lambda a: np.concatenate([a[:1], a]), forcing_run)  # state t uses forcing t-1
    chl = np.asarray(jax.vmap(lambda s, f: chlorophyll(s, f, params, site))(model, chl_forcing))
    states = np.concatenate([model, chl], axis=1)
    times = np.datetime64(spec.start, "ns") + np.arange(spec.num_days + 1) * np.timedelta64(1, "D")
    return Truth(times, states, forcing_run, params, StateLayout((spec.site,), 2))


def _truth_at(truth: Truth, variable: str, layer: str, times: np.ndarray) -> np.ndarray:
    """Truth of ``variable`` interpolated linearly in time (temperature, salinity from the forcing)."""
    days = (times - truth.times[0]) / np.timedelta64(1, "D")
    grid = np.arange(truth.states.shape[0], dtype=float)
    li = ("surface", "bottom").index(layer)
    if variable in ("temperature", "salinity"):
        field = np.asarray(getattr(truth.forcing, variable))[:, li]
        return np.interp(days, np.arange(field.size) + 0.5, field)
    idx = truth.layout.index(variable, truth.layout.sites[0], layer)
    return np.interp(days, grid, truth.states[:, idx])


def sample_bottles(truth: Truth, spec: ExperimentSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Weekly SOMLIT-like samples (09:00 UTC) at surface (1 m) and bottom (50 m)."""
    days = np.arange(3, spec.num_days, spec.bottle_interval_days)
    days = days[rng.random(days.size) >= spec.missed_fraction]
    times = truth.times[0] + days * np.timedelta64(1, "D") + np.timedelta64(9, "h")
    frames = []
    for layer, code, depth in (("surface", "S", 1.0), ("bottom", "F", 50.0)):
        frame = pd.DataFrame({"time": times, "site_id": 99, "site": spec.site, "latitude": spec.latitude,
                              "longitude": spec.longitude, "layer_code": code, "depth": depth})
        for variable in SOMLIT_VARIABLES:
            true = _truth_at(truth, variable, layer, times)
            sd = np.hypot(BOTTLE_ERROR[variable], BOTTLE_RELATIVE_ERROR.get(variable, 0.0) * true)
            value = true + rng.normal(0.0, 1.0, true.size) * sd
            flag = np.full(true.size, 2)
            dl = DETECTION_LIMIT.get(variable)
            if dl is not None:
                below = value < dl
                value = np.where(below, dl, value)
                flag = np.where(below, 0, flag)
            value = np.maximum(value, 1e-3)
            frame[variable] = value
            frame[f"{variable}_flag"] = flag
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).sort_values(["time", "layer_code"], kind="stable")


def sample_buoy(truth: Truth, spec: ExperimentSpec, rng: np.random.Generator):
    """Hourly surface buoy records: (times, {variable: (values, qc digits)}) with gaps, spikes, drift."""
    hours = np.arange(24, spec.num_days * 24)
    times = truth.times[0] + hours * np.timedelta64(1, "h")
    present = np.ones(hours.size, bool)
    while 1.0 - present.mean() < spec.buoy_gap_fraction:  # multi-day outages
        start = rng.integers(0, hours.size)
        present[start:start + rng.integers(2 * 24, 12 * 24)] = False
    times = times[present]
    diurnal = 0.15 * np.sin(2 * np.pi * ((hours[present] % 24) - 9) / 24)
    columns = {}
    for variable in ("temperature", "salinity", "oxygen", "fluorescence"):
        base = "chlorophyll" if variable == "fluorescence" else variable
        true = _truth_at(truth, base, "surface", times)
        if variable == "temperature":
            true = true + diurnal
        if variable == "fluorescence":
            true = true / spec.fluorescence_slope
        value = true + rng.normal(0.0, BUOY_ERROR[variable], true.size)
        if variable == "oxygen":  # a fouling sensor: slow drift from the start
            value = value + spec.oxygen_drift_per_year * (np.arange(true.size) / (365.0 * 24))
        qc = np.ones(true.size, int)
        spikes = rng.choice(true.size, size=min(spec.buoy_spikes, true.size), replace=False)
        value[spikes] += rng.choice([-1.0, 1.0], spikes.size) * BUOY_SPIKE[variable]
        columns[variable] = (np.maximum(value, 0.0) if variable != "temperature" else value, qc)
    if spec.buoy_meteorology:
        columns.update(sample_buoy_meteorology(truth, spec, times))
    return times, columns


def sample_buoy_meteorology(truth: Truth, spec: ExperimentSpec, times: np.ndarray) -> dict:
    """The buoy's met mast at ``times`` (hourly, from day 1): {variable: (values, qc digits)} for PAR above the
    surface (umol m-2 s-1) and wind speed (m s-1), from the truth's forcing.

    PAR follows the sun through each day (``emulators.solar.hourly_sun_height``), scaled so that the day's 24
    hourly values average the truth's daily mean (above the surface: the model's is below it), with
    ``BUOY_MET_ERROR`` log-normal noise; 0 at night.
    Drawn from their own random stream: the water samples are the same with or without the mast.
    """
    if not times.size:
        return {v: (np.zeros(0), np.zeros(0, int)) for v in BUOY_MET_ERROR}
    rng = np.random.default_rng([spec.seed, 0x3E7])
    hours = (times - truth.times[0]) / np.timedelta64(1, "h")
    day = np.floor(hours / 24.0).astype(np.int64)
    sun = hourly_sun_height(spec.latitude, spec.longitude, truth.times[0], day.max() + 1)
    norm = sun / sun.mean(axis=1, keepdims=True)                  # a clear day's shape, mean 1 over its 24 hours
    above = np.asarray(truth.forcing.par, np.float64) / (1.0 - SEA_SURFACE_ALBEDO)
    hour_of_day = np.round(hours - 24.0 * day).astype(np.int64)
    par = above[day] * norm[day, hour_of_day] * np.exp(BUOY_MET_ERROR["par"] * rng.standard_normal(times.size))
    wind = np.asarray(truth.forcing.wind_speed, np.float64)[day] + BUOY_MET_ERROR["wind_speed"] \
        * rng.standard_normal(times.size)
    good = np.ones(times.size, int)
    return {"par": (par, good), "wind_speed": (np.maximum(wind, 0.0), good.copy())}


def write_experiment(directory: str | Path, spec: ExperimentSpec) -> tuple[Truth, dict[str, Path]]:
    """Make the truth, sample it, and write the observation files and ``truth.nc`` under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    truth = make_truth(spec)
    rng = np.random.default_rng(spec.seed)
    paths = {"somlit": write_somlit_native(directory / "somlit_synthetic.csv", sample_bottles(truth, spec, rng),
                                           title=f"twin experiment, seed {spec.seed}")}
    if spec.buoy:
        times, columns = sample_buoy(truth, spec, rng)
        paths["coasthf"] = write_coasthf(directory / "coasthf_synthetic.csv", spec.platform, spec.latitude,
                                         spec.longitude, times, columns, levels=BUOY_LEVELS)
    paths["truth"] = write_truth(directory / "truth.nc", truth)
    return truth, paths


def truth_dataset(truth: Truth) -> xr.Dataset:
    names = truth.layout.names()
    return xr.Dataset({"truth": (("time", "state"), truth.states)},
                      coords={"time": truth.times, "state": names},
                      attrs={"params": repr(truth.params)})


def write_truth(path: Path, truth: Truth) -> Path:
    from twin.observations import write_netcdf
    ds = truth_dataset(truth)
    return write_netcdf(ds, path)


def write_daily_experiment(directory: str | Path, spec: ExperimentSpec) -> tuple[Truth, list[tuple[str, list[Path]]]]:
    """The twin experiment delivered day by day, as an operational twin receives it: the same samples as
    :func:`write_experiment` (same seed, same draws), one folder per day ``YYYY-MM-DD/`` holding that day's
    ``somlit.csv`` (days with bottles) and ``coasthf.csv`` (days with buoy records). Returns the truth and
    ``[(day, [paths])]`` in date order."""
    directory = Path(directory)
    truth = make_truth(spec)
    rng = np.random.default_rng(spec.seed)
    bottles = sample_bottles(truth, spec, rng)
    buoy = sample_buoy(truth, spec, rng) if spec.buoy else None
    bottle_day = pd.DatetimeIndex(bottles["time"]).strftime("%Y-%m-%d").to_numpy()
    days = np.datetime64(spec.start, "D") + np.arange(spec.num_days)
    out = []
    for day in days.astype(str):
        paths = []
        rows = bottles[bottle_day == day]
        if len(rows):
            paths.append(write_somlit_native(directory / day / "somlit.csv", rows,
                                             title=f"twin experiment, seed {spec.seed}, {day}"))
        if buoy is not None:
            times, columns = buoy
            sel = times.astype("datetime64[D]").astype(str) == day
            if sel.any():
                paths.append(write_coasthf(directory / day / "coasthf.csv", spec.platform, spec.latitude,
                                           spec.longitude, times[sel],
                                           {k: (v[sel], q[sel]) for k, (v, q) in columns.items()},
                                           levels=BUOY_LEVELS))
        if paths:
            out.append((day, paths))
    write_truth(directory / "truth.nc", truth)
    return truth, out

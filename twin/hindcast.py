"""The hindcast: years of observations assimilated into the emulator ensemble, with products and report.

Steps (DESIGN sections 5-8): make the twin experiment's files if the config has one; ingest and qualify
every source; build forcing for every day; load or pretrain the emulator; cycle window by window (each
window one ``jit``-compiled ``lax.scan``, with the configured alerts' probabilities issued from every
analysis; the emulator refit between windows when due); score and verify the alerts; write the products.
Everything is written into a fresh folder next to the output directory and moved into place at the end, so a
run killed midway leaves the previous complete run (or nothing) in the output directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from assimilation import FilterParams, initial_inflation_state
from emulators.forcing import DAYS_PER_YEAR
from emulators.parameters import ProcessParams
from emulators.process_model import initial_state
from twin import flags
from twin.config import RiverConfig, SiteConfig, SourceConfig, TwinConfig, write_resolved_config
from twin.cycle_obs import build_cycle_observations, row_dispositions
from twin.engine import AlertSpec, EngineState, WindowOutputs, free_forecast, run_window
from twin.forcing_builder import build_site_forcing, usable_series
from twin.forecast import (
    chlorophyll_scales,
    configured_process_params,
    offshore_seasonal,
    initial_ensemble,
    make_forecast,
    process_stepper,
    site_struct,
    stack_sites,
    state_ar1,
)
from twin.ingest import ingest, sensor_of_rows
from twin.localization import local_taper
from twin.qc import apply_qc
from twin.state_layout import StateLayout


@dataclasses.dataclass
class Prepared:
    """Everything the cycles need, built once."""
    config: TwinConfig
    table: xr.Dataset
    layout: StateLayout
    day0: np.datetime64
    num_days: int
    forcing: Any                # Forcing with (T, S, ...) fields
    sites: Any                  # emulators Site with a leading site axis
    cycle_obs: Any              # twin.cycle_obs.CycleObservations
    withheld: np.ndarray        # (n_rows,) bool
    truth: np.ndarray | None    # (T, n) daily truth at analysis times (twin experiment only)
    forcing_report: dict
    truth_params: Any = None    # the truth's ProcessParams (twin experiment only)


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[twin] {message}", file=sys.stderr, flush=True)


def experiment_sources(config: TwinConfig, directory: Path, quiet: bool = True):
    """Write the twin experiment's files; return (config with its sites and sources, truth)."""
    from twin.osse import ExperimentSpec, write_experiment
    exp = config.experiment
    spec = ExperimentSpec(site=exp.site, platform=exp.platform, latitude=exp.latitude,
                          longitude=exp.longitude, start=np.datetime64(exp.start), num_days=exp.days,
                          seed=exp.seed, bottle_interval_days=exp.bottle_interval_days,
                          missed_fraction=exp.missed_fraction, buoy=exp.buoy,
                          buoy_gap_fraction=exp.buoy_gap_fraction,
                          oxygen_drift_per_year=exp.oxygen_drift_per_year,
                          fluorescence_slope=exp.fluorescence_slope, parameter_spread=exp.parameter_spread,
                          river_discharge_m3s=exp.river_discharge_m3s, buoy_meteorology=exp.buoy_meteorology)
    _log(f"twin experiment: truth and observations for {exp.days} days -> {directory}", quiet)
    truth, paths = write_experiment(directory, spec)
    from twin.osse import BUOY_ERROR
    # The experiment knows its observation errors: the filter is told them (a real station's come from
    # the config, with representativeness added).
    sources = [SourceConfig(path=str(paths["somlit"]), format="somlit", name="bottles", **bottle_errors())]
    if "coasthf" in paths:
        buoy_sd = {"temperature": BUOY_ERROR["temperature"], "salinity": BUOY_ERROR["salinity"],
                   "oxygen": BUOY_ERROR["oxygen"], "fluorescence": BUOY_ERROR["fluorescence"],
                   "chlorophyll": BUOY_ERROR["fluorescence"] * exp.fluorescence_slope}
        sources.append(SourceConfig(path=str(paths["coasthf"]), format="coasthf", name="buoy", error_sd=buoy_sd,
                                    offsets=exp.buoy_offsets,
                                    fluorescence_calibration={exp.platform: (exp.fluorescence_slope, 0.0)}))
    # The twin is given the river's seasonal climatology; the truth's discharge varies around it.
    river = RiverConfig(mean_discharge_m3s=exp.river_discharge_m3s) if exp.river_discharge_m3s > 0 else None
    sites = config.sites or (SiteConfig(name=exp.site, latitude=exp.latitude, longitude=exp.longitude,
                                        aliases=(exp.platform,), bottom_depth_m=60.0, river=river),)
    return config.model_copy(update={"sources": tuple(sources) + config.sources, "sites": sites}), truth


def bottle_errors() -> dict:
    """The twin experiment's bottle errors as a source's ``error_sd`` and ``relative_error``: its samples
    are drawn with sd hypot(analytical, fraction * value) (``twin.osse``), and the filter is told the same
    per sample (of the sampled value, the truth being unknown to it)."""
    from twin.osse import BOTTLE_ERROR, BOTTLE_RELATIVE_ERROR
    return {"error_sd": dict(BOTTLE_ERROR), "relative_error": dict(BOTTLE_RELATIVE_ERROR)}


def _period(config: TwinConfig, table: xr.Dataset) -> tuple[np.datetime64, int]:
    h = config.hindcast
    if h.start is not None:
        start = np.datetime64(h.start, "D")
    elif config.experiment is not None:
        start = np.datetime64(config.experiment.start, "D")
    else:
        start = table["time"].values.min().astype("datetime64[D]")
    if h.end is not None:
        end = np.datetime64(h.end, "D")
    elif config.experiment is not None:
        end = start + np.timedelta64(config.experiment.days - 1, "D")
    else:
        end = table["time"].values.max().astype("datetime64[D]")
    num_days = int((end - start) / np.timedelta64(1, "D")) + 1
    if num_days < 2:
        raise ValueError(f"hindcast period {start} .. {end} has fewer than 2 days")
    return start.astype("datetime64[ns]"), num_days


def _layer_layout(config: TwinConfig) -> int:
    return 2 if any("bottom" in s.layers for s in config.sites) else 1


def _withhold(table: xr.Dataset, layout: StateLayout, fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``fraction`` of the usable observations of state variables from non-buoy sources.

    Each observation's draw comes from its identity (seed, site, layer, variable, time), not from its row:
    a station's withheld values are the same whether it is run alone or in a network, and replicates of a
    withheld value (same site, layer, variable and time) are withheld with it, not assimilated beside it."""
    n = table.sizes["obs"]
    if fraction <= 0 or n == 0:
        return np.zeros(n, bool)
    eligible = np.isin(table["qc"].values, flags.USABLE_QC) & np.isfinite(table["value"].values)
    lookup = {k: layout.observation_index(*k) >= 0 for k in
              set(zip(table["variable"].values, table["site"].values, table["layer"].values))}
    eligible &= np.array([lookup[k] for k in zip(table["variable"].values, table["site"].values,
                                                 table["layer"].values)])
    return eligible & (identity_uniform(table, seed) < fraction)


def identity_uniform(table: xr.Dataset, seed: int) -> np.ndarray:
    """(obs,) uniform draws in [0, 1), one per observation identity (seed, site, layer, variable, time):
    the first 8 bytes of its BLAKE2b digest over 2^64."""
    keys = zip(table["site"].values.astype(str), table["layer"].values.astype(str),
               table["variable"].values.astype(str), table["time"].values.astype("datetime64[ns]").astype(np.int64))
    prefix = f"{int(seed)}|".encode()
    digests = [hashlib.blake2b(prefix + f"{s}|{l}|{v}|{t}".encode(), digest_size=8).digest() for s, l, v, t in keys]
    return np.frombuffer(b"".join(digests), dtype="<u8").astype(np.float64) / 2.0**64


def prepare(config: TwinConfig, work: Path, quiet: bool = False) -> Prepared:
    """Ingest, qualify, build forcing and the per-cycle observations."""
    truth_run = None
    if config.experiment is not None:
        config, truth_run = experiment_sources(config, work / "experiment", quiet)
    if not config.sites:
        raise ValueError("the config names no sites: add a 'sites' list (name, latitude, longitude)")
    _log(f"ingest {len(config.sources)} source(s)", quiet)
    table = apply_qc(ingest(config), config.qc, progress=not quiet)
    num_layers = _layer_layout(config)
    layout = StateLayout.for_config(config, num_layers)
    day0, num_days = _period(config, table)
    _log(f"{table.sizes['obs']} observations; {num_days} days from {str(day0)[:10]}; "
         f"{len(layout.sites)} site(s), {num_layers} layer(s), state of {layout.dim}", quiet)
    withheld = _withhold(table, layout, config.validation.withhold_fraction, config.validation.seed)
    # The withheld rows validate the twin: they do not set its boundary either.
    config, report = resolve_boundaries(config, table, layout.layers, exclude=withheld)
    forcings, structs = [], []
    for s in config.sites:
        struct = site_struct(s, num_layers)
        f, rep = build_site_forcing(table, s.name, s.latitude, layout.layers, day0, num_days, longitude=s.longitude,
                                    max_gap_days=config.hindcast.forcing_max_gap_days,
                                    mode=config.hindcast.forcing_mode, river=s.river, model_site=struct)
        forcings.append(f)
        structs.append(struct)
        report[s.name] = {"filled_fraction": rep.filled_fraction, "borrowed": rep.borrowed}
    cycle_obs = build_cycle_observations(table, layout, day0, num_days, withheld=withheld,
                                         sensor=sensor_of_rows(table, config.sources),
                                         representativeness_fraction=config.filter.representativeness_fraction)
    truth = None
    if truth_run is not None:
        # truth.states[k] is the state at day0 + k days; analysis of cycle i is at day0 + i + 1.
        truth = truth_on_layout(truth_run.states[1:num_days + 1], truth_run.layout.names(), layout)
    return Prepared(config, table, layout, day0, num_days, stack_sites(forcings), stack_sites(structs),
                    cycle_obs, withheld, truth, report, None if truth_run is None else truth_run.params)


def truth_on_layout(states: np.ndarray, truth_names, layout: StateLayout) -> np.ndarray:
    """A synthetic truth's states (T, len(truth_names)) on the twin's layout: NaN for the elements the truth
    lacks (the model biases and sensor offsets and readings: the twin's own, not the sea's)."""
    names = {n: i for i, n in enumerate(truth_names)}
    out = np.full((states.shape[0], layout.dim), np.nan, np.float32)
    for i, n in enumerate(layout.names()):
        if n in names:
            out[:, i] = states[:, names[n]]
    return out


def station_tracer_rows(table: xr.Dataset, site_name: str, layers: tuple[str, ...], exclude: np.ndarray | None,
                        minimum: int, positive: bool = False):
    """``("tracer/layer", rows)`` for each layer and observed tracer of a site with at least ``minimum``
    usable observations (positive ones only if asked; rows marked in ``exclude`` left out)."""
    from emulators.parameters import TRACERS
    value = table["value"].values
    usable = np.isin(table["qc"].values, flags.USABLE_QC) & np.isfinite(value) & ((value > 0) | (not positive))
    if exclude is not None:
        usable &= ~exclude
    at_site = usable & (table["site"].values == site_name)
    for layer in layers:
        for tracer in TRACERS:
            rows = at_site & (table["layer"].values == layer) & (table["variable"].values == tracer)
            if rows.sum() >= minimum:
                yield f"{tracer}/{layer}", rows


def data_offshore_water(table: xr.Dataset, site_name: str, layers: tuple[str, ...],
                        exclude: np.ndarray | None = None) -> dict[str, float]:
    """A site's offshore water taken from its own data: per layer, the median of the usable observations of
    each observed tracer with at least 10 of them (rows marked in ``exclude`` left out), as
    ``{"tracer/layer": value}``."""
    return {key: float(np.median(table["value"].values[rows]))
            for key, rows in station_tracer_rows(table, site_name, layers, exclude, 10)}


def data_offshore_seasonal(table: xr.Dataset, site_name: str, layers: tuple[str, ...],
                           exclude: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """A site's seasonal offshore water from its own data: per layer and observed tracer with at least 20
    positive usable observations (rows in ``exclude`` left out), the annual harmonic (a, b) of the log of
    the values (:func:`harmonic_fit`), as ``{"tracer/layer": (a, b)}``."""
    from emulators.forcing import day_of_year_of
    out = {}
    for key, rows in station_tracer_rows(table, site_name, layers, exclude, 20, positive=True):
        a, b = harmonic_fit(day_of_year_of(table["time"].values[rows]), np.log(table["value"].values[rows]))
        out[key] = (round(float(np.clip(a, -3, 3)), 4), round(float(np.clip(b, -3, 3)), 4))
    return out


def data_offshore_salinity(table: xr.Dataset, site_name: str, quantile: float = 0.9) -> float:
    """The salinity of a site's offshore water from its own data: the ``quantile`` of its usable surface
    salinity observations (the sea when no plume is there; the highest values are often evaporated summer
    water or errors)."""
    _, values = usable_series(table, site_name, "salinity", "surface")
    if values.size < 10:
        raise ValueError(f"site {site_name!r}: river.discharge_from_salinity needs river.offshore_salinity or at "
                         f"least 10 usable surface salinity observations (found {values.size})")
    return round(float(np.quantile(values, quantile)), 3)


def data_river_water(table: xr.Dataset, site_name: str, offshore_salinity: float,
                     exclude: np.ndarray | None = None, minimum: int = 20) -> dict[str, float]:
    """A river's nutrients from a site's surface samples: per nutrient with at least ``minimum`` samples that
    have a salinity at the same time (rows in ``exclude`` left out), the value at freshwater fraction 1 of the
    least-squares line of the nutrient against f = 1 - S / ``offshore_salinity`` (clipped at 0): the river
    end member of the mixing line, as ``{nutrient: mmol m-3}``."""
    from emulators.forcing import RIVER_WATER

    def cast_means(variable: str) -> pd.Series:
        # Per sampling time: a nutrient is paired with the salinity of the same cast.
        times, values = usable_series(table, site_name, variable, "surface", exclude)
        return pd.Series(values, index=times).groupby(level=0).mean()

    salinity = cast_means("salinity")
    out = {}
    for nutrient in RIVER_WATER:
        samples = cast_means(nutrient)
        paired = pd.concat([samples, salinity], axis=1, join="inner").to_numpy()
        if paired.shape[0] < minimum:
            continue
        fresh = 1.0 - paired[:, 1] / offshore_salinity
        slope, intercept = np.polyfit(fresh, paired[:, 0], 1)
        out[nutrient] = round(max(float(intercept + slope), 0.0), 3)
    return out


def resolve_boundaries(config: TwinConfig, table: xr.Dataset, layers: tuple[str, ...],
                       exclude: np.ndarray | None = None):
    """The config with each ``boundary_from_data`` site's ``offshore_water`` filled from ``table`` (values the
    config gives are kept), and each salinity-driven river's ``offshore_salinity``, so the resolved config, and
    a store made from it, carry the boundary itself. Returns (config, {"<site> boundary": the values taken from
    the data})."""
    sites, report = [], {}
    for s in config.sites:
        if s.river is not None and s.river.discharge_from_salinity and s.river.offshore_salinity is None:
            salinity = data_offshore_salinity(table, s.name)
            report[f"{s.name} river offshore salinity"] = salinity
            s = s.model_copy(update={"river": s.river.model_copy(update={"offshore_salinity": salinity})})
        if s.river is not None and s.river.nutrients_from_data:
            water = data_river_water(table, s.name, s.river.offshore_salinity, exclude)
            report[f"{s.name} river water"] = water
            # Fixed from here on: a store or a rerun of the resolved config keeps these values.
            s = s.model_copy(update={"river": s.river.model_copy(update={**water, "nutrients_from_data": False})})
        if s.boundary_from_data:
            found = {k: v for k, v in data_offshore_water(table, s.name, layers, exclude).items()
                     if k not in s.offshore_water}
            report[f"{s.name} boundary"] = found
            s = s.model_copy(update={"offshore_water": {**found, **s.offshore_water}})
            if s.boundary_seasonal:
                seasonal = {k: v for k, v in data_offshore_seasonal(table, s.name, layers, exclude).items()
                            if k not in s.offshore_seasonal}
                report[f"{s.name} seasonal boundary"] = seasonal
                s = s.model_copy(update={"offshore_seasonal": {**seasonal, **s.offshore_seasonal}})
        sites.append(s)
    return config.model_copy(update={"sites": tuple(sites)}), report


def model_process_params(config: TwinConfig, prepared: Prepared) -> ProcessParams:
    """The process model's parameters: the defaults, or a perfect-model twin's truth parameters."""
    if config.model.process_params == "truth":
        if prepared.truth_params is None:
            raise ValueError("model.process_params 'truth' needs a twin experiment (its truth's parameters)")
        return prepared.truth_params
    return configured_process_params(config.model)


def build_model(config: TwinConfig, prepared: Prepared, quiet: bool = False):
    """(stepper, log_error_sd (d,), emulator or None) for the configured model."""
    from twin.forecast import emulator_log_error_sd, emulator_stepper
    if config.model.kind == "process":
        stepper = process_stepper(model_process_params(config, prepared), prepared.sites, config.model.substeps,
                                  offshore_seasonal(config.sites, prepared.layout))
        return stepper, process_log_error_sd(config, prepared.layout), None
    from twin.emulator_source import obtain_emulator
    emulator = obtain_emulator(config, prepared, quiet)
    sd = emulator_log_error_sd(emulator, config.model)
    truth = config.model.process_params == "truth"
    return emulator_stepper(emulator, model_process_params(config, prepared) if truth else None), sd, emulator


def process_log_error_sd(config: TwinConfig, layout: StateLayout) -> np.ndarray:
    """Daily multiplicative model error of the process model per model-state element of a site
    (``model.process_log_error_sd``, per tracer and layer; tracers vary fastest, then layers)."""
    from emulators.parameters import TRACERS
    n = len(TRACERS)
    return np.array([config.model.process_error_sd(TRACERS[i % n], layout.layers[i // n])
                     for i in range(layout.model_dim)], np.float32)


def filter_params(config: TwinConfig) -> FilterParams:
    f = config.filter
    return FilterParams(method=f.method, inflation_factor=f.inflation, rtps_alpha=f.rtps,
                        adaptive_inflation=f.adaptive_inflation, outlier_threshold=f.outlier_threshold)


def filter_arrays(config: TwinConfig, layout: StateLayout) -> dict[str, Any]:
    """The configured filter's per-element arrays, as keyword arguments of ``run_window``: the elements
    inflation acts on, the variable localization's shares and the LETKF's local domains and tapers (each None
    where the config has none)."""
    return {"inflation_mask": layout.inflation_mask(),
            "update_weight": layout.update_weight(config.filter.variable_localization),
            "localization": local_taper(config, layout)}


def alert_specs(prepared: Prepared) -> tuple[AlertSpec, ...]:
    """The configured alerts as the engine computes them: first each alert with its observation error (the
    probability it issues, verified against observations), then, in a twin experiment, each again with no
    observation error (the probability that the state itself goes beyond, verified against the truth).
    ``WindowOutputs.alert_probability`` has these columns, in this order."""
    from twin.alerts import alert_error_sd
    layout = prepared.layout
    specs, state_specs = [], []
    for alert in prepared.config.alerts:
        i = layout.index(alert.variable, alert.site, alert.layer)
        if i < 0:
            raise ValueError(f"alert {alert.name!r}: the twin carries no {alert.variable} at {alert.site}/"
                             f"{alert.layer} (sites {list(layout.sites)}, layers {list(layout.layers)})")
        sign = 1 if alert.direction == "above" else -1
        specs.append(AlertSpec(i, float(alert.threshold), sign, alert_error_sd(alert), int(alert.horizon_days)))
        state_specs.append(specs[-1]._replace(error_sd=0.0))
    return tuple(specs + (state_specs if prepared.truth is not None else []))


def _forcing_ahead(forcing, stop: int, days: int):
    """Forcing of the ``days`` days from cycle ``stop`` on (the last day repeated past the end)."""
    if days == 0:
        return None
    T = jax.tree.leaves(forcing)[0].shape[0]
    idx = np.minimum(np.arange(stop, stop + days), T - 1)
    return jax.tree.map(lambda a: a[idx], forcing)


def _concat_outputs(parts: list[WindowOutputs]) -> WindowOutputs:
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=0), *parts)


def run_windows(prepared: Prepared, forecast, key, quiet: bool = False, model_params=None, refitter=None):
    """All cycles, window by window (a window also ends where a refit is due); returns (final EngineState,
    WindowOutputs over all cycles, timings, initial members)."""
    config = prepared.config
    layout = prepared.layout
    members = initial_ensemble(jax.random.fold_in(key, 0), layout, config.filter.members,
                               np.tile(np.asarray(initial_state(layout.num_layers))[None], (len(layout.sites), 1)),
                               config.filter.initial_spread, **state_ar1(config, layout))
    state = EngineState(members, initial_inflation_state())
    params = filter_params(config)
    log_mask = jnp.asarray(layout.log_mask())
    filter_args = filter_arrays(config, layout)
    obs_all = prepared.cycle_obs.obs
    T = prepared.num_days
    # Windows end where a refit is due and are at most window_days long, counted from the last refit: with
    # a refit every K < window_days days all windows but the last have K days (one compiled program).
    refits = sorted(set(refitter.boundaries(T) if refitter else []) - {0})
    bounds = sorted({c for a, b in zip([0] + refits, refits + [T])
                     for c in range(a, b, config.hindcast.window_days)}) + [T]
    cycle_key = jax.random.fold_in(key, 1)
    alerts = alert_specs(prepared) or None
    horizon = max((a.horizon_days for a in alerts or ()), default=0)
    parts, timings = [], []
    from tqdm import tqdm
    bar = tqdm(total=T, desc="cycles", unit="day", disable=quiet, file=sys.stderr)
    for w, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        obs_w = jax.tree.map(lambda a: jnp.asarray(a[start:stop]), obs_all)
        forcing_w = jax.tree.map(lambda a: a[start:stop], prepared.forcing)
        t0 = time.perf_counter()
        state, out = run_window(forecast, state, obs_w, forcing_w, cycle_key, params, log_mask, start,
                                model_params, alerts, _forcing_ahead(prepared.forcing, stop, horizon), **filter_args)
        jax.block_until_ready(out)
        timings.append({"window": w, "days": stop - start, "seconds": time.perf_counter() - t0})
        parts.append(out)
        bar.update(stop - start)
        if refitter is not None and refitter.due(stop):
            model_params = refitter(stop, _concat_outputs(parts))
    bar.close()
    return state, _concat_outputs(parts), timings, members


def parameter_inputs(prepared: Prepared, emulator, model_params, refitter):
    """The emulator's parameter inputs as each cycle used them (``twin.products.ParameterInputs``), where the
    filter estimates some of them; None otherwise."""
    if emulator is None or not prepared.layout.estimated:
        return None
    from twin.forecast import parameter_input_names, parameter_input_range
    from twin.products import ParameterInputs
    from twin.refit import parameter_values_by_cycle
    names = parameter_input_names(emulator)
    values = parameter_values_by_cycle(np.asarray(model_params.parameters), names,  # the refitter's initial too
                                       refitter.records if refitter else [], prepared.num_days)
    # A refit widens the emulator's ranges to its training data's, whose parameter inputs are kept within the
    # ranges (analysis_trajectories): these stay the ones the stepper clipped to.
    return ParameterInputs(names, values, *parameter_input_range(emulator))


def refit_summary(prepared: Prepared, refitter, stepper, outputs) -> dict:
    """The refit history and, in a twin experiment, the 7-day forecast RMSE against the truth of the
    pretrained and the final emulator from the same analyses."""
    from twin.refit import LEAD_DAYS, forecast_rmse_vs_truth
    summary: dict[str, Any] = {"interval_days": prepared.config.refit.interval_days,
                               "history": [r.to_dict() for r in refitter.records],
                               "kept": sum(r.kept for r in refitter.records)}
    if prepared.truth is not None:
        names = prepared.layout.names()
        mean = np.asarray(outputs.analysis_mean)
        rmse = {label: forecast_rmse_vs_truth(refitter.deterministic, mean, prepared.truth, prepared.forcing, w,
                                              names)
                for label, w in (("pretrained", refitter.initial), ("refit", refitter.model_params))}
        summary[f"forecast_{LEAD_DAYS}day_rmse"] = rmse
        ratio = np.asarray([rmse["refit"][k] / max(rmse["pretrained"][k], 1e-30) for k in rmse["refit"]])
        summary["refit_over_pretrained"] = {  # one figure for "does the refit forecast better?"
            "mean_rmse_ratio": float(ratio.mean()), "variables_better": int((ratio < 1.0).sum()),
            "variables": len(ratio)}
    return summary


CALIBRATION_MIN_SAMPLES = 20  # assimilated chlorophyll samples a layer needs for its scale to be estimated


def chlorophyll_samples(prepared: Prepared, outputs: WindowOutputs):
    """(value (T, m), forecast (T, m), masks {(s, l): (T, m) bool}): the chlorophyll samples
    offered to the filter (assimilated or rejected as outliers) with a finite value and forecast, per site and
    layer. Samples the gross-error check rejected count: a biased diagnostic is what makes good samples look
    like outliers; withheld ones never do."""
    from assimilation import dispositions as disp
    layout = prepared.layout
    obs = prepared.cycle_obs.obs
    index, value = np.asarray(obs.state_index), np.asarray(obs.value)
    forecast = np.asarray(outputs.obs_forecast)
    used = (np.isin(np.asarray(outputs.disposition), (disp.ASSIMILATED, disp.REJECTED_OUTLIER))
            & np.isfinite(value) & np.isfinite(forecast))
    masks = {(s, li): used & (index == layout.index("chlorophyll", site, layer))
             for s, site in enumerate(layout.sites) for li, layer in enumerate(layout.layers)}
    return value, forecast, masks


def chlorophyll_forecast_ratio(prepared: Prepared, outputs: WindowOutputs) -> np.ndarray:
    """(S, L) mean of the assimilated chlorophyll over the mean of the forecast at those samples
    (:func:`chlorophyll_samples`: the factor the forecasts are low by); NaN where a layer has fewer than
    ``CALIBRATION_MIN_SAMPLES``."""
    value, forecast, masks = chlorophyll_samples(prepared, outputs)
    ratio = np.full((len(prepared.layout.sites), prepared.layout.num_layers), np.nan)
    for (s, li), mask in masks.items():
        if mask.sum() >= CALIBRATION_MIN_SAMPLES and forecast[mask].mean() > 0:
            ratio[s, li] = value[mask].mean() / forecast[mask].mean()
    return ratio


def chlorophyll_seasonal_ratio(prepared: Prepared, outputs: WindowOutputs) -> np.ndarray:
    """(S, L, 2) the annual harmonic (a, b) of log(sample / forecast) at the positive samples of
    :func:`chlorophyll_samples`, its mean removed (the scale carries that): least squares of
    ``log r = c + a cos(w d) + b sin(w d)``, d the day of the year; 0 where a layer has fewer samples than
    ``CALIBRATION_MIN_SAMPLES``."""
    from emulators.forcing import day_of_year_of
    value, forecast, masks = chlorophyll_samples(prepared, outputs)
    days = prepared.day0 + np.arange(value.shape[0]) * np.timedelta64(1, "D")
    day = np.broadcast_to(day_of_year_of(days)[:, None], value.shape)                      # (T, m)
    out = np.zeros((len(prepared.layout.sites), prepared.layout.num_layers, 2))
    with np.errstate(invalid="ignore"):
        positive = (value > 0) & (forecast > 0)
    for (s, li), mask in masks.items():
        mask = mask & positive
        if mask.sum() >= CALIBRATION_MIN_SAMPLES:
            out[s, li] = harmonic_fit(day[mask], np.log(value[mask] / forecast[mask]))
    return out


def harmonic_fit(day_of_year: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(a, b) of the least-squares fit ``values = c + a cos(w d) + b sin(w d)``, w = 2 pi / 365.25."""
    angle = 2.0 * np.pi * np.asarray(day_of_year, np.float64) / DAYS_PER_YEAR
    design = np.stack([np.ones_like(angle), np.cos(angle), np.sin(angle)], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.asarray(values, np.float64), rcond=None)
    return coef[1:]


def next_chlorophyll_scale(scale: np.ndarray, ratio: np.ndarray, previous=None) -> np.ndarray:
    """The next estimate of the scales whose forecasts are unbiased (ratio 1), by the secant method in log
    space from ``previous`` = (scale, ratio) of the pass before (first pass: scale * ratio). The response
    is damped (on Point B a scale x2.8 moved the ratio x0.44, not x0.36), so the slope is bounded to
    [0.5, 1.5]; layers without a ratio keep their scale."""
    log_s, log_r = np.log(scale), np.log(ratio)
    slope = np.ones_like(log_s)
    if previous is not None:
        d_s, d_r = log_s - np.log(previous[0]), log_r - np.log(previous[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(np.abs(d_s) > 1e-3, -d_r / d_s, 1.0)
        slope = np.clip(np.nan_to_num(slope, nan=1.0), 0.5, 1.5)
    step = np.clip(np.where(np.isfinite(log_r), log_r / slope, 0.0), -np.log(4.0), np.log(4.0))  # x4 at most
    return np.exp(log_s + step)


def calibrate_chlorophyll(prepared: Prepared, forecast_for, key, model_params, quiet: bool
                          ) -> tuple[Prepared, list[dict]]:
    """``hindcast.calibrate_chlorophyll`` passes of the whole cycle, each estimating the scales of the
    chlorophyll diagnostic per site and layer (:func:`next_chlorophyll_scale`); returns the prepared data
    with the estimate in ``config.sites[].chlorophyll_scale`` and the history of the passes.

    ``forecast_for(scale (S, L))`` builds the forecast. Only samples offered to the filter enter the estimate
    (assimilated or rejected as outliers): withheld validation samples never do. An operational store does not
    calibrate: it takes the factors its config gives (a hindcast's resolved config lists them).
    """
    layout, config = prepared.layout, prepared.config
    seasonal = config.hindcast.calibrate_chlorophyll_seasonal
    given = chlorophyll_scales(config.sites, layout)
    shape = (len(layout.sites), layout.num_layers)
    given = np.ones(shape) if given is None else given.astype(np.float64)
    scale = given[..., 0] if given.ndim == 3 else given
    harmonic = given[..., 1:] if given.ndim == 3 else np.zeros(shape + (2,))
    history, previous = [], None

    def per_layer(values: np.ndarray) -> dict[str, float]:
        return {f"{s}/{layer}": (float(values[i, j]) if values.ndim == 2 else [float(v) for v in values[i, j]])
                for i, s in enumerate(layout.sites) for j, layer in enumerate(layout.layers)}

    def factors():
        return np.concatenate([scale[..., None], harmonic], axis=-1) if harmonic.any() else scale
    for k in range(config.hindcast.calibrate_chlorophyll):
        _log(f"chlorophyll calibration, pass {k + 1} of {config.hindcast.calibrate_chlorophyll}", quiet)
        _, outputs, _, _ = run_windows(prepared, forecast_for(factors()), key, True, model_params)
        ratio = chlorophyll_forecast_ratio(prepared, outputs)
        entry = {"pass": k + 1, "scale": per_layer(scale), "observed_over_forecast": per_layer(ratio)}
        if seasonal:
            # The harmonic's error, added to it (a fixed-point step: the filter damps the response, so the
            # passes approach it from one side, as the scale's secant steps do).
            residual = chlorophyll_seasonal_ratio(prepared, outputs)
            entry.update(seasonal=per_layer(harmonic), seasonal_residual=per_layer(residual))
            harmonic = np.clip(harmonic + residual, -2.0, 2.0)
        history.append(entry)
        scale, previous = next_chlorophyll_scale(scale, ratio, previous), (scale, ratio)

    def update(site):
        if site.name not in layout.sites:
            return site
        i = layout.sites.index(site.name)
        fields = {"chlorophyll_scale": {layer: round(float(scale[i, j]), 4) for j, layer in enumerate(layout.layers)}}
        if seasonal:
            fields["chlorophyll_seasonal"] = {layer: (round(float(harmonic[i, j, 0]), 4),
                                                      round(float(harmonic[i, j, 1]), 4))
                                              for j, layer in enumerate(layout.layers)}
        return site.model_copy(update=fields)
    sites = tuple(update(site) for site in config.sites)
    return dataclasses.replace(prepared, config=config.model_copy(update={"sites": sites})), history


def publish(work: Path, out: Path) -> None:
    """Move the finished run in ``work`` to ``out``: the old run stays until the new one is complete."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time() * 1e6)}")
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class HindcastRun(NamedTuple):
    """A published hindcast, with what its products were made from."""
    metrics: dict
    prepared: Prepared
    outputs: WindowOutputs
    dispositions: np.ndarray


def run_hindcast(config: TwinConfig, out: str | Path | None = None, *, quiet: bool = False) -> dict:
    """Run the whole hindcast and publish its products into ``out`` (default: config.output.directory)."""
    return hindcast(config, out, quiet=quiet).metrics


def hindcast(config: TwinConfig, out: str | Path | None = None, *, quiet: bool = False,
             adjust: Callable[[Prepared], Prepared] | None = None, baselines: bool = True) -> HindcastRun:
    """:func:`run_hindcast`, returning what the products were made from.

    Args:
        adjust: applied to the prepared data after ingest and QC (``twin osse`` withholds denied rows).
        baselines: run the free-run and process-model baselines of a twin experiment (the same in every
            run of a data-denial study, so the study skips them).
    """
    from twin.products import write_products
    out = Path(out or config.output.directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work.chmod(0o755)
    try:
        started = time.perf_counter()
        write_resolved_config(config, work)
        from twin.emulator_source import require_checkpoint
        require_checkpoint(config)
        prepared = prepare(config, work, quiet)
        if adjust is not None:
            prepared = adjust(prepared)
        write_resolved_config(prepared.config, work)
        alert_specs(prepared)  # an alert on a site or layer the twin lacks fails now, not after pretraining
        stepper, log_sd, emulator = build_model(prepared.config, prepared, quiet)
        # The chlorophyll diagnostic: the process model's parameters (a perfect-model twin's are the truth's).
        chl_params = model_process_params(prepared.config, prepared) if prepared.config.model.kind == "process" \
            else ProcessParams()
        key = jax.random.PRNGKey(prepared.config.seed)

        ar1 = state_ar1(prepared.config, prepared.layout)

        def forecast_for(scale):
            return make_forecast(stepper, prepared.layout, prepared.sites, log_sd, chl_params, scale, **ar1)
        refitter, model_params = None, None
        if emulator is not None:
            from twin.forecast import emulator_model_params
            truth = prepared.config.model.process_params == "truth"
            model_params = emulator_model_params(emulator, model_process_params(prepared.config, prepared)
                                                 if truth else None)
        calibration = None
        if prepared.config.hindcast.calibrate_chlorophyll:
            prepared, calibration = calibrate_chlorophyll(prepared, forecast_for, key, model_params, quiet)
            write_resolved_config(prepared.config, work)
        chl_scale = chlorophyll_scales(prepared.config.sites, prepared.layout)
        forecast = forecast_for(chl_scale)
        _log(f"cycling {prepared.num_days} days with {prepared.config.filter.method.upper()}, "
             f"N = {prepared.config.filter.members}, model: {prepared.config.model.kind}", quiet)
        if emulator is not None and prepared.config.refit.interval_days is not None:
            from twin.emulator_source import train_config
            from twin.refit import Refitter
            refitter = Refitter(emulator, prepared, stepper, train_config(prepared.config),
                                jax.random.fold_in(key, 2), quiet, initial=model_params)
        _, outputs, timings, members0 = run_windows(prepared, forecast, key, quiet, model_params, refitter)
        refits = None
        if refitter is not None:
            emulator = refitter.emulator
            refits = refit_summary(prepared, refitter, stepper, outputs)
        runs = {}
        if baselines and prepared.truth is not None:
            _log("free run and process-model baselines", quiet)
            runs["free_run"] = np.asarray(free_forecast(
                forecast, members0, prepared.forcing, jax.random.fold_in(key, 10**6), prepared.num_days
            ).mean(axis=1))
            if prepared.config.model.kind == "process" and prepared.config.model.process_params != "truth":
                runs["process_model"] = runs["free_run"]  # the same model: one run serves both
            else:
                process = make_forecast(process_stepper(ProcessParams(), prepared.sites,
                                                        prepared.config.model.substeps,
                                                        offshore_seasonal(prepared.config.sites, prepared.layout)),
                                        prepared.layout, prepared.sites,
                                        process_log_error_sd(prepared.config, prepared.layout),
                                        chlorophyll_scale=chl_scale, parameters_act=False, **ar1)
                runs["process_model"] = np.asarray(free_forecast(
                    process, members0, prepared.forcing, jax.random.fold_in(key, 10**6 + 1), prepared.num_days
                ).mean(axis=1))
        dispositions = row_dispositions(prepared.cycle_obs, np.asarray(outputs.disposition))
        metrics = write_products(work, prepared, outputs, dispositions, runs, emulator,
                                 {"cycles": timings, "total_seconds": time.perf_counter() - started}, refits,
                                 calibration, parameter_inputs(prepared, emulator, model_params, refitter))
        publish(work, out)
        _log(f"done: {out}", quiet)
        return HindcastRun(metrics, prepared, outputs, dispositions)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

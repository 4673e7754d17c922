"""What-if scenarios on a stored twin: ``twin scenario STORE SCENARIO.yaml`` (DESIGN section 8).

From an analysis of the store (its last one, or an earlier day of its history), the ensemble is run ``days``
ahead twice or more: under the store's forcing (the baseline) and under each scenario's changed forcing or
parameters, from the same members with the same random key, so every member sees the same model-error noise
in every run and the difference ``scenario - baseline`` of a member is the effect of the change on that
member. The ensemble of differences gives the effect with its uncertainty (mean and 5-95 % interval).

Also reported: the configured alerts' exceedance probabilities under baseline and scenario, and the days on
which a forcing feature lies outside the emulator's training range (its answer there is an extrapolation).

Policies:
- Forcing changes act on the forcing arrays over a period (inclusive dates; the whole horizon by default).
  Step ``j`` of the horizon is the day ``start + j`` (it moves the state to ``start + j + 1``).
- A temperature change recomputes the mixing index (stratification) on the days it changed the
  temperature, as the store's forcing derives it from the layer temperatures, unless the scenario changes
  ``forcing.mixing_index`` itself. Non-negative fields are clipped at zero after a change.
- Parameter changes (``param.<ProcessParams field>``) need a model that takes parameters: the process model
  (``model: process`` in the scenario file, or a store run with ``model.kind: process``) or an emulator
  conditioned on that parameter (``param/<name>`` among its forcing features). Otherwise they are refused.
  Where the store's filter estimates a parameter (``model.estimate_parameters``), the emulator runs each member
  with the scenario's value times that member's analysed factor, in the baseline as in the scenario (the
  factor is what the data asked of the model); a ``process_check`` runs the process model with the value
  itself, so its differences from the emulator's include the factor.
- A change that leaves its field unchanged (scaling a zero series, e.g. river nitrate where the forcing has
  no river) is reported as a warning, not silently passed.
"""
from __future__ import annotations

import dataclasses
import difflib
import html
import json
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import xarray as xr
from pydantic import Field, field_validator, model_validator

from twin.config import Frozen, parse_config, read_yaml
from twin.errors import ConfigError

QUANTILES = (5, 95)  # the reported interval: 90 %
ChangeOperation = Literal["shift", "scale", "replace"]
NON_NEGATIVE_EXEMPT = ("temperature",)  # every other forcing field is clipped at zero after a change
_LAYER_FIELDS = ("temperature", "salinity")


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[twin] {message}", file=sys.stderr, flush=True)


def _forcing_fields() -> tuple[str, ...]:
    from emulators.forcing import FORCING_FIELDS
    return tuple(f for f in FORCING_FIELDS if f != "day_of_year")


def _param_fields() -> tuple[str, ...]:
    from emulators.parameters import ProcessParams
    return ProcessParams._fields


def _unknown(kind: str, name: str, valid: tuple[str, ...]) -> str:
    hint = difflib.get_close_matches(name, valid, n=1)
    return (f"unknown {kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid: {', '.join(valid)}")


# --- the scenario file -------------------------------------------------------------------------------


class Period(Frozen):
    """Days of the change, both inclusive (UTC dates)."""
    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self):
        if self.end < self.start:
            raise ValueError(f"period end {self.end} is before its start {self.start}")
        return self


class Change(Frozen):
    """One change: ``target`` is ``forcing.<Forcing field>`` or ``param.<ProcessParams field>``."""
    target: str = Field(description="forcing.<field> (e.g. forcing.temperature) or param.<name>")
    layer: Literal["surface", "bottom"] | None = Field(
        default=None, description="temperature and salinity only: one layer (default: every layer)")
    operation: ChangeOperation
    value: float
    period: Period | None = Field(default=None, description="default: the whole horizon")

    @field_validator("target")
    @classmethod
    def _known_target(cls, v: str):
        kind, _, name = v.partition(".")
        if kind == "forcing":
            if name == "day_of_year":
                raise ValueError("forcing.day_of_year is the time axis and cannot be changed")
            if name not in _forcing_fields():
                raise ValueError(_unknown("forcing field", name, _forcing_fields()))
        elif kind == "param":
            if name not in _param_fields():
                raise ValueError(_unknown("process-model parameter", name, _param_fields()))
        else:
            raise ValueError(f"target must read 'forcing.<field>' or 'param.<name>', got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        kind, _, name = self.target.partition(".")
        if self.layer is not None and name not in _LAYER_FIELDS:
            raise ValueError(f"'layer' applies to forcing.temperature and forcing.salinity only, not {self.target}")
        if kind == "param" and self.period is not None:
            raise ValueError(f"{self.target}: a parameter change holds over the whole horizon; remove 'period'")
        if self.operation == "scale" and self.value < 0:
            raise ValueError(f"a scale factor must be >= 0, got {self.value}")
        return self

    @property
    def kind(self) -> str:
        return self.target.partition(".")[0]

    @property
    def name(self) -> str:
        return self.target.partition(".")[2]


class Scenario(Frozen):
    name: str = Field(min_length=1)
    description: str = ""
    changes: tuple[Change, ...]

    @model_validator(mode="after")
    def _some_change(self):
        # Checked here, not with min_length: a bad item would also report its list as empty.
        if not self.changes:
            raise ValueError(f"scenario {self.name!r} has no changes")
        return self


class ScenarioFile(Frozen):
    """A scenario file: one horizon, one seed, one or more scenarios compared with the same baseline."""
    seed: int = Field(default=0, ge=0)
    days: int = Field(default=90, ge=1, le=3660, description="horizon in days")
    start: date | None = Field(default=None, description="analysis to start from (default: the last)")
    model: Literal["store", "process"] = Field(
        default="store", description="store: the store's model; process: the process model for every run")
    process_check: bool = Field(
        default=False, description="with an emulator store, also run the baseline and every scenario with the "
                                   "process model (same members, forcing and draws) and report its differences "
                                   "beside the emulator's: how faithfully the emulator answers this what-if")
    scenarios: tuple[Scenario, ...]

    @model_validator(mode="after")
    def _unique_names(self):
        if not self.scenarios:
            raise ValueError("the file lists no scenarios")
        names = [s.name for s in self.scenarios]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate scenario names {dup}")
        return self


def load_scenario_file(path: str | Path) -> ScenarioFile:
    """Read and validate a scenario file; raises ``ConfigError`` naming each bad key."""
    return parse_config(read_yaml(path), str(path), model=ScenarioFile)


# --- forcing and parameter changes -------------------------------------------------------------------


def _period_steps(change: Change, start: np.datetime64, days: int, where: str) -> tuple[slice, str | None]:
    """Steps of the horizon a change covers, and a warning when its period is cut by the horizon."""
    if change.period is None:
        return slice(0, days), None
    lo = int((np.datetime64(change.period.start, "D") - start) / np.timedelta64(1, "D"))
    hi = int((np.datetime64(change.period.end, "D") - start) / np.timedelta64(1, "D")) + 1
    last = str(start + np.timedelta64(days - 1, "D"))
    if hi <= 0 or lo >= days:
        raise ConfigError(where, [f"period {change.period.start}..{change.period.end} lies outside the horizon "
                                  f"{str(start)}..{last}: move it or change 'start' and 'days'"])
    note = None
    if lo < 0 or hi > days:
        note = (f"{change.target}: period {change.period.start}..{change.period.end} cut to the horizon "
                f"{str(start)}..{last}")
    return slice(max(lo, 0), min(hi, days)), note


def apply_forcing_changes(forcing, changes, layers: tuple[str, ...], start: np.datetime64, days: int,
                          where: str = "<scenario>"):
    """The forcing (NumPy fields, (T, S, ...)) with the forcing changes applied in order.

    Returns (forcing, warnings). See the module docstring for the mixing index and the clipping.
    """
    from emulators.forcing import mixing_index_from_temperature
    fields = {k: np.array(v, copy=True) for k, v in forcing._asdict().items()}
    warnings: list[str] = []
    for change in changes:
        if change.kind != "forcing":
            continue
        steps, note = _period_steps(change, start, days, where)
        if note:
            warnings.append(note)
        arr = fields[change.name]
        index: tuple = (steps,)
        if change.layer is not None:
            if change.layer not in layers:
                raise ConfigError(where, [f"{change.target}: the twin has no {change.layer} layer "
                                          f"(layers: {', '.join(layers)})"])
            index = (steps, slice(None), layers.index(change.layer))
        old = arr[index]
        value = np.float32(change.value)
        new = old + value if change.operation == "shift" else (
            old * value if change.operation == "scale" else np.full_like(old, value))
        if change.name not in NON_NEGATIVE_EXEMPT:
            new = np.maximum(new, 0)
        if np.array_equal(new, old):
            warnings.append(f"{change.target} {change.operation} {change.value:g}: no effect, the field is "
                            f"{'zero' if not np.any(old) else 'unchanged'} over the period")
        arr[index] = new
    changed_t = np.any(fields["temperature"] != forcing.temperature, axis=tuple(range(1, forcing.temperature.ndim)))
    if changed_t.any() and not any(c.target == "forcing.mixing_index" for c in changes):
        mixing = np.asarray(mixing_index_from_temperature(fields["temperature"]), fields["mixing_index"].dtype)
        fields["mixing_index"][changed_t] = mixing[changed_t]
    return type(forcing)(**fields), warnings


def changed_params(base, changes) -> tuple[Any, list[str]]:
    """``base`` (ProcessParams) with the parameter changes applied; warnings for values outside the
    literature range (``emulators.parameters.PARAM_RANGES``)."""
    from emulators.parameters import PARAM_RANGES
    values = dict(base._asdict())
    warnings = []
    for change in changes:
        if change.kind != "param":
            continue
        old = float(values[change.name])
        new = {"shift": old + change.value, "scale": old * change.value, "replace": change.value}[change.operation]
        lo, hi = PARAM_RANGES[change.name]
        if not lo <= new <= hi:
            warnings.append(f"{change.target} = {new:g} lies outside its literature range [{lo:g}, {hi:g}]")
        values[change.name] = np.float32(new)
    return type(base)(**{k: jax.numpy.asarray(v, jax.numpy.float32) for k, v in values.items()}), warnings


# --- running -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScenarioRun:
    """Ensembles of a scenario run: ``baseline`` (days, N, n), ``scenarios`` name -> (days, N, n)."""
    spec: ScenarioFile
    start: np.datetime64
    times: np.ndarray                 # (days,) valid time of each state
    layout: Any
    baseline: np.ndarray
    scenarios: dict[str, np.ndarray]
    forcing: dict[str, Any]           # "baseline" and each scenario -> Forcing (NumPy, (days, S, ...))
    outside: dict[str, np.ndarray]    # run -> (days, F) bool, a feature outside the training range at any site
    feature_names: tuple[str, ...]
    warnings: dict[str, list[str]]
    model: str
    alerts: tuple
    store: str
    members: int
    start_members: np.ndarray                     # (N, n) the members every run starts from
    process: dict[str, np.ndarray] | None = None  # process_check: "baseline" and each scenario -> (days, N, n)


def _start_members(store, manifest, history, spec: ScenarioFile, day0, key, where: str):
    """(analysis index k since day0, members): the stored ensemble for the last analysis, else members
    drawn around the stored analysis mean and sd of that day (``twin.forecast.members_around``, as ``twin
    init --from-hindcast``)."""
    from twin.operational import load_state, load_store_config
    done = int(manifest["cycles_done"])
    last = day0 + np.timedelta64(done, "D")
    if spec.start is None:
        k = done
    else:
        k = int((np.datetime64(spec.start, "D") - day0) / np.timedelta64(1, "D"))
        if not 1 <= k <= done:
            raise ConfigError(where, [f"start: {spec.start} is not an analysis of the store (analyses from "
                                      f"{str(day0 + np.timedelta64(1, 'D'))} to {str(last)})"])
    members, _ = load_state(store, manifest)
    if k == done:
        return k, np.asarray(members)
    if "analysis_mean" not in history or not 0 <= k - 1 < len(history["analysis_mean"]):
        kept = len(history.get("analysis_mean", ()))
        raise ConfigError(where, [f"start: the store keeps no analysis for {spec.start} (it holds the analyses "
                                  f"of its own cycles, {kept} of them, and the ensemble of {str(last)}; a store "
                                  "started --from-hindcast has no history before its start): omit start or pick "
                                  "a day the store cycled"])
    from twin.forecast import members_around
    from twin.operational import store_layout
    noise = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), members.shape))
    return k, members_around(history["analysis_mean"][k - 1], history["analysis_sd"][k - 1],
                             store_layout(load_store_config(store)), noise)


def _conditioned_stepper(emulator):
    """The emulator taking a ProcessParams as ``model_params``: the values of its parameter inputs from it
    (``twin.forecast.emulator_stepper`` with the emulator's own weights)."""
    import jax.numpy as jnp

    from twin.forecast import EmulatorModelParams, emulator_stepper, parameter_input_names
    stepper = emulator_stepper(emulator)
    names = parameter_input_names(emulator)

    def conditioned(x, forcing_t, params, parameter_log_factors=None):
        values = jnp.asarray([getattr(params, n) for n in names], jnp.float32).reshape(len(names))
        return stepper(x, forcing_t, EmulatorModelParams(emulator.weights, values),
                       parameter_log_factors=parameter_log_factors)
    conditioned.parameter_names = stepper.parameter_names  # the filter's estimated factors act on them too
    return conditioned


def _process_forecast(config, layout, sites):
    """The process model's forecast (parameters as its model_params), with the hindcast's model error."""
    from emulators.parameters import default_params
    from twin.forecast import chlorophyll_scales, make_forecast, offshore_seasonal, process_stepper, state_ar1
    from twin.hindcast import process_log_error_sd
    stepper = process_stepper(default_params(), sites, config.model.substeps, offshore_seasonal(config.sites, layout))
    # The emulator's estimated parameter factors, if the store has any, ride along without acting: the
    # process model runs with its own parameters (those a scenario sets).
    return make_forecast(stepper, layout, sites, process_log_error_sd(config, layout),
                         chlorophyll_scale=chlorophyll_scales(config.sites, layout), parameters_act=False,
                         **state_ar1(config, layout))


def _model(store, manifest, config, layout, sites, spec: ScenarioFile, where: str):
    """(forecast, emulator or None, model_params of the baseline, takes_params, description)."""
    from emulators.parameters import default_params
    from twin.forecast import chlorophyll_scales, emulator_log_error_sd, make_forecast, state_ar1
    from twin.operational import store_model
    wanted = sorted({c.name for s in spec.scenarios for c in s.changes if c.kind == "param"})
    if spec.model == "process" or config.model.kind == "process":
        why = "scenario file" if spec.model == "process" else "store"
        return (_process_forecast(config, layout, sites), None, default_params(), True,
                f"process model (model: process, from the {why})")
    forecast, emulator, _ = store_model(store, manifest, config, layout, sites)
    label = f"emulator {manifest['files']['emulator']} of the store"
    if not wanted:
        return forecast, emulator, emulator.weights, False, label
    inputs = set(emulator.config.forcing_names)
    missing = [n for n in wanted if f"param/{n}" not in inputs]
    if missing:
        raise ConfigError(where, [f"param.{n}: the store's emulator is not conditioned on this parameter (its "
                                  f"inputs: {', '.join(emulator.config.forcing_names)}), so it cannot take the "
                                  f"change; set 'model: process' in the scenario file to run the baseline and "
                                  f"every scenario with the process model" for n in missing])
    sd = emulator_log_error_sd(emulator, config.model)
    forecast = make_forecast(_conditioned_stepper(emulator), layout, sites, sd,
                             chlorophyll_scale=chlorophyll_scales(config.sites, layout),
                             **state_ar1(config, layout))
    # The baseline takes the values a refit calibrated to the site's analyses, if any, the defaults otherwise.
    calibrated = default_params()._replace(**{k: np.float32(v) for k, v in emulator.parameter_values.items()})
    return forecast, emulator, calibrated, True, label + " (conditioned on parameters)"


def _outside_training(emulator, forcing, params=None) -> np.ndarray:
    """(days, F): feature f lies outside the emulator's training range on that day at some site."""
    from emulators.training import forcing_inputs
    features = np.asarray(forcing_inputs(emulator.config.forcing_names, forcing, params))  # (T, S, F)
    lo, hi = np.asarray(emulator.ranges.forcing_min), np.asarray(emulator.ranges.forcing_max)
    return ((features < lo) | (features > hi)).any(axis=1)


def run_scenarios(store_dir: str | Path, spec: ScenarioFile, *, source: str = "<scenario>",
                  quiet: bool = True) -> ScenarioRun:
    """Baseline and every scenario of ``spec`` from one analysis of the store, same members, same key.

    Reads the store (under its lock, so a running cycle is not read half-written), never changes it.
    """
    from emulators.forcing import Forcing
    from twin.engine import free_forecast
    from twin.operational import load_ledger, load_store_config, store_forcing, store_layout, store_sites
    from twin.store import require_store
    store = require_store(store_dir)
    key = jax.random.PRNGKey(spec.seed)
    with store.lock(timeout_s=120):
        manifest = store.manifest()
        config = load_store_config(store)
        layout = store_layout(config)
        day0 = np.datetime64(manifest["day0"], "D")
        history = store.load_arrays(manifest["files"]["history"])
        k, members = _start_members(store, manifest, history, spec, day0, key, source)
        ledger = load_ledger(store, manifest)
        sites = store_sites(config, layout)
        forcing_all = store_forcing(config, ledger, layout, day0.astype("datetime64[ns]"), k + spec.days)
        forecast, emulator, base_params, takes_params, label = _model(store, manifest, config, layout, sites,
                                                                      spec, source)
    start = day0 + np.timedelta64(k, "D")
    times = (start + np.arange(1, spec.days + 1) * np.timedelta64(1, "D")).astype("datetime64[ns]")
    base_forcing = Forcing(**{f: np.asarray(v)[k:k + spec.days] for f, v in forcing_all._asdict().items()})
    noise_key = jax.random.fold_in(key, 1)  # one key for every run: the same model-error draws

    def run(forcing, params, model=forecast):
        return np.asarray(free_forecast(model, jax.numpy.asarray(members), forcing, noise_key, spec.days,
                                        params))

    _log(f"{len(spec.scenarios)} scenario(s) and the baseline, {spec.days} days from {str(start)}, "
         f"{members.shape[0]} members, model: {label}", quiet)
    baseline = run(base_forcing, base_params)
    forcings, ensembles, warnings, outside = {"baseline": base_forcing}, {}, {}, {}
    params_of = {"baseline": None}
    for scenario in spec.scenarios:
        where = f"{source}: scenario {scenario.name!r}"
        forcing, notes = apply_forcing_changes(base_forcing, scenario.changes, layout.layers, start, spec.days,
                                               where)
        params = base_params
        if any(c.kind == "param" for c in scenario.changes):
            from emulators.parameters import ProcessParams, default_params
            params, more = changed_params(base_params if isinstance(base_params, ProcessParams)
                                          else default_params(), scenario.changes)
            notes += more
        forcings[scenario.name], warnings[scenario.name] = forcing, notes
        params_of[scenario.name] = params if takes_params else None
        ensembles[scenario.name] = run(forcing, params)
    names: tuple[str, ...] = ()
    process = None
    if emulator is not None:
        names = tuple(emulator.config.forcing_names)
        for run_name, forcing in forcings.items():
            outside[run_name] = _outside_training(emulator, forcing, params_of[run_name])
        if spec.process_check:
            from emulators.parameters import default_params
            _log("the same runs with the process model (process_check)", quiet)
            model = _process_forecast(config, layout, sites)
            process = {name: run(forcing, params_of[name] if params_of[name] is not None else default_params(),
                                 model) for name, forcing in forcings.items()}
    return ScenarioRun(spec=spec, start=start, times=times, layout=layout, baseline=baseline,
                       scenarios=ensembles, forcing=forcings, outside=outside, feature_names=names,
                       warnings=warnings, model=label, alerts=tuple(config.alerts), store=str(store.root),
                       members=int(members.shape[0]), process=process, start_members=np.asarray(members))


# --- summaries ---------------------------------------------------------------------------------------


def _stats(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and the 5 and 95 % quantiles over ``axis`` (members)."""
    q = np.percentile(x, QUANTILES, axis=axis)
    return x.mean(axis), q[0], q[1]


def _interval(x: np.ndarray) -> dict[str, float]:
    mean, lo, hi = _stats(x, 0)
    return {"mean": float(mean), "q05": float(lo), "q95": float(hi)}


def _alert_summary(alerts, ens: np.ndarray, layout) -> list[dict]:
    from twin.alerts import alert_error_sd, alert_forecasts, exceedance_probability, window_probability
    by_variable = alert_forecasts(alerts, ens, layout)
    out = []
    for a in alerts:
        x = by_variable[(a.variable, a.site, a.layer)]  # (days, N)
        sd = alert_error_sd(a)
        horizon = min(a.horizon_days, x.shape[0])
        p = float(window_probability(x, a.threshold, a.direction, sd, horizon))
        out.append({"name": a.name, "horizon_days": horizon, "probability": p,
                    "raised": bool(p >= a.probability), "level": float(a.probability),
                    "probability_whole_horizon": float(window_probability(x, a.threshold, a.direction, sd)),
                    "daily_probability": [float(v) for v in exceedance_probability(x, a.threshold, a.direction,
                                                                                   sd)]})
    return out


def _limits(run: ScenarioRun, name: str) -> dict[str, dict]:
    if name not in run.outside:
        return {}
    flags = run.outside[name]
    out = {}
    for f, feature in enumerate(run.feature_names):
        days = np.flatnonzero(flags[:, f])
        if days.size:
            day = run.start + days.astype("timedelta64[D]")
            out[feature] = {"fraction_of_days": float(days.size / flags.shape[0]), "days": int(days.size),
                            "first": str(day[0]), "last": str(day[-1])}
    return out


def summarise(run: ScenarioRun) -> dict[str, Any]:
    """The JSON summary: per scenario and state element the time-mean and end-of-horizon difference with
    their 90 % intervals (over members), alerts under both, limits of use, warnings."""
    layout = run.layout
    names = layout.names()
    units = [layout.units(v) for v, _, _ in layout.variables()]
    baseline_limits = _limits(run, "baseline")
    out = {"store": run.store, "start": str(run.start), "days": run.spec.days, "seed": run.spec.seed,
           "members": run.members, "model": run.model, "interval": "5-95 % over members (90 %)",
           "baseline": {"alerts": _alert_summary(run.alerts, run.baseline, layout),
                        "outside_training_range": baseline_limits},
           "scenarios": {}}
    # What the filter estimated besides the state, as the members carry it into every run: each member steps
    # with its own model biases and parameter factors (a parameter change acts on top of the factor).
    estimated = set(layout.estimated_variables())
    carried = [i for i, (v, _, _) in enumerate(layout.variables()) if v in estimated]
    if carried:
        out["estimated_at_start"] = {names[i]: _interval(run.start_members[:, i]) for i in carried}
    for scenario in run.spec.scenarios:
        ens = run.scenarios[scenario.name]
        diff = ens - run.baseline                                      # (days, N, n)
        time_mean, end = diff.mean(0), diff[-1]                        # (N, n)
        differences = {names[i]: {"units": units[i], "time_mean": _interval(time_mean[:, i]),
                                  "end": _interval(end[:, i])} for i in range(layout.dim)}
        limits = _limits(run, scenario.name)
        if run.process is not None:
            process_mean = (run.process[scenario.name] - run.process["baseline"]).mean(axis=(0, 1))
            differences = {name: {**d, "process_model_time_mean": float(process_mean[i])}
                           for i, (name, d) in enumerate(differences.items())}
        out["scenarios"][scenario.name] = {
            "description": scenario.description,
            "changes": [c.model_dump(mode="json") for c in scenario.changes],
            "warnings": run.warnings[scenario.name],
            "differences": differences,
            "alerts": _alert_summary(run.alerts, ens, layout),
            "outside_training_range": limits,
            "newly_outside_training_range": sorted(set(limits) - set(baseline_limits)),
        }
    return out


# --- products ----------------------------------------------------------------------------------------


def scenario_dataset(run: ScenarioRun) -> xr.Dataset:
    """CF NetCDF of the run: per state variable the baseline, scenario and difference mean with 5 and 95 %
    quantiles over members, dims (scenario,) time, site, layer; alert probabilities; limits-of-use flags."""
    from twin.state_layout import STATE_UNITS, STATE_VARIABLES
    layout = run.layout
    sites, layers = list(layout.sites), list(layout.layers)
    names = [s.name for s in run.spec.scenarios]
    ens = np.stack([run.scenarios[n] for n in names])                 # (K, days, N, n)
    diff = ens - run.baseline[None]
    data: dict[str, Any] = {}
    for v in STATE_VARIABLES:
        idx = np.array([[layout.index(v, s, layer) for layer in layers] for s in sites])
        u = STATE_UNITS.get(v, "1")
        for label, x, dims in (("baseline", run.baseline[..., idx], ("time", "site", "layer")),
                               ("scenario", ens[..., idx], ("scenario", "time", "site", "layer")),
                               ("difference", diff[..., idx], ("scenario", "time", "site", "layer"))):
            axis = x.ndim - 3                                          # the member axis
            mean, lo, hi = _stats(x, axis)
            what = {"baseline": "baseline", "scenario": "scenario",
                    "difference": "scenario minus baseline (per member)"}[label]
            data[f"{v}_{label}_mean"] = (dims, mean, {"units": u, "long_name": f"{v}, {what}, ensemble mean"})
            data[f"{v}_{label}_q05"] = (dims, lo, {"units": u, "long_name": f"{v}, {what}, 5 % quantile"})
            data[f"{v}_{label}_q95"] = (dims, hi, {"units": u, "long_name": f"{v}, {what}, 95 % quantile"})
    coords: dict[str, Any] = {
        "time": ("time", run.times, {"standard_name": "time", "axis": "T"}),
        "lead_days": ("time", np.arange(1, run.spec.days + 1), {"units": "days", "long_name": "days after start"}),
        "site": ("site", np.array(sites, object)), "layer": ("layer", np.array(layers, object)),
        "scenario": ("scenario", np.array(names, object))}
    data["scenario_description"] = ("scenario", np.array([s.description for s in run.spec.scenarios], object))
    if run.alerts:
        from twin.alerts import alert_error_sd, alert_forecasts, exceedance_probability
        coords["alert"] = ("alert", np.array([a.name for a in run.alerts], object))

        def daily(e):
            by = alert_forecasts(run.alerts, e, layout)
            return np.stack([exceedance_probability(by[(a.variable, a.site, a.layer)], a.threshold, a.direction,
                                                    alert_error_sd(a)) for a in run.alerts])
        attrs = {"units": "1", "long_name": "probability that an observation is beyond the alert threshold"}
        data["alert_probability_baseline"] = (("alert", "time"), daily(run.baseline), attrs)
        data["alert_probability_scenario"] = (("scenario", "alert", "time"),
                                              np.stack([daily(run.scenarios[n]) for n in names]), attrs)
    if run.outside:
        coords["feature"] = ("feature", np.array(run.feature_names, object))
        attrs = {"units": "1", "flag_values": np.array([0, 1], np.int8),
                 "flag_meanings": "inside_training_range outside_training_range",
                 "long_name": "emulator forcing feature outside its training range (extrapolation)"}
        data["outside_training_baseline"] = (("time", "feature"), run.outside["baseline"].astype(np.int8), attrs)
        data["outside_training_scenario"] = (("scenario", "time", "feature"),
                                             np.stack([run.outside[n] for n in names]).astype(np.int8), attrs)
    changed = sorted({c.name for s in run.spec.scenarios for c in s.changes if c.kind == "forcing"})
    for field in changed:
        base = np.asarray(getattr(run.forcing["baseline"], field))
        dims = ("time", "site", "layer")[:base.ndim]
        data[f"forcing_{field}_baseline"] = (dims, base, {"long_name": f"forcing {field}, baseline"})
        data[f"forcing_{field}_scenario"] = (("scenario",) + dims, np.stack(
            [np.asarray(getattr(run.forcing[n], field)) for n in names]), {"long_name": f"forcing {field}, scenario"})
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({"Conventions": "CF-1.10", "title": "coastal twin what-if scenarios",
                     "source": f"twin scenario, store {run.store}", "start": str(run.start),
                     "model": run.model, "seed": run.spec.seed, "members": run.members,
                     "comment": "baseline and scenarios from the same members with the same random draws; "
                                "difference = scenario - baseline per member, then mean and 5/95 % quantiles"})
    return ds


def _figures(run: ScenarioRun, summary: dict) -> list[tuple[str, str]]:
    """(alt text, HTML) of every figure of the report."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twin.report import figure_html
    from twin.state_layout import STATE_UNITS, STATE_VARIABLES
    layout, times = run.layout, run.times
    names = [s.name for s in run.spec.scenarios]
    colors = {n: plt.cm.tab10(i + 1) for i, n in enumerate(names)}
    figures = []
    for site in layout.sites:
        for kind in ("values", "differences"):
            fig, axes = plt.subplots(len(STATE_VARIABLES), len(layout.layers), sharex=True, squeeze=False,
                                     figsize=(6.5 * len(layout.layers), 1.9 * len(STATE_VARIABLES)))
            for r, v in enumerate(STATE_VARIABLES):
                for c, layer in enumerate(layout.layers):
                    ax, i = axes[r, c], layout.index(v, site, layer)
                    if kind == "values":
                        mean, lo, hi = _stats(run.baseline[..., i], 1)
                        ax.fill_between(times, lo, hi, color="k", alpha=0.15, lw=0)
                        ax.plot(times, mean, color="k", lw=1, label="baseline")
                    else:
                        ax.axhline(0, color="k", lw=0.6)
                    for n in names:
                        x = run.scenarios[n][..., i] - (run.baseline[..., i] if kind == "differences" else 0)
                        mean, lo, hi = _stats(x, 1)
                        ax.fill_between(times, lo, hi, color=colors[n], alpha=0.2, lw=0)
                        ax.plot(times, mean, color=colors[n], lw=1, label=n)
                    ax.set_ylabel(f"{'Δ ' if kind == 'differences' else ''}{v}\n{STATE_UNITS.get(v, '')}",
                                  fontsize=7)
                    ax.tick_params(labelsize=7)
                    if r == 0:
                        ax.set_title(f"{site} / {layer}", fontsize=9)
            handles, labels = axes[0, 0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
            fig.tight_layout(rect=(0, 0, 1, 0.975))
            figures.append((f"{kind} at {site}", figure_html(fig, f"{kind} at {site}")))
    fields = sorted({c.name for s in run.spec.scenarios for c in s.changes if c.kind == "forcing"})
    if fields:
        rows = [(f, j) for f in fields for j in range(len(layout.layers) if f in _LAYER_FIELDS else 1)]
        fig, axes = plt.subplots(len(rows), 1, sharex=True, squeeze=False, figsize=(11, 2.0 * len(rows)))
        for ax, (f, j) in zip(axes[:, 0], rows):
            def series(forcing):
                a = np.asarray(getattr(forcing, f))[:, 0]             # first site
                return a[:, j] if a.ndim == 2 else a
            ax.plot(times, series(run.forcing["baseline"]), color="k", lw=1, label="baseline")
            for n in names:
                ax.plot(times, series(run.forcing[n]), color=colors[n], lw=1, label=n)
            ax.set_ylabel(f + (f"/{layout.layers[j]}" if f in _LAYER_FIELDS else ""), fontsize=7)
            ax.tick_params(labelsize=7)
        axes[0, 0].legend(fontsize=7, ncol=len(names) + 1)
        fig.tight_layout()
        figures.append(("forcing changes", figure_html(fig, "forcing changes")))
    if run.alerts:
        fig, axes = plt.subplots(len(run.alerts), 1, sharex=True, squeeze=False, figsize=(11, 2.4 * len(run.alerts)))
        for k, (ax, a) in enumerate(zip(axes[:, 0], run.alerts)):
            ax.plot(times, summary["baseline"]["alerts"][k]["daily_probability"], color="k", lw=1, label="baseline")
            for n in names:
                ax.plot(times, summary["scenarios"][n]["alerts"][k]["daily_probability"], color=colors[n], lw=1,
                        label=n)
            ax.axhline(a.probability, color="tab:red", lw=0.8, ls="--")
            ax.set(ylim=(-0.03, 1.03), ylabel="P(beyond)")
            ax.set_title(a.name, fontsize=9)
        axes[0, 0].legend(fontsize=7, ncol=len(names) + 1)
        fig.tight_layout()
        figures.append(("daily alert probabilities", figure_html(fig, "daily alert probabilities")))
    if run.outside:
        runs = ["baseline"] + names
        fig, axes = plt.subplots(len(runs), 1, sharex=True, squeeze=False, figsize=(11, 0.25 * len(run.feature_names)
                                                                                   * len(runs) + 1.0))
        for ax, n in zip(axes[:, 0], runs):
            ax.imshow(run.outside[n].T, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
            ax.set_yticks(range(len(run.feature_names)), run.feature_names, fontsize=6)
            ax.set_title(f"{n}: features outside the training range (red)", fontsize=8)
        axes[-1, 0].set_xlabel("day of the horizon")
        fig.tight_layout()
        figures.append(("limits of use", figure_html(fig, "limits of use")))
    return figures


def _fmt_interval(e: dict) -> str:
    return f"{e['mean']:+.4g} [{e['q05']:+.4g}, {e['q95']:+.4g}]"


def write_report(path: Path, run: ScenarioRun, summary: dict) -> Path:
    """report.html: the changes, a table of differences (scenarios side by side), alerts, limits of use and
    the figures (PNG embedded)."""
    from twin.report import html_table, write_html_page
    names = [s.name for s in run.spec.scenarios]
    parts = [f"<h1>What-if scenarios from {html.escape(run.store)}</h1>",
             f"<p>{run.spec.days} days from the analysis of {summary['start']}; {run.members} members; model: "
             f"{html.escape(run.model)}; seed {run.spec.seed}. Baseline and scenarios start from the same members "
             "with the same random draws; a difference is scenario minus baseline per member, given as the "
             "ensemble mean [5 %, 95 %].</p>", "<h2>Scenarios</h2>"]
    for s in run.spec.scenarios:
        rows = [[c.target, c.layer or "all", c.operation, c.value,
                 "whole horizon" if c.period is None else f"{c.period.start} .. {c.period.end}"] for c in s.changes]
        parts += [f"<h3>{html.escape(s.name)}</h3><p>{html.escape(s.description)}</p>",
                  html_table(rows, ["target", "layer", "operation", "value", "period"])]
        parts += [f"<p><b>warning:</b> {html.escape(w)}</p>" for w in run.warnings[s.name]]
    layout = run.layout
    if summary.get("estimated_at_start"):
        parts += ["<h2>Estimated with the state, at the start</h2>",
                  "<p>What the filter estimated besides the sea's state (model biases, sensor offsets, log factors "
                  "on the emulator's parameters), over the members every run starts from: each member keeps its "
                  "own in every run, and a parameter change acts on top of its factor.</p>",
                  html_table([[name, _fmt_interval(e)] for name, e in summary["estimated_at_start"].items()],
                             ["element", "mean [5 %, 95 %] over members"])]
    for label, key in (("time-mean difference", "time_mean"), ("difference at the end of the horizon", "end")):
        rows = [[name, summary["scenarios"][names[0]]["differences"][name]["units"]]
                + [_fmt_interval(summary["scenarios"][n]["differences"][name][key]) for n in names]
                for name in layout.names()]
        parts += [f"<h2>{label.capitalize()} (mean [5 %, 95 %])</h2>", html_table(rows, ["variable", "units"] + names)]
    if run.process is not None:
        rows = [[name, summary["scenarios"][names[0]]["differences"][name]["units"]]
                + [f"{d['time_mean']['mean']:+.4g} / {d['process_model_time_mean']:+.4g}"
                   for d in (summary["scenarios"][n]["differences"][name] for n in names)]
                for name in layout.names()]
        parts += ["<h2>Emulator against the process model (process_check)</h2>",
                  "<p>Time-mean difference, ensemble mean, emulator / process model, from the same members "
                  "with the same forcing and draws: where they disagree, the emulator's answer to this "
                  "what-if is not the process model's.</p>", html_table(rows, ["variable", "units"] + names)]
    if run.alerts:
        rows = []
        for k, a in enumerate(run.alerts):
            b = summary["baseline"]["alerts"][k]
            rows.append([a.name, f"P within {b['horizon_days']} d", b["probability"]]
                        + [summary["scenarios"][n]["alerts"][k]["probability"] for n in names])
            rows.append([a.name, "P within the horizon", b["probability_whole_horizon"]]
                        + [summary["scenarios"][n]["alerts"][k]["probability_whole_horizon"] for n in names])
        parts += ["<h2>Alerts</h2>", html_table(rows, ["alert", "window", "baseline"] + names)]
    parts.append("<h2>Limits of use of the emulator</h2>")
    if not run.outside:
        parts.append("<p>The process model ran: no training range applies.</p>")
    else:
        rows = []
        for n in ["baseline"] + names:
            limits = summary["baseline" if n == "baseline" else "scenarios"]
            limits = limits["outside_training_range"] if n == "baseline" else limits[n]["outside_training_range"]
            rows += [[n, f, e["fraction_of_days"], e["first"], e["last"]] for f, e in limits.items()]
        parts.append("<p>Days on which a forcing feature lies outside the range the emulator was trained on: "
                     "there its answer is an extrapolation.</p>")
        parts.append(html_table(rows, ["run", "feature", "fraction of days", "first", "last"]) if rows
                     else "<p>Every forcing feature stays inside the training range in every run.</p>")
    parts.append("<h2>Figures</h2>")
    parts += [f"<h3>{html.escape(alt)}</h3>{fig}" for alt, fig in _figures(run, summary)]
    return write_html_page(path, "twin scenario", parts)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def scenario(store_dir: str | Path, scenario_path: str | Path, out: str | Path | None = None, *,
             quiet: bool = True) -> dict[str, Any]:
    """``twin scenario``: run the file's scenarios from the store and publish scenario.nc, scenario.json,
    report.html and the resolved scenario file into ``out`` (default ``scenario-<file name>`` next to the
    store), atomically. Returns the summary (with ``out`` and ``seconds``)."""
    import yaml

    from twin.hindcast import publish
    from twin.observations import write_netcdf
    started = time.perf_counter()
    spec = load_scenario_file(scenario_path)
    out = Path(out) if out is not None else Path(store_dir).resolve().parent / f"scenario-{Path(scenario_path).stem}"
    run = run_scenarios(store_dir, spec, source=str(scenario_path), quiet=quiet)
    summary = summarise(run)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))
    work.chmod(0o755)
    try:
        ds = scenario_dataset(run)
        encoding = {k: {"dtype": str} for k in ("site", "layer", "scenario", "alert", "feature",
                                                "scenario_description") if k in ds.variables}
        write_netcdf(ds, work / "scenario.nc", encoding)
        (work / "scenario.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False),
                                            encoding="utf-8")
        write_report(work / "report.html", run, summary)
        summary["seconds"] = time.perf_counter() - started
        summary["out"] = str(out)
        (work / "scenario.json").write_text(json.dumps(summary, indent=1, default=_json_default), encoding="utf-8")
        publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary

"""Observing-system experiments: the hindcast rerun with data denied by rule, and with the refit interval varied.

An experiment file lists runs; each run is the config's hindcast with some observations denied (DESIGN
section 8, "data denial / minimum data") and optionally another refit interval (DESIGN section 1, question 5:
how often should the learned relationships be refit), or another seed for the ensemble's draws (how much of a
score is the draw) or, in a twin experiment, for the truth (whether settings hold on other truths). Every run
is an independent hindcast written to ``DIR/<run name>/``; the study collects, per run and variable, RMSE,
CRPS and spread/RMSE against the truth (twin experiment) or RMSE and CRPS against the config's withheld
observations (real stations: cross-validation), how much was assimilated, and the wall time, and writes
``osse.json``, ``osse.csv``, ``skill_vs_data.png``, ``refit_interval.png`` (when runs vary the refit interval)
and ``report.html``.

Rules and how each is applied:

- ``no_buoy``: the buoy is not there at all: the twin experiment is made without it
  (``experiment.buoy: false``), a real config loses its COAST-HF sources. The buoy's temperature and salinity
  then no longer feed the forcing either, as they would not in reality.
- ``thin_bottles``, ``no_layer``, ``no_variable``, ``no_site``, ``period_gap``, ``random_gaps``: a filter on
  the qualified observation table. A denied row is marked withheld: never assimilated. In a twin experiment
  the run is scored against the truth; on real stations the denied rows are also scored (``skill_denied``)
  but the headline skill is on the config's own withheld set, the same rows in every run, so runs compare.
  These rules deny state observations (nutrients, oxygen, chlorophyll); the forcing series (temperature,
  salinity) are kept.
- ``thin_bottles`` keeps, per site, the bottle sampling days at least ``every_days`` apart, less a slack of
  3 days (a quarter of the interval at most), so that weekly sampling with a missed or shifted week still
  gives one sample a fortnight. It thins the same samples in the twin
  experiment as on real data, rather than making the experiment again with another interval: the samples kept
  are then a subset of the full run's, with the same errors, and the buoy's gaps do not move.

Data kept is counted in super-observations assimilated (one per series and day, what the filter sees; an
hourly buoy's 24 values of a day count once), as a fraction of the run that assimilated most.

Parallel runs go to dask.distributed (DESIGN section 9: a LocalCluster of ``workers`` processes, or any
cluster by address); one worker runs in this process.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import html
import io
import json
import re
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from twin.config import Frozen, TwinConfig, parse_config, read_yaml, write_resolved_config

RULE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "all": (),
    "no_buoy": (),
    "thin_bottles": ("every_days",),
    "no_layer": ("layer",),
    "no_variable": ("variable",),
    "no_site": ("site",),
    "period_gap": ("start", "end"),
    "random_gaps": ("length_days", "fraction", "seed"),
}
OPTIONAL_PARAMETERS = {"seed"}
BUOY_FORMATS = ("coasthf",)
THIN_SLACK_DAYS = 3.0          # a kept sample may come this much early (at most a quarter of the interval)
HIGH_FREQUENCY_HOURS = 12.0    # a source file sampled more often than this (median) is a buoy, not bottles


def _hint(value: str, valid) -> str:
    close = difflib.get_close_matches(value, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class DenialRule(Frozen):
    """One rule: which observations a run does without. ``kind`` says which, and which keys it takes."""
    kind: str = Field(description=f"one of {', '.join(RULE_PARAMETERS)}")
    every_days: int | None = Field(default=None, ge=1, le=365, description="thin_bottles: one sample per")
    layer: Literal["surface", "bottom"] | None = Field(default=None, description="no_layer")
    variable: str | None = Field(default=None, description="no_variable: a canonical observed variable")
    site: str | None = Field(default=None, description="no_site: a site of the config")
    start: date | None = Field(default=None, description="period_gap: first day denied")
    end: date | None = Field(default=None, description="period_gap: last day denied")
    length_days: int | None = Field(default=None, ge=1, description="random_gaps: length of each gap")
    fraction: float | None = Field(default=None, gt=0, lt=1, description="random_gaps: share of days in gaps")
    seed: int = Field(default=0, ge=0, description="random_gaps: seed of the gap positions")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v):
        if v not in RULE_PARAMETERS:
            raise ValueError(f"unknown rule kind {v!r}{_hint(v, RULE_PARAMETERS)}; valid: {', '.join(RULE_PARAMETERS)}")
        return v

    @field_validator("variable")
    @classmethod
    def _observed_variable(cls, v):
        from twin.state_layout import OBSERVABLE
        if v is not None and v not in OBSERVABLE:
            raise ValueError(f"variable {v!r} is not assimilated by the twin{_hint(v, OBSERVABLE)}; "
                             f"valid: {', '.join(OBSERVABLE)}")
        return v

    @model_validator(mode="after")
    def _parameters_of_kind(self):
        wanted = RULE_PARAMETERS[self.kind]
        given = self.model_fields_set - {"kind"}
        foreign = sorted(given - set(wanted))
        if foreign:
            raise ValueError(f"rule {self.kind!r} takes " + (", ".join(wanted) if wanted else "no other key")
                             + f", not {', '.join(foreign)}")
        missing = [p for p in wanted if p not in OPTIONAL_PARAMETERS and getattr(self, p) is None]
        if missing:
            raise ValueError(f"rule {self.kind!r} needs {', '.join(missing)}")
        if self.kind == "period_gap" and self.end < self.start:
            raise ValueError(f"period_gap: end {self.end} is before start {self.start}")
        return self

    def label(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)}" for p in RULE_PARAMETERS[self.kind]
                         if p in self.model_fields_set)
        return f"{self.kind}({args})" if args else self.kind


RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunSpec(Frozen):
    """One run: its name (the output folder), the rules applied together, and optionally the refit interval
    (days, >= 7; ``null``: never; absent: the config's), the ensemble's seed and, in a twin experiment, the
    truth's seed (absent: the config's)."""
    name: str = Field(min_length=1, max_length=80)
    rules: tuple[DenialRule, ...] = ()
    refit_interval_days: int | None = Field(default=None, ge=7)
    seed: int | None = Field(default=None, ge=0, description=(
        "the config's top-level seed for this run: the initial members, the model errors and the EnKF's "
        "perturbations are drawn anew, the data (and a twin experiment's truth) stay; runs that differ only "
        "in it show how much of a score is the draw"))
    experiment_seed: int | None = Field(default=None, ge=0, description=(
        "a twin experiment's experiment.seed for this run: another truth (its parameters, weather, sampling "
        "and errors) under the same settings; runs that differ in it show whether settings chosen on one truth "
        "hold on others"))

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v):
        if not RUN_NAME.match(v):
            raise ValueError(f"run name {v!r} must be a folder name: letters, digits, '.', '_', '-'")
        return v

    @property
    def sets_refit(self) -> bool:
        return "refit_interval_days" in self.model_fields_set


class RefitStudy(Frozen):
    """Shortcut: one run per refit interval (``null`` = never), named ``refit-never``, ``refit-30d``, ..."""
    intervals: tuple[int | None, ...] = (None, 365, 90, 30, 7)
    rules: tuple[DenialRule, ...] = Field(default=(), description="denial applied to every run of the study")

    @field_validator("intervals")
    @classmethod
    def _intervals(cls, v):
        bad = [i for i in v if i is not None and i < 7]
        if bad:
            raise ValueError(f"refit intervals must be null (never) or >= 7 days, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"refit intervals repeat: {list(v)}")
        if not v:
            raise ValueError("refit_study needs at least one interval")
        return v

    def runs(self) -> tuple[RunSpec, ...]:
        return tuple(RunSpec(name=refit_run_name(i), rules=self.rules, refit_interval_days=i)
                     for i in self.intervals)


def refit_run_name(interval: int | None) -> str:
    return "refit-never" if interval is None else f"refit-{interval}d"


class ExperimentFile(Frozen):
    """An observing-system experiment: runs of the config's hindcast with data denied or refit varied."""
    description: str = ""
    runs: tuple[RunSpec, ...] = ()
    refit_study: RefitStudy | None = None
    alerts: bool = Field(default=False, description="keep the config's alerts (each costs compile time)")

    @model_validator(mode="after")
    def _runs_named_once(self):
        names = [r.name for r in self.all_runs()]
        if not names:
            raise ValueError("the experiment has no run: give 'runs' or 'refit_study'")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"run names repeat: {dup} (refit_study names its runs {', '.join(refit_run_name(i) for i in (None, 30))}, ...)")
        return self

    def all_runs(self) -> tuple[RunSpec, ...]:
        return self.runs + (self.refit_study.runs() if self.refit_study else ())


def load_experiment(path: str | Path) -> ExperimentFile:
    """Read and validate an experiment file; a ConfigError lists every problem with a did-you-mean hint."""
    return parse_config(read_yaml(path), str(path), ExperimentFile)


# --- rules ------------------------------------------------------------------------------------------------

def buoy_source(source) -> bool:
    """Whether a config source is a moored buoy (its declared or detected format)."""
    from twin.ingest import expand_paths
    from twin.readers import detect_format
    if source.format is not None:
        return source.format in BUOY_FORMATS
    paths = expand_paths(source.path)
    return any(detect_format(p) in BUOY_FORMATS for p in paths)


def run_config(config: TwinConfig, run: RunSpec, keep_alerts: bool = False) -> TwinConfig:
    """The config of one run: the refit interval, the seed, the buoy removed for ``no_buoy``, alerts dropped
    unless kept."""
    update: dict[str, Any] = {"name": f"{config.name}/{run.name}"}
    if not keep_alerts:
        update["alerts"] = ()
    if run.sets_refit:
        update["refit"] = config.refit.model_copy(update={"interval_days": run.refit_interval_days})
    if run.seed is not None:
        update["seed"] = run.seed
    if run.experiment_seed is not None:
        if config.experiment is None:
            raise ValueError(f"run {run.name!r}: experiment_seed needs a twin experiment (the config has no "
                             f"'experiment' section: its data are real)")
        update["experiment"] = config.experiment.model_copy(update={"seed": run.experiment_seed})
    if any(r.kind == "no_buoy" for r in run.rules):
        sources = tuple(s for s in config.sources if not buoy_source(s))
        has_buoy = len(sources) < len(config.sources) or (config.experiment is not None and config.experiment.buoy)
        if not has_buoy:
            raise ValueError(f"run {run.name!r}: rule no_buoy, but the config has no buoy (no source of format "
                             f"{', '.join(BUOY_FORMATS)} and no twin experiment buoy)")
        update["sources"] = sources
        if config.experiment is not None:
            update["experiment"] = update.get("experiment", config.experiment).model_copy(update={"buoy": False})
    return config.model_copy(update=update).without_absent_tapers()


def bottle_rows(table) -> np.ndarray:
    """(n,) bool: rows from source files sampled at most every ``HIGH_FREQUENCY_HOURS`` (median interval
    between their distinct sampling times): bottles, not buoys."""
    source = table["source"].values.astype(str)
    times = table["time"].values
    out = np.zeros(source.size, bool)
    for s in np.unique(source):
        sel = source == s
        t = np.unique(times[sel])
        step = np.median(np.diff(t)) / np.timedelta64(1, "h") if t.size > 1 else np.inf
        out[sel] = step >= HIGH_FREQUENCY_HOURS
    return out


def _thinned_days(days: np.ndarray, every_days: int) -> np.ndarray:
    """Sorted unique sampling days kept by greedy thinning: each at least ``every_days`` less the slack
    (``THIN_SLACK_DAYS``, at most a quarter of the interval) after the previous kept one."""
    gap = every_days - min(THIN_SLACK_DAYS, every_days / 4)
    kept, last = [], None
    for d in np.unique(days):
        if last is None or d - last >= gap:
            kept.append(d)
            last = d
    return np.asarray(kept, days.dtype)


def gap_days(num_days: int, length_days: int, fraction: float, seed: int) -> np.ndarray:
    """(num_days,) bool: gaps of ``length_days`` at seeded random starts until ``fraction`` of the days lie in
    one (gaps may overlap; the last may be cut by the period's end)."""
    rng = np.random.default_rng(seed)
    covered = np.zeros(num_days, bool)
    while covered.mean() < fraction:
        start = int(rng.integers(0, num_days))
        covered[start:start + length_days] = True
    return covered


def denial_mask(table, layout, rules, day0: np.datetime64, num_days: int) -> np.ndarray:
    """(n_rows,) bool: the rows the ``rules`` deny, among the usable observations of state variables.

    Args:
        table: the qualified observation table (``Prepared.table``).
        layout: the twin's StateLayout.
        rules: DenialRule sequence, applied together (a row is denied when any rule denies it).
        day0, num_days: the hindcast's period (for random gaps).
    """
    from twin import flags
    n = table.sizes["obs"]
    variable = table["variable"].values.astype(str)
    site = table["site"].values.astype(str)
    layer = table["layer"].values.astype(str)
    lookup = {k: layout.observation_index(*k) >= 0 for k in set(zip(variable, site, layer))}
    eligible = (np.isin(table["qc"].values, flags.USABLE_QC) & np.isfinite(table["value"].values)
                & np.array([lookup[k] for k in zip(variable, site, layer)], bool).reshape(n))
    day = ((table["time"].values.astype("datetime64[ns]") - np.datetime64(day0, "ns"))
           // np.timedelta64(1, "D")).astype(np.int64)
    denied = np.zeros(n, bool)
    for rule in rules:
        if rule.kind == "no_layer":
            if rule.layer not in layout.layers:
                raise ValueError(f"rule no_layer: the twin has no layer {rule.layer!r} (layers {list(layout.layers)})")
            denied |= layer == rule.layer
        elif rule.kind == "no_variable":
            denied |= variable == rule.variable
        elif rule.kind == "no_site":
            if rule.site not in layout.sites:
                raise ValueError(f"rule no_site: unknown site {rule.site!r}{_hint(rule.site, layout.sites)}; "
                                 f"sites: {', '.join(layout.sites)}")
            denied |= site == rule.site
        elif rule.kind == "period_gap":
            t = table["time"].values.astype("datetime64[D]")
            denied |= (t >= np.datetime64(rule.start, "D")) & (t <= np.datetime64(rule.end, "D"))
        elif rule.kind == "random_gaps":
            covered = gap_days(num_days, rule.length_days, rule.fraction, rule.seed)
            inside = (day >= 0) & (day < num_days)
            denied |= inside & covered[np.clip(day, 0, num_days - 1)]
        elif rule.kind == "thin_bottles":
            bottles = bottle_rows(table)
            for s in np.unique(site[bottles & eligible]):
                sel = bottles & eligible & (site == s)
                denied |= sel & ~np.isin(day, _thinned_days(day[sel], rule.every_days))
        # "all" denies nothing; "no_buoy" acts on the config (run_config).
    return denied & eligible


def apply_denial(prepared, denied: np.ndarray):
    """``prepared`` with the ``denied`` rows withheld: out of the per-cycle observations, into the scored set."""
    from twin.cycle_obs import build_cycle_observations
    from twin.ingest import sensor_of_rows
    withheld = prepared.withheld | denied
    cycle_obs = build_cycle_observations(
        prepared.table, prepared.layout, prepared.day0, prepared.num_days, withheld=withheld,
        representativeness_fraction=prepared.config.filter.representativeness_fraction,
        sensor=sensor_of_rows(prepared.table, prepared.config.sources))
    return dataclasses.replace(prepared, cycle_obs=cycle_obs, withheld=withheld)


# --- one run ----------------------------------------------------------------------------------------------

def _denied_hindcast(config: TwinConfig, rules, out: Path, quiet: bool):
    """``twin.hindcast.hindcast`` with the rules' rows withheld after ingest and QC, without the free-run
    baselines (they do not depend on the data, so they are the same in every run). Returns (metrics,
    prepared, outputs, dispositions, base_withheld, denied)."""
    from twin.hindcast import hindcast
    masks = {}

    def deny(prepared):
        masks["base"] = prepared.withheld
        masks["denied"] = denial_mask(prepared.table, prepared.layout, rules, prepared.day0, prepared.num_days)
        return apply_denial(prepared, masks["denied"])

    run = hindcast(config, out, quiet=quiet, adjust=deny, baselines=False)
    return run.metrics, run.prepared, run.outputs, run.dispositions, masks["base"], masks["denied"]


def run_one(config: TwinConfig, run: RunSpec, out: str | Path, keep_alerts: bool = False,
            quiet: bool = True) -> dict:
    """Run one experiment run into ``out``; return its summary (see ``osse.json``)."""
    from twin import dispositions as disp
    from twin.products import validation_scores
    started = time.perf_counter()
    out = Path(out)
    cfg = run_config(config, run, keep_alerts)
    metrics, prepared, outputs, dispositions, base_withheld, denied = _denied_hindcast(cfg, run.rules, out, quiet)
    assimilated = dispositions == disp.ASSIMILATED
    superobs = np.unique(prepared.cycle_obs.row_group[assimilated]).size
    summary: dict[str, Any] = {
        "name": run.name,
        "rules": [r.label() for r in run.rules] or ["all"],
        "refit_interval_days": cfg.refit.interval_days,
        "seed": cfg.seed,
        "experiment_seed": cfg.experiment.seed if cfg.experiment is not None else None,
        "observations": {"rows_assimilated": int(assimilated.sum()), "superobs_assimilated": int(superobs),
                         "rows_denied": int(denied.sum()),
                         "rows_denied_assimilable": int((denied & ~base_withheld).sum()),
                         "dispositions": metrics["dispositions"]},
        "out": str(out),
    }
    if prepared.truth is not None:
        summary["skill_basis"] = "truth"
        summary["skill"] = {name: {"rmse": e["twin"]["rmse"], "crps": e["twin"]["crps"],
                                   "spread_skill": e["twin"]["spread_skill"]}
                            for name, e in metrics["truth"].items()}
        summary["unobserved"] = metrics["unobserved"]
    else:
        summary["skill_basis"] = "withheld"
        common = validation_scores(dataclasses.replace(prepared, withheld=base_withheld), outputs)
        summary["skill"] = {k: {"rmse": e["twin"]["rmse"], "crps": e["twin"]["crps"], "n": e["n"]}
                            for k, e in common.items()}
        only_denied = validation_scores(dataclasses.replace(prepared, withheld=denied & ~base_withheld), outputs)
        if only_denied:
            summary["skill_denied"] = {k: {"rmse": e["twin"]["rmse"], "crps": e["twin"]["crps"], "n": e["n"]}
                                       for k, e in only_denied.items()}
    refit = metrics.get("refit")
    cycles = sum(t["seconds"] for t in metrics["timings"]["cycles"])
    refit_seconds = sum(r["seconds"] for r in refit["history"]) if refit else 0.0
    summary["seconds"] = {"total": time.perf_counter() - started, "hindcast": metrics["timings"]["total_seconds"],
                          "cycles": cycles, "refit": refit_seconds}
    if refit:
        summary["refits"] = {"attempted": len(refit["history"]), "kept": refit["kept"]}
        lead = next((k for k in refit if k.startswith("forecast_")), None)
        if lead:
            summary["refits"][lead] = refit[lead]
    text = json.dumps(summary, indent=2, default=float)
    (out / "osse_run.json").write_text(text)
    return summary


# --- the study --------------------------------------------------------------------------------------------

def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[osse] {message}", file=sys.stderr, flush=True)


def _progress_line(s: dict) -> str:
    o = s["observations"]
    return (f"{s['name']}: {s['seconds']['total']:.1f} s, {o['superobs_assimilated']} super-observations "
            f"({o['rows_assimilated']} rows) assimilated, {o['rows_denied']} rows denied"
            + (f", {s['refits']['attempted']} refits ({s['seconds']['refit']:.1f} s)" if "refits" in s else ""))


def check_runs(config: TwinConfig, experiment: ExperimentFile) -> None:
    """Fail before any run on what the config cannot do: no buoy to remove, an unknown site or layer."""
    from twin.errors import ConfigError
    sites = [s.name for s in config.sites] or ([config.experiment.site] if config.experiment else [])
    problems = []
    for run in experiment.all_runs():
        try:
            run_config(config, run, experiment.alerts)
        except ValueError as exc:
            problems.append(str(exc))
        if run.refit_interval_days is not None and config.model.kind != "emulator":
            problems.append(f"run {run.name!r}: a refit interval needs model.kind 'emulator' (the config runs "
                            f"the {config.model.kind} model, which has nothing to refit)")
        for rule in run.rules:
            if rule.kind == "no_site" and rule.site not in sites:
                problems.append(f"run {run.name!r}: rule no_site: unknown site {rule.site!r}"
                                f"{_hint(rule.site, sites)}; sites: {', '.join(sites)}")
    if problems:
        raise ConfigError(f"experiment on {config.name}", problems)


def run_study(config: TwinConfig, experiment: ExperimentFile, out: str | Path, *, workers: int = 1,
              scheduler: str | None = None, quiet: bool = False, progress=None) -> dict:
    """Run every run of ``experiment`` on ``config`` into ``out/<run>/`` and write the study's products.

    Args:
        workers: parallel runs; 1 runs them one after the other in this process, more start a dask
            LocalCluster of that many single-threaded worker processes (each with its own JAX).
        scheduler: address of a running dask scheduler (overrides ``workers``).
        progress: called with one line per finished run (default: printed to stderr unless quiet).
    Returns:
        the study (what ``osse.json`` holds).
    """
    check_runs(config, experiment)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = experiment.all_runs()
    write_resolved_config(config, out)
    (out / "experiment.yaml").write_text(_dump_experiment(experiment))
    say = progress or (lambda line: _log(line, quiet))
    started = time.perf_counter()
    say(f"{len(runs)} run(s) -> {out} ({'dask ' + scheduler if scheduler else f'{workers} worker(s)'})")
    results: dict[str, dict] = {}
    if workers <= 1 and scheduler is None:
        for run in runs:
            results[run.name] = run_one(config, run, out / run.name, experiment.alerts, quiet=True)
            say(_progress_line(results[run.name]))
    else:
        from dask.distributed import Client, LocalCluster, as_completed
        cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                      dashboard_address=None)
        try:
            with Client(scheduler or cluster) as client:
                futures = {client.submit(run_one, config, run, str(out / run.name), experiment.alerts, True,
                                         key=f"osse-{run.name}-{time.time_ns()}", pure=False): run.name
                           for run in runs}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    say(_progress_line(results[futures[future]]))
        finally:
            if cluster is not None:
                cluster.close()
    study = collect(config, experiment, [results[r.name] for r in runs], time.perf_counter() - started)
    write_study(out, study)
    return study


def collect(config: TwinConfig, experiment: ExperimentFile, summaries: list[dict], seconds: float) -> dict:
    """The study from the run summaries: data kept relative to the run that assimilated most."""
    most = max((s["observations"]["superobs_assimilated"] for s in summaries), default=0)
    for s in summaries:
        s["data_kept"] = s["observations"]["superobs_assimilated"] / most if most else float("nan")
    refit_names = {r.name for r in experiment.refit_study.runs()} if experiment.refit_study else set()
    return {"config": config.name, "description": experiment.description,
            "skill_basis": summaries[0]["skill_basis"] if summaries else None,
            "seconds": seconds, "runs": summaries,
            "refit_study": [s["name"] for s in summaries if s["name"] in refit_names]}


def _dump_experiment(experiment: ExperimentFile) -> str:
    import yaml
    return yaml.safe_dump(experiment.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def study_rows(study: dict) -> list[dict]:
    """One row per run and variable (``osse.csv``)."""
    rows = []
    for s in study["runs"]:
        for var, e in s["skill"].items():
            rows.append({"run": s["name"], "variable": var, "rmse": e["rmse"], "crps": e["crps"],
                         "spread_skill": e.get("spread_skill", ""),
                         "n": e.get("n", ""), "data_kept": s["data_kept"], "seed": s["seed"],
                         "experiment_seed": "" if s["experiment_seed"] is None else s["experiment_seed"],
                         "superobs_assimilated": s["observations"]["superobs_assimilated"],
                         "rows_assimilated": s["observations"]["rows_assimilated"],
                         "rows_denied": s["observations"]["rows_denied"],
                         "refit_interval_days": "" if s["refit_interval_days"] is None else s["refit_interval_days"],
                         "total_seconds": s["seconds"]["total"], "refit_seconds": s["seconds"]["refit"],
                         "rules": "+".join(s["rules"])})
    return rows


def write_study(out: Path, study: dict) -> dict[str, Path]:
    """osse.json, osse.csv, skill_vs_data.png, refit_interval.png (with a refit study) and report.html."""
    from twin.observations import atomic_write
    paths = {"json": out / "osse.json", "csv": out / "osse.csv"}
    text = json.dumps(study, indent=2, default=float)
    atomic_write(paths["json"], lambda tmp: tmp.write_text(text))
    rows = study_rows(study)

    def write_csv(tmp: Path):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["run"])
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(paths["csv"], write_csv)
    figures = {"skill_vs_data.png": skill_vs_data_figure(study)}
    refit_fig = refit_figure(study)
    if refit_fig is not None:
        figures["refit_interval.png"] = refit_fig
    for name, fig in figures.items():
        png = _png(fig)
        paths[name] = atomic_write(out / name, lambda tmp, png=png: tmp.write_bytes(png))
    paths["report"] = write_study_report(out / "report.html", study, {k: (out / k).read_bytes() for k in figures})
    return paths


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _variables(study: dict) -> list[str]:
    names: list[str] = []
    for s in study["runs"]:
        names += [v for v in s["skill"] if v not in names]
    return names


def _grid(n: int, width: float = 3.2, height: float = 2.6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def skill_vs_data_figure(study: dict):
    """Per variable, RMSE against the fraction of data kept (the 'minimum data' curve): each run a labelled
    point, the run that kept most as a dashed reference line. Runs of the refit study are left out."""
    runs = [s for s in study["runs"] if s["name"] not in study.get("refit_study", [])] or study["runs"]
    runs = sorted(runs, key=lambda s: -s["data_kept"])
    variables = _variables(study)
    fig, axes = _grid(max(len(variables), 1))
    for ax, var in zip(axes, variables):
        x = [s["data_kept"] for s in runs if var in s["skill"]]
        y = [s["skill"][var]["rmse"] for s in runs if var in s["skill"]]
        ax.plot(x, y, "o", color="tab:blue", ms=4)
        if runs and var in runs[0]["skill"]:  # the run that kept most: the reference the others lose against
            ax.axhline(runs[0]["skill"][var]["rmse"], color="grey", lw=0.6, ls="--")
        for s, xi, yi in zip([s for s in runs if var in s["skill"]], x, y):
            ax.annotate(s["name"], (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(var, fontsize=8)
        ax.set_xlim(-0.05, 1.1)
        ax.tick_params(labelsize=7)
    for ax in axes[:len(variables)]:
        ax.set_xlabel("fraction of data kept", fontsize=7)
    basis = "the truth" if study.get("skill_basis") == "truth" else "withheld observations"
    fig.suptitle(f"{study['config']}: RMSE against {basis} vs data kept (super-observations assimilated)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def refit_figure(study: dict):
    """Skill (RMSE relative to never refitting, per variable and their median) and time per refit interval."""
    runs = [s for s in study["runs"] if s["name"] in study.get("refit_study", [])]
    if len(runs) < 1:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = ["never" if s["refit_interval_days"] is None else f"{s['refit_interval_days']} d" for s in runs]
    x = np.arange(len(runs))
    ref = next((s for s in runs if s["refit_interval_days"] is None), runs[0])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ratios = []
    for var in _variables(study):
        if var not in ref["skill"] or not ref["skill"][var]["rmse"] > 0:
            continue
        r = [s["skill"].get(var, {}).get("rmse", np.nan) / ref["skill"][var]["rmse"] for s in runs]
        ratios.append(r)
        a1.plot(x, r, color="grey", lw=0.6, alpha=0.6)
    if ratios:
        a1.plot(x, np.nanmedian(np.array(ratios), axis=0), "-o", color="tab:red", lw=2, label="median over variables")
    a1.axhline(1.0, color="k", lw=0.5)
    a1.set_xticks(x, labels)
    a1.set_xlabel("refit interval")
    a1.set_ylabel(f"RMSE / RMSE never refit ({'truth' if study.get('skill_basis') == 'truth' else 'withheld obs.'})")
    a1.legend(fontsize=8)
    total = [s["seconds"]["total"] for s in runs]
    refit = [s["seconds"]["refit"] for s in runs]
    a2.bar(x - 0.2, total, 0.4, label="run total")
    a2.bar(x + 0.2, refit, 0.4, label="refits")
    a2.set_xticks(x, labels)
    a2.set_xlabel("refit interval")
    a2.set_ylabel("seconds")
    a2.legend(fontsize=8)
    fig.suptitle(f"{study['config']}: skill and compute time vs refit interval")
    fig.tight_layout()
    return fig


def summary_rows(study: dict) -> list[list]:
    """One row per run: name, rules, refit interval, seed, truth's seed, data kept, super-observations and rows
    assimilated, rows denied, total and refit seconds."""
    return [[s["name"], " + ".join(s["rules"]),
             "never" if s["refit_interval_days"] is None else s["refit_interval_days"], s["seed"],
             "" if s["experiment_seed"] is None else s["experiment_seed"],
             s["data_kept"],
             s["observations"]["superobs_assimilated"], s["observations"]["rows_assimilated"],
             s["observations"]["rows_denied"], s["seconds"]["total"], s["seconds"]["refit"]]
            for s in study["runs"]]


SUMMARY_HEADER = ["run", "rules", "refit interval (d)", "seed", "truth's seed", "data kept", "super-obs assimilated",
                  "rows assimilated", "rows denied", "seconds", "refit seconds"]


METRIC_TITLES = {"rmse": "RMSE", "crps": "CRPS", "spread_skill": "Spread/RMSE"}  # 0.7-1.3: calibrated


def _scored(study: dict, metric: str) -> bool:
    """Whether the study's runs carry ``metric`` (spread/RMSE is scored against a twin experiment's truth only)."""
    return any(metric in e for s in study["runs"] for e in s["skill"].values())


def write_study_report(path: Path, study: dict, figures: dict[str, bytes]) -> Path:
    from twin.report import html_table, png_html, write_html_page
    variables = _variables(study)
    basis = "the truth (twin experiment)" if study.get("skill_basis") == "truth" else \
        "the config's withheld observations (the same rows in every run)"
    parts = [f"<h1>Observing-system experiment: {html.escape(study['config'])}</h1>",
             f"<p>{html.escape(study.get('description', ''))}</p>",
             f"<p>{len(study['runs'])} runs in {study['seconds']:.0f} s. Skill against {basis}. Data kept: "
             "super-observations assimilated relative to the run that assimilated most.</p>",
             "<h2>Runs</h2>", html_table(summary_rows(study), SUMMARY_HEADER)]
    for metric, title in METRIC_TITLES.items():
        if not _scored(study, metric):
            continue
        rows = [[v] + [s["skill"].get(v, {}).get(metric, float("nan")) for s in study["runs"]] for v in variables]
        parts += [f"<h2>{title} per variable</h2>",
                  html_table(rows, ["variable"] + [s["name"] for s in study["runs"]])]
    parts += [png_html(png, name) for name, png in figures.items()]
    return write_html_page(path, f"twin osse {study['config']}", parts, max_width_px=1500)


def format_study(study: dict) -> list[str]:
    """Printed summary: one line per run, then RMSE per variable (runs as columns), and against a twin
    experiment's truth the spread/RMSE too."""
    lines = [f"osse {study['config']}: {len(study['runs'])} runs in {study['seconds']:.0f} s; skill against "
             f"{'the truth' if study['skill_basis'] == 'truth' else 'withheld observations'}"]
    lines.append(f"{'run':<24} {'kept':>6} {'superobs':>9} {'rows':>7} {'denied':>7} {'seconds':>8} {'refit s':>8}"
                 f" {'refits':>6}  rules")
    for s in study["runs"]:
        o = s["observations"]
        lines.append(f"{s['name']:<24} {s['data_kept']:>6.2f} {o['superobs_assimilated']:>9} "
                     f"{o['rows_assimilated']:>7} {o['rows_denied']:>7} {s['seconds']['total']:>8.1f} "
                     f"{s['seconds']['refit']:>8.1f} {s.get('refits', {}).get('attempted', 0):>6}  "
                     + " + ".join(s["rules"]))
    names = [s["name"] for s in study["runs"]]
    width = max(10, *(len(n) + 1 for n in names))
    for metric, title in (("rmse", "RMSE"), ("spread_skill", "spread/RMSE")):
        if not _scored(study, metric):
            continue
        lines.append(f"{title:<35}" + "".join(f"{n:>{width}}" for n in names))
        for v in _variables(study):
            lines.append(f"{v:<35}" + "".join(f"{s['skill'].get(v, {}).get(metric, float('nan')):>{width}.4g}"
                                              for s in study["runs"]))
    return lines

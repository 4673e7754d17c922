"""Sampling advice from a twin store (``twin sampling``), and its verification in the twin experiment.

The math lives in :mod:`twin.sampling` (pure NumPy); this module connects it to a store:

- :func:`plan_for_store`: the store's ensemble at its last analysis is run ``horizon`` days ahead
  (``twin.engine.free_forecast`` with the store's model and causal forcing, the key of ``twin forecast``),
  flattened into the (N, H * n) trajectory matrix; the target is one variable at lead day ``horizon``; the
  candidates are every observable variable at every site and layer on lead days 1..horizon (or a file's); the
  greedy plan is made in log space (the filter's space for concentrations).
- :func:`verify_in_twin_experiment`: the same plan, made from the analysis ensemble of many days of the
  store's twin experiment, is scored against its truth (``experiment/truth.nc``): the plan's observations
  (simulated from the true trajectory with each candidate's error) and as many random candidates are
  assimilated into the forecast ensemble (``twin.sampling.verify_against_random``: serial EnSRF in log
  space, common random numbers), and the absolute error of the target's updated mean is compared.

The verification runs the twin's cycles in-process, not through the store's files: the store's config,
emulator, causal forcing and per-cycle keys, with the observations read from the config's sources and
qualified once (the hindcast's QC, not the operational rolling QC), from the config's initial ensemble at
day 0. The store itself is only read.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin.errors import InputError
from twin.sampling import (Candidate, SamplingPlan, VerificationSummary, candidates_from_specs, default_candidates,
                           greedy_plan, parse_candidates, parse_target, target_column, trajectory_matrix,
                           verify_against_random)
from twin.state_layout import STATE_UNITS, STATE_VARIABLES, StateLayout
from twin.store import StoreError, require_store

__all__ = [
    "StorePlan",
    "TwinVerification",
    "format_store_plan",
    "format_verification",
    "plan_for_store",
    "resolve_candidates",
    "resolve_target",
    "truth_trajectory",
    "verify_in_twin_experiment",
]

FORECAST_KEY = 10**7    # as twin.operational.store_forecast: seed 0 gives the store's own forecast


class StorePlan(NamedTuple):
    """A sampling plan made from a store's ensemble forecast.

    Attributes:
        plan: the greedy plan (variances in log space for a positive target).
        target: ``variable@site/layer``.
        horizon: lead day of the target, days after the analysis.
        analysis_time: the store's last analysis (ISO date and time).
        prior_mean, prior_sd: ensemble mean and sd of the target at the horizon before any sample,
            physical units.
        units: units of the target.
        num_members: ensemble size.
        num_candidates: candidates the plan chose from.
    """

    plan: SamplingPlan
    target: str
    horizon: int
    analysis_time: str
    prior_mean: float
    prior_sd: float
    units: str
    num_members: int
    num_candidates: int

    def as_json(self) -> dict:
        return {"target": self.target, "horizon_days": self.horizon, "analysis_time": self.analysis_time,
                "prior_mean": self.prior_mean, "prior_sd": self.prior_sd, "units": self.units,
                "members": self.num_members, "candidates": self.num_candidates, "log_space": self.plan.log,
                "initial_variance": self.plan.initial_variance,
                "picks": [{"candidate": s.candidate.label, "error_sd": s.candidate.error_sd,
                           "variance": s.variance, "reduction": s.reduction,
                           "sd": _physical_sd(self.plan, s.variance)} for s in self.plan.steps]}


def _physical_sd(plan: SamplingPlan, variance: float) -> float:
    """sd in physical units: the lognormal sd at the prior mean for a log-space plan (as format_plan)."""
    return plan.target_mean * math.sqrt(math.expm1(variance)) if plan.log else math.sqrt(variance)


# ------------------------------------------------------------------------------------------- resolving


def resolve_target(layout: StateLayout, target: str, horizon: int) -> int:
    """Trajectory column of ``target`` at lead day ``horizon``; InputError naming the valid choices."""
    if int(horizon) < 1:
        raise InputError("--horizon", f"the horizon must be a whole number of days >= 1; got {horizon}")
    try:
        return target_column(layout, target, int(horizon))
    except ValueError as exc:
        raise InputError("--target", str(exc)) from None


def resolve_candidates(layout: StateLayout, horizon: int, candidates_file: str | Path | None = None
                       ) -> list[Candidate]:
    """The candidates file's rows resolved against ``layout``, or every default candidate up to ``horizon``."""
    if candidates_file is None:
        return default_candidates(layout, int(horizon))
    return candidates_from_specs(parse_candidates(candidates_file), layout, int(horizon))


def _check_budget(budget: int, candidates) -> int:
    budget = int(budget)
    if budget < 1:
        raise InputError("--budget", f"the budget must be >= 1 sample; got {budget}")
    if budget > len(candidates):
        raise InputError("--budget", f"budget {budget} exceeds the {len(candidates)} candidates")
    return budget


def _forecast_matrix(forecast, members, forcing, start: int, horizon: int, key, model_params) -> np.ndarray:
    """(N, H * n) trajectory matrix of the ensemble run ``horizon`` days from cycle ``start``."""
    from twin.engine import free_forecast
    future = jax.tree.map(lambda a: jnp.asarray(a[start:start + horizon]), forcing)
    days = jax.tree.leaves(future)[0].shape[0]
    if days < horizon:
        raise StoreError(f"the forcing covers {days} of the {horizon} forecast days")
    ens = np.asarray(free_forecast(forecast, jnp.asarray(members), future, key, int(horizon), model_params))
    return trajectory_matrix(np.transpose(ens, (1, 0, 2)))


# ----------------------------------------------------------------------------------------------- plan


def plan_for_store(store_dir: str | Path, target: str, horizon: int, candidates_file: str | Path | None = None,
                   budget: int = 3, seed: int = 0) -> StorePlan:
    """Greedy plan of ``budget`` samples that most reduce the forecast variance of ``target``.

    Args:
        store_dir: an operational store (``twin init``, ``twin cycle``).
        target: ``VARIABLE@SITE/LAYER``, any state variable (e.g. ``oxygen@SYNTH-B/bottom``).
        horizon: lead day of the target, >= 1; candidates range over lead days 1..horizon.
        candidates_file: CSV or YAML of candidates (``twin.sampling.parse_candidates``), or None for every
            observable variable at every site and layer on every lead day with its default error.
        budget: number of samples in the plan, >= 1.
        seed: varies the forecast's model-error noise; 0 gives the ensemble of ``twin forecast``.

    Returns:
        :class:`StorePlan`.

    Raises:
        InputError: a bad target, horizon, budget or candidates file (naming the valid choices).
        StoreError: not a store, or no forcing yet.
    """
    from twin.operational import (load_ledger, load_state, load_store_config, store_forcing, store_layout,
                                  store_model, store_sites)
    store = require_store(store_dir)
    manifest = store.manifest()
    config = load_store_config(store)
    layout = store_layout(config)
    column = resolve_target(layout, target, horizon)
    candidates = resolve_candidates(layout, horizon, candidates_file)
    budget = _check_budget(budget, candidates)
    day0 = np.datetime64(manifest["day0"]).astype("datetime64[ns]")
    done = int(manifest["cycles_done"])
    forcing = store_forcing(config, load_ledger(store, manifest), layout, day0, done + int(horizon))
    forecast, emulator, _ = store_model(store, manifest, config, layout, store_sites(config, layout))
    members, _ = load_state(store, manifest)
    key = jax.random.fold_in(jax.random.PRNGKey(int(manifest["seed"])), FORECAST_KEY + done)
    if seed:
        key = jax.random.fold_in(key, int(seed))
    E = _forecast_matrix(forecast, members, forcing, done, int(horizon), key,
                         None if emulator is None else emulator.weights)
    plan = greedy_plan(E, column, candidates, budget, log=True)
    variable = parse_target(target)[0]
    return StorePlan(plan, target, int(horizon), str(day0 + np.timedelta64(done, "D"))[:19],
                     float(E[:, column].mean()), float(E[:, column].std(ddof=1)), STATE_UNITS.get(variable, ""),
                     E.shape[0], len(candidates))


def format_store_plan(result: StorePlan) -> str:
    """Header (store analysis, prior mean and sd) and :func:`twin.sampling.format_plan`'s table."""
    from twin.sampling import format_plan
    head = (f"sampling plan from the analysis of {result.analysis_time}: {len(result.plan.steps)} sample(s) "
            f"among {result.num_candidates} candidates, {result.num_members} members; target "
            f"{result.target} at day +{result.horizon}: prior mean {result.prior_mean:.4g} {result.units}, "
            f"sd {result.prior_sd:.4g}")
    return head + "\n" + format_plan(result.plan, f"{result.target} day+{result.horizon}", result.units)


# --------------------------------------------------------------------------------------- verification


class TwinVerification(NamedTuple):
    """Plan against random samples over trials of the twin experiment (:func:`verify_in_twin_experiment`).

    Attributes:
        summary: per-trial absolute errors of the target's mean (prior, after the plan, after random
            samples), physical units.
        trial_days: (T,) analysis dates of the trials (datetime64[D]).
        first_picks: the plan's first pick in each trial.
        target, horizon, budget: what was planned.
        random_draws: random choices (and noise draws) averaged per trial.
        seconds: wall time of the verification.
    """

    summary: VerificationSummary
    trial_days: np.ndarray
    first_picks: tuple[str, ...]
    target: str
    horizon: int
    budget: int
    random_draws: int
    seconds: float

    def as_json(self) -> dict:
        s = self.summary
        return {"target": self.target, "horizon_days": self.horizon, "budget": self.budget,
                "trials": s.num_trials, "random_draws": self.random_draws,
                "first_trial": str(self.trial_days[0]), "last_trial": str(self.trial_days[-1]),
                "prior_error_mean": float(np.mean(s.prior_errors)),
                "plan_error_mean": s.plan_mean, "plan_error_sd": s.plan_sd,
                "random_error_mean": s.random_mean, "random_error_sd": s.random_sd,
                "mean_gain": s.mean_gain, "gain_se": s.gain_se, "fraction_plan_better": s.fraction_plan_better,
                "seconds": self.seconds}


def truth_trajectory(truth_path: str | Path, layout: StateLayout, day0: np.datetime64) -> np.ndarray:
    """The experiment's daily truth in the twin's state order: (D, n), row ``k`` at ``day0 + k`` days.

    Raises:
        InputError: no such file, a state element the truth lacks, or a truth that starts after ``day0``.
    """
    import xarray as xr
    path = Path(truth_path)
    if not path.exists():
        raise InputError(path, "no truth: the verification needs a twin experiment's truth.nc (a store made "
                               "by 'twin init' with the embedded demo keeps it in experiment/truth.nc)")
    with xr.open_dataset(path, engine="netcdf4") as ds:
        if "truth" not in ds or ds["truth"].dims != ("time", "state"):
            raise InputError(path, "expected a variable 'truth' with dims (time, state)")
        names = [str(x) for x in ds["state"].values]
        states = ds["truth"].values.astype(np.float64)
        times = ds["time"].values.astype("datetime64[D]")
    # The model biases and sensor offsets (and readings) are the twin's own: the truth has none (NaN).
    own = {f"{v}@{s}/{l}" for v, s, l in layout.variables() if v not in STATE_VARIABLES}
    missing = [n for n in layout.names() if n not in names and n not in own]
    if missing:
        raise InputError(path, f"the truth lacks {missing[:3]} (it has {names[:3]}...): it is not this twin's "
                               f"experiment")
    offset = int((np.datetime64(day0, "D") - times[0]) / np.timedelta64(1, "D"))
    if offset < 0:
        raise InputError(path, f"the truth starts on {times[0]}, after the twin's day 0 {str(day0)[:10]}")
    from twin.hindcast import truth_on_layout
    return truth_on_layout(states[offset:], names, layout).astype(np.float64)


def _trial_cycles(num_trials: int, spin_up_days: int, last: int) -> np.ndarray:
    """``num_trials`` analysis cycles from ``spin_up_days`` on, evenly spaced by a whole number of days."""
    if num_trials < 2:
        raise InputError("--verify-trials", f"need at least 2 trials for a spread; got {num_trials}")
    if spin_up_days < 1:
        raise InputError("--spin-up-days", f"the spin-up must be >= 1 day; got {spin_up_days}")
    step = (last - spin_up_days) // (num_trials - 1)
    if step < 1:
        raise InputError("--verify-trials", f"{num_trials} trials do not fit between day {spin_up_days} and "
                                            f"day {last} of the experiment; ask for at most "
                                            f"{max(last - spin_up_days + 1, 0)}")
    return spin_up_days + step * np.arange(num_trials)


def verify_in_twin_experiment(store_dir: str | Path, target: str, horizon: int, *, budget: int = 3,
                              num_trials: int = 50, spin_up_days: int = 60,
                              candidates_file: str | Path | None = None, random_draws: int = 1, seed: int = 0,
                              truth_path: str | Path | None = None) -> TwinVerification:
    """Does following the plan reduce the target's actual error more than random samples? (twin experiment)

    The twin is cycled in-process over its experiment (module docstring). At ``num_trials`` analysis days,
    evenly spaced from ``spin_up_days`` to the last day that leaves ``horizon`` days of truth, the analysis
    ensemble is run ``horizon`` days ahead and planned on as :func:`plan_for_store`; then, with the true
    trajectory as truth, ``twin.sampling.verify_against_random`` assimilates the plan's ``budget``
    observations or as many random candidates (fresh noise and random picks per trial, ``random_draws``
    of them averaged) and records the absolute error of the target's updated mean.

    Args:
        store_dir: a store whose config has a twin experiment (``twin init`` with the embedded demo).
        target, horizon, budget, candidates_file: as :func:`plan_for_store`.
        num_trials: number of analysis days, >= 2.
        spin_up_days: first trial day (the filter's spin-up from the initial ensemble).
        random_draws: per trial, independent (noise, random choice) draws averaged, >= 1.
        seed: seeds the noise and the random choices (one generator per trial and draw).
        truth_path: the truth (default: the store's ``experiment/truth.nc``).

    Returns:
        :class:`TwinVerification`.
    """
    from emulators.process_model import initial_state
    from twin.cycle_obs import build_cycle_observations
    from twin.engine import EngineState, run_window
    from twin.forecast import initial_ensemble, state_ar1
    from twin.hindcast import filter_arrays, filter_params
    from twin.ingest import ingest, sensor_of_rows
    from twin.operational import (load_store_config, store_forcing, store_layout, store_model, store_sites)
    from twin.qc import apply_qc
    from assimilation import initial_inflation_state
    started = time.perf_counter()
    store = require_store(store_dir)
    manifest = store.manifest()
    config = load_store_config(store)
    layout = store_layout(config)
    column = resolve_target(layout, target, horizon)
    horizon = int(horizon)
    candidates = resolve_candidates(layout, horizon, candidates_file)
    budget = _check_budget(budget, candidates)
    if int(random_draws) < 1:
        raise InputError("--random-draws", f"need at least 1 random draw per trial; got {random_draws}")
    day0 = np.datetime64(manifest["day0"]).astype("datetime64[ns]")
    truth = truth_trajectory(truth_path or store.path("experiment") / "truth.nc", layout, day0)
    last = truth.shape[0] - 1 - horizon        # the last analysis with `horizon` days of truth after it
    cycles = _trial_cycles(int(num_trials), int(spin_up_days), last)

    table = apply_qc(ingest(config), config.qc)
    num_days = int(cycles[-1]) + horizon
    forcing = store_forcing(config, table, layout, day0, num_days)
    cobs = build_cycle_observations(table, layout, day0, num_days, sensor=sensor_of_rows(table, config.sources),
                                    representativeness_fraction=config.filter.representativeness_fraction)
    forecast, emulator, _ = store_model(store, manifest, config, layout, store_sites(config, layout))
    weights = None if emulator is None else emulator.weights
    key = jax.random.PRNGKey(int(manifest["seed"]))
    site_state = np.tile(np.asarray(initial_state(layout.num_layers))[None], (len(layout.sites), 1))
    members = initial_ensemble(jax.random.fold_in(key, 0), layout, config.filter.members, site_state,
                               config.filter.initial_spread, **state_ar1(config, layout))
    state = EngineState(members, initial_inflation_state())
    params = filter_params(config)
    log_mask = jnp.asarray(layout.log_mask())
    filter_args = filter_arrays(config, layout)
    cycle_key = jax.random.fold_in(key, 1)   # the store's cycles' key (twin.operational)
    rngs = np.random.default_rng(seed).spawn(len(cycles) * int(random_draws))
    done = 0
    results, picks = [], []
    for t, c in enumerate(int(x) for x in cycles):
        # Windows of equal length between trials: two compiled shapes (spin-up, step) for the whole run.
        obs_w = jax.tree.map(lambda a: jnp.asarray(a[done:c]), cobs.obs)
        forcing_w = jax.tree.map(lambda a: jnp.asarray(a[done:c]), forcing)
        state, _ = run_window(forecast, state, obs_w, forcing_w, cycle_key, params, log_mask, done, weights,
                              **filter_args)
        done = c
        E = _forecast_matrix(forecast, state.members, forcing, c, horizon,
                             jax.random.fold_in(key, FORECAST_KEY + c), weights)
        true_trajectory = truth[c + 1:c + 1 + horizon].reshape(-1)
        plan = greedy_plan(E, column, candidates, budget, log=True)
        picks.append(plan.steps[0].candidate.label)
        draws = [verify_against_random(true_trajectory, E, column, candidates, budget,
                                       rng=rngs[t * int(random_draws) + d], log=True, plan=plan)
                 for d in range(int(random_draws))]
        results.append(np.mean(np.array(draws), axis=0))
    prior, planned, random = np.array(results).T
    trial_days = (day0 + cycles * np.timedelta64(1, "D")).astype("datetime64[D]")
    return TwinVerification(VerificationSummary(prior, planned, random), trial_days, tuple(picks), target,
                            horizon, budget, int(random_draws), time.perf_counter() - started)


def format_verification(result: TwinVerification) -> str:
    """The verification's headline: mean and sd of the errors, the gain with its standard error, wins."""
    s = result.summary
    units = STATE_UNITS.get(parse_target(result.target)[0], "")
    counts: dict[str, int] = {}
    for p in result.first_picks:
        counts[p] = counts.get(p, 0) + 1
    common = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
    return "\n".join([
        f"twin-experiment verification: {s.num_trials} trials ({result.trial_days[0]} .. {result.trial_days[-1]}), "
        f"target {result.target} at day +{result.horizon}, {result.budget} samples, "
        f"{result.random_draws} random draw(s) per trial, {result.seconds:.1f} s",
        f"  |error| of the target mean ({units}): no samples {np.mean(s.prior_errors):.4g}; "
        f"plan {s.plan_mean:.4g} (sd {s.plan_sd:.4g}); random {s.random_mean:.4g} (sd {s.random_sd:.4g})",
        f"  gain of the plan over random: {s.mean_gain:.4g} +/- {s.gain_se:.2g} (standard error), "
        f"plan better in {100 * s.fraction_plan_better:.0f} % of trials",
        f"  most frequent first pick: {common}",
    ])

"""Periodic refit of the emulator to the twin's own analyses (Brajard et al. 2020), kept only when it helps.

Every ``refit.interval_days`` cycles the emulator is fitted to the analysis-mean trajectories so far, cut into
segments, each target state weighted by the analysis' confidence (the inverse of its relative variance, so
well-observed, tightly analysed states count more). Two fits, as ``refit.fit`` says:

- ``parameters``: the values of the emulator's parameter inputs (growth, grazing, ... rates), its weights
  fixed: four numbers instead of the network's thousands of weights. On the demo, fine-tuning the weights on
  a few months of analyses never lowered their own validation loss (it fits the analysis noise), while the
  calibrated parameters lowered the 7-day forecast error against the truth at every refit.
- ``weights``: fine-tuning of the network, with the calibrated parameter values as its inputs; a candidate
  only when it lowers the validation loss of held-out segments.

The latest ``refit.holdout_days`` are not fitted: there the current emulator and each candidate forecast up to
``LEAD_DAYS`` days from every analysis, scored against the observations that were assimilated there. The best
candidate is kept if its score is lower overall and no observed variable with enough comparisons
(``MIN_VARIABLE_COMPARISONS``) is significantly worse, by a paired test on the same observations: on the
demo, refits that improved the overall score by forecasting nitrate better and oxygen markedly worse made the
analyses worse, while vetoing any increase refused every refit. Forecasts from consecutive days share
their errors, so the test's units are blocks of ``LEAD_DAYS`` start days. Either way
the attempt goes into the emulator's lineage (when, data, skill before and after, per variable, kept or not
and why).

The filter's model-error amplitude stays the pretrained emulator's: refit residuals are measured against
analyses, which carry their own errors, and would shrink the spread the filter needs.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from assimilation import dispositions as dsp
from emulators.parameters import ProcessParams

LEAD_DAYS = 7
BURN_IN_DAYS = 30        # the first analyses still remember the initial ensemble
SEGMENT_DAYS = 30        # length of the training trajectories cut from the analyses
CONFIDENCE_FLOOR = 0.05  # relative sd below which an analysis gets no more weight
MIN_VARIABLE_COMPARISONS = 10  # a variable with fewer held-out comparisons cannot veto a refit
WORSE_SIGNIFICANCE = 2.0  # standard errors of the paired difference beyond which a variable vetoes a refit


def analysis_trajectories(analysis_mean: np.ndarray, analysis_sd: np.ndarray, layout, forcing, emulator,
                          start: int, stop: int, segment_days: int = SEGMENT_DAYS, parameters=None):
    """Training trajectories and confidence weights from the analyses of cycles [start, stop).

    The analysis of cycle c is the state at day c + 1; the step from it to cycle c + 1 is driven by the
    forcing of cycle c + 1. ``parameters``: values of the emulator's parameter inputs (default: the process
    model's defaults). Where the filter estimates parameters (``layout.estimated``), each step's inputs are
    those values times exp(the analysed factor of the cycle it starts from), kept within the emulator's
    training range as the cycles kept each member's (``parameter_input_range``). Returns (TrajectoryData,
    weights (num_traj, segment_days + 1, d)) or None when the span holds fewer than four segments (too few to
    hold some out for validation).
    """
    from emulators.training import TrajectoryData, forcing_inputs, parameter_columns
    from twin.forecast import estimated_input_positions, parameter_input_names, parameter_input_range
    features = np.array(forcing_inputs(emulator.config.forcing_names, forcing))  # (T, S, F)
    columns = parameter_columns(emulator.config.forcing_names)
    if parameters is not None:
        features[..., columns] = np.asarray(parameters, features.dtype)
    if layout.estimated:
        estimated = columns[estimated_input_positions(layout, parameter_input_names(emulator))]
        theta = np.asarray(analysis_mean)[:, layout.parameter_slices()]  # (cycles so far, S, P)
        steps = min(theta.shape[0], features.shape[0]) - 1                 # the forcing may run further
        features[1:steps + 1, :, estimated] *= np.exp(theta[:steps])
        features[..., columns] = np.clip(features[..., columns], *parameter_input_range(emulator))
    doy = np.asarray(forcing.day_of_year)                                          # (T, S)
    model_idx = layout.model_slices()
    starts = list(range(start, stop - segment_days, segment_days))
    if len(starts) * len(layout.sites) < 4:
        return None
    states, feats, days, weights, groups = [], [], [], [], []
    for s, idx in enumerate(model_idx):
        for g, k in enumerate(starts):
            mean = analysis_mean[k:k + segment_days + 1, idx]
            rel = analysis_sd[k:k + segment_days + 1, idx] / np.maximum(mean, 1e-6)
            states.append(mean)
            weights.append(1.0 / (rel**2 + CONFIDENCE_FLOOR**2))
            feats.append(features[k + 1:k + segment_days + 1, s])
            days.append(doy[k + 1:k + segment_days + 1, s])
            groups.append(g)
    weights = np.stack(weights)
    weights /= weights.mean(axis=(0, 1), keepdims=True)  # mean weight 1 per variable
    data = TrajectoryData(states=np.stack(states).astype(np.float32), forcing=np.stack(feats).astype(np.float32),
                          day_of_year=np.stack(days).astype(np.float32), site=np.zeros(len(states), np.int32),
                          group=np.asarray(groups), state_names=emulator.config.state_names,
                          forcing_names=emulator.config.forcing_names,
                          description=f"analyses of cycles {start}-{stop - 1} ({len(states)} segments of "
                                      f"{segment_days} days, confidence-weighted)")
    return data, weights.astype(np.float32)


def lead_forecasts(forecast, analysis_mean: np.ndarray, forcing, starts: np.ndarray, lead_days: int, end: int):
    """A jitted function of the model parameters: deterministic forecasts (B, lead_days, n) from the analysis
    mean of each cycle in ``starts`` (``forecast`` built with zero model error), with the forcing of cycles
    c + 1 .. c + lead_days (clipped at ``end - 1``)."""
    cycles = np.minimum(np.asarray(starts)[:, None] + np.arange(1, lead_days + 1)[None, :], end - 1)  # (B, L)
    x0 = jnp.asarray(analysis_mean[np.asarray(starts)])[:, None, :]  # (B, 1, n): each start an ensemble of 1
    steps = jax.tree.map(lambda a: jnp.swapaxes(jnp.asarray(np.asarray(a)[cycles]), 0, 1), forcing)  # (L, B, ..)
    key = jax.random.PRNGKey(0)
    step = jax.vmap(lambda x, f, p: forecast(x, f, key, p), in_axes=(0, 0, None))

    @jax.jit
    def predictions(model_params):
        def day(x, f):
            nxt = step(x, f, model_params)
            return nxt, nxt[:, 0, :]
        return jnp.swapaxes(jax.lax.scan(day, x0, steps)[1], 0, 1)

    return predictions


class ForecastScore(NamedTuple):
    """Root mean square of the normalised forecast errors (lower is better): overall and per observed state
    element (``variable@site/layer`` -> (score, comparisons)); ``squared``: each element's mean squared
    normalised error per block of start days, in the same order for every model scored by one scorer (the
    units of the paired comparison)."""
    overall: float
    count: int
    by_variable: dict[str, tuple[float, int]]
    squared: dict[str, np.ndarray] = {}


def make_forecast_scorer(forecast, analysis_mean: np.ndarray, cycle_obs, disposition: np.ndarray, forcing,
                         starts: np.ndarray, end: int, lead_days: int = LEAD_DAYS, names=None):
    """A function of the model parameters (emulator weights) giving the :class:`ForecastScore` on held-out days.

    From the analysis mean of every cycle in ``starts`` a deterministic forecast runs ``lead_days`` days;
    each observation assimilated at cycles c + 1 .. c + lead_days (before ``end``) is compared in log space,
    scaled by its relative error. ``names``: the state layout's element names (default ``state[i]``).
    """
    starts = np.asarray(starts)
    cycles = starts[:, None] + np.arange(1, lead_days + 1)[None, :]
    cycles_c = np.minimum(cycles, end - 1)
    obs = cycle_obs.obs
    value = np.asarray(obs.value)[cycles_c]                      # (B, L, m)
    err = np.asarray(obs.error_sd)[cycles_c]
    index = np.asarray(obs.state_index)[cycles_c]
    use = ((np.asarray(disposition)[cycles_c] == dsp.ASSIMILATED) & (cycles < end)[..., None]
           & (value > 0) & np.isfinite(value))
    safe = np.where(use, value, 1.0)
    log_y, scale = np.log(safe), np.where(use, err / safe, 1.0)
    predictions = lead_forecasts(forecast, analysis_mean, forcing, starts, lead_days, end)
    count = int(use.sum())
    elements = np.unique(index[use])
    # Forecasts from consecutive days share most of their errors: blocks of lead_days start days are the
    # independent units of the paired test (significantly_worse).
    block = np.broadcast_to(((starts - starts.min(initial=0)) // lead_days)[:, None, None], use.shape)
    blocks = np.unique(block)
    names = names if names is not None else [f"state[{i}]" for i in range(analysis_mean.shape[-1])]

    def score(model_params) -> ForecastScore:
        if count == 0:
            return ForecastScore(float("nan"), 0, {})
        pred = np.asarray(predictions(model_params))
        h = np.take_along_axis(pred, index.clip(0, pred.shape[-1] - 1), axis=-1)
        z2 = np.where(use, (np.log(np.maximum(h, 1e-6)) - log_y) / scale, 0.0) ** 2
        by_variable, squared = {}, {}
        for i in elements:
            mask = use & (index == i)
            per_block = [z2[mask & (block == k)].mean() for k in blocks if np.any(mask & (block == k))]
            squared[names[i]] = np.asarray(per_block)
            by_variable[names[i]] = (float(np.sqrt(z2[mask].mean())), int(mask.sum()))
        return ForecastScore(float(np.sqrt(z2.sum() / count)), count, by_variable, squared)

    return score


def significantly_worse(before: ForecastScore, after: ForecastScore, name: str) -> bool:
    """Whether ``after`` forecasts variable ``name`` worse than ``before`` beyond sampling noise: the mean
    paired difference of the per-block squared normalised errors exceeds ``WORSE_SIGNIFICANCE`` standard
    errors (a single block, or scores without them: any increase)."""
    a, b = after.squared.get(name), before.squared.get(name)
    if a is None or b is None or a.shape != b.shape:
        return after.by_variable[name][0] > before.by_variable[name][0]
    difference = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    standard_error = difference.std(ddof=1) / np.sqrt(difference.size) if difference.size > 1 else 0.0
    return bool(difference.mean() > WORSE_SIGNIFICANCE * standard_error)


def refit_verdict(before: ForecastScore, after: ForecastScore) -> tuple[bool, str]:
    """(kept, why): kept when the overall score falls and no variable with enough comparisons gets
    significantly worse (:func:`significantly_worse`)."""
    if not np.isfinite(after.overall):
        return False, "no finite score after the refit"
    if after.overall >= before.overall:
        return False, f"overall score {after.overall:.4g} not below {before.overall:.4g}"
    worse = [f"{name} {after.by_variable[name][0]:.4g} > {score:.4g}"
             for name, (score, n) in before.by_variable.items()
             if n >= MIN_VARIABLE_COMPARISONS and significantly_worse(before, after, name)]
    if worse:
        return False, "significantly worse for " + ", ".join(worse)
    return True, f"overall score {before.overall:.4g} -> {after.overall:.4g}, no variable significantly worse"


def forecast_rmse_vs_truth(forecast, analysis_mean: np.ndarray, truth: np.ndarray, forcing, model_params,
                           names: list[str], lead_days: int = LEAD_DAYS, stride: int = 3) -> dict[str, float]:
    """RMSE of the ``lead_days``-day deterministic forecast from the analyses against the truth, per
    variable (twin experiment), from every ``stride``-th analysis after the burn-in. ``names``: of every
    state element; those without a truth (NaN: the model biases) are left out."""
    end = analysis_mean.shape[0]
    starts = np.arange(BURN_IN_DAYS, end - lead_days, stride)
    pred = np.asarray(lead_forecasts(forecast, analysis_mean, forcing, starts, lead_days, end)(model_params))
    err = pred[:, -1, :] - truth[starts + lead_days]
    return {name: float(np.sqrt(np.mean(err[:, i] ** 2))) for i, name in enumerate(names)
            if np.isfinite(truth[:, i]).any()}


@dataclasses.dataclass
class RefitRecord:
    """One refit attempt, as the report and metrics show it. ``fitted``: what the kept candidate changed
    ("" when none was kept); ``parameter_values``: the emulator's parameter inputs used from then on."""
    cycle: int
    time: str
    trained_on: str
    holdout: str
    score_before: float
    score_after: float
    observations: int
    kept: bool
    why: str
    seconds: float
    fitted: str = ""
    parameter_values: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parameter_values_by_cycle(initial, names, records, num_cycles: int) -> np.ndarray:
    """(num_cycles, P) the emulator's parameter inputs (``names``) each cycle stepped with: ``initial`` (P,)
    until the first refit, then each refit's ``parameter_values`` from the cycle after the last it analysed."""
    values = np.tile(np.asarray(initial, np.float64).reshape(1, len(names)), (num_cycles, 1))
    for r in sorted(records, key=lambda r: r.cycle):
        if r.cycle + 1 < num_cycles:
            previous = values[r.cycle + 1].copy()
            values[r.cycle + 1:] = [r.parameter_values.get(n, v) for n, v in zip(names, previous)]
    return values


def refit_config(refit, train_defaults):
    """A short fine-tuning schedule (one-day then four-day rollouts) at the refit's learning rate."""
    half = max(1, refit.steps // 2)
    return dataclasses.replace(train_defaults, learning_rate=refit.learning_rate,
                               rollout_schedule=((1, half), (4, max(1, refit.steps - half))),
                               warmup_steps=max(1, refit.steps // 10),
                               steps_per_eval=max(1, refit.steps // 4), batch_size=64, patience=100)


def _candidates(emulator, current, *, refit, train_defaults, analysis_mean, analysis_sd, layout, forcing,
                stop: int, key, progress: bool):
    """The refit's candidates [(what, EmulatorModelParams, emulator)] fitted to the analyses of cycles
    BURN_IN_DAYS .. stop - 1, and the description of those data; None when they are too few."""
    from emulators.training import calibrate_parameter_inputs, train
    from twin.forecast import parameter_input_names
    built = analysis_trajectories(analysis_mean, analysis_sd, layout, forcing, emulator, BURN_IN_DAYS, stop,
                                  parameters=current.parameters)
    if built is None:
        return None
    data, weights = built
    names = parameter_input_names(emulator)
    # A kept candidate carries the parameter values it was scored with (those in use unless calibrated).
    base = emulator.replace(parameter_values=dict(zip(names, map(float, np.asarray(current.parameters)),
                                                      strict=True))) if names else emulator
    candidates, parameters = [], current.parameters
    if "parameters" in refit.fit and names:
        defaults = ProcessParams()
        values, _, _ = calibrate_parameter_inputs(emulator.replace(weights=current.weights), data, weights,
                                                  np.asarray(current.parameters),
                                                  np.asarray([getattr(defaults, n) for n in names]),
                                                  keep_factors=bool(layout.estimated))
        parameters = jnp.asarray(values, jnp.float32)
        base = emulator.replace(parameter_values=dict(zip(names, map(float, values), strict=True)))
        candidates.append(("parameters", current._replace(parameters=parameters), base))
    if "weights" in refit.fit:
        if parameters is not current.parameters:  # fine-tune with the calibrated parameter inputs
            data, weights = analysis_trajectories(analysis_mean, analysis_sd, layout, forcing, emulator,
                                                  BURN_IN_DAYS, stop, parameters=parameters)
        tuned, history = train(refit_config(refit, train_defaults), data, key,
                               initial=emulator.replace(weights=current.weights), sample_weights=weights,
                               progress=progress)
        if history["best_val_loss"] < history["initial_val_loss"]:  # else train returned the weights given
            what = "parameters and weights" if candidates else "weights"
            candidates.append((what, current._replace(weights=tuned.weights, parameters=parameters),
                               tuned.replace(parameter_values=base.parameter_values, lineage=emulator.lineage)))
    return candidates, data.description


def refit_emulator(emulator, *, refit, train_defaults, forecast, analysis_mean, analysis_sd, cycle_obs,
                   disposition, layout, forcing, day0, cycle: int, key, progress: bool = False, current=None):
    """Try one refit at the end of ``cycle``; returns (the emulator to use next, RefitRecord or None).

    ``analysis_mean``/``analysis_sd``/``disposition`` cover cycles 0 .. cycle; ``forecast`` is the twin's
    forecast function without model error, taking ``twin.forecast.EmulatorModelParams`` as its model
    parameters; ``current``: those in use (default: the emulator's own). The emulator returned carries the
    kept candidate's weights and calibrated ``parameter_values``.
    """
    import time as time_module

    from emulators.checkpoint import make_lineage_entry
    from twin.forecast import emulator_model_params
    started = time_module.perf_counter()
    current = emulator_model_params(emulator) if current is None else current
    end = cycle + 1
    holdout_start = end - refit.holdout_days
    fitted = _candidates(emulator, current, refit=refit, train_defaults=train_defaults,
                         analysis_mean=analysis_mean, analysis_sd=analysis_sd, layout=layout, forcing=forcing,
                         stop=holdout_start, key=key, progress=progress)
    if fitted is None:
        return emulator, None
    candidates, description = fitted
    starts = np.arange(holdout_start, end - 1)
    scorer = make_forecast_scorer(forecast, analysis_mean, cycle_obs, disposition, forcing, starts, end,
                                  names=layout.names())
    before = scorer(current)
    judged = []
    for what, params, candidate in candidates:
        score = scorer(params)
        judged.append((what, score, candidate, *refit_verdict(before, score)))
    passing = [item for item in judged if item[3]]
    if judged:
        what, after, candidate, kept, why = min(passing or judged, key=lambda item: item[1].overall)
        why = f"{what}: {why}" if kept else f"best candidate ({what}): {why}"
    else:
        what, after, candidate = "", before, emulator
        kept, why = False, ("no candidate: no parameter inputs to calibrate, or the fine-tuning did not lower "
                            "the validation loss")
    when = (np.datetime64(day0, "D") + np.timedelta64(end, "D")).astype(str)
    holdout = f"cycles {holdout_start}-{cycle}, {before.count} observations, {LEAD_DAYS}-day forecasts"

    def skill(score: ForecastScore) -> dict[str, float]:
        return {"holdout_forecast_score": score.overall,
                **{f"holdout_forecast_score {name}": v for name, (v, _) in score.by_variable.items()}}

    entry = make_lineage_entry("refit", f"{description}; held out: {holdout}; {why}",
                               skill_before=skill(before), skill_after=skill(after), kept=kept,
                               time=datetime.datetime.now(datetime.UTC))
    lineage = tuple(emulator.lineage) + (entry,)
    # The refit's model error is not taken (see the module docstring): only weights, parameter inputs and
    # ranges change.
    chosen = (candidate.replace(model_error=emulator.model_error, lineage=lineage) if kept
              else emulator.replace(lineage=lineage))
    record = RefitRecord(cycle=cycle, time=str(when), trained_on=description, holdout=holdout,
                         score_before=before.overall, score_after=after.overall, observations=before.count,
                         kept=kept, why=why, seconds=time_module.perf_counter() - started,
                         fitted=what if kept else "", parameter_values=dict(chosen.parameter_values))
    return chosen, record


class Refitter:
    """The hindcast's refit schedule: ``due(cycles_done)`` and ``__call__`` between windows.

    ``model_params``: the ``EmulatorModelParams`` in use, from ``initial`` (default: the emulator's own)."""

    def __init__(self, emulator, prepared, stepper, train_defaults, key, quiet: bool = True, initial=None):
        from twin.forecast import chlorophyll_scales, emulator_model_params, make_forecast, state_ar1
        self.emulator = emulator
        self.initial = emulator_model_params(emulator) if initial is None else initial
        self.model_params = self.initial
        self.prepared = prepared
        self.refit = prepared.config.refit
        self.train_defaults = train_defaults
        self.key = key
        self.quiet = quiet
        zero = np.zeros(prepared.layout.model_dim, np.float32)
        self.deterministic = make_forecast(stepper, prepared.layout, prepared.sites, zero, chlorophyll_scale=
                                           chlorophyll_scales(prepared.config.sites, prepared.layout),
                                           **state_ar1(prepared.config, prepared.layout, noise=False))
        self.records: list[RefitRecord] = []

    def due(self, cycles_done: int) -> bool:
        k = self.refit.interval_days
        return k is not None and cycles_done % k == 0 and cycles_done < self.prepared.num_days

    def boundaries(self, num_days: int) -> list[int]:
        k = self.refit.interval_days
        return [] if k is None else list(range(k, num_days, k))

    def __call__(self, cycles_done: int, outputs) -> Any:
        """Refit after ``cycles_done`` cycles (``outputs`` covers them); returns the model params to use next."""
        from twin.forecast import emulator_model_params
        p = self.prepared
        self.emulator, record = refit_emulator(
            self.emulator, refit=self.refit, train_defaults=self.train_defaults, forecast=self.deterministic,
            analysis_mean=np.asarray(outputs.analysis_mean), analysis_sd=np.asarray(outputs.analysis_sd),
            cycle_obs=p.cycle_obs, disposition=np.asarray(outputs.disposition), layout=p.layout,
            forcing=p.forcing, day0=p.day0, cycle=cycles_done - 1,
            key=jax.random.fold_in(self.key, cycles_done), progress=not self.quiet, current=self.model_params)
        if record is not None:
            self.records.append(record)
            if record.kept:
                self.model_params = emulator_model_params(self.emulator)
        return self.model_params

"""Adaptive sampling: which observations would reduce a target's forecast variance most.

The inputs are an ensemble forecast flattened into a matrix ``E`` of shape (N, p): row ``i`` is member ``i``,
each column one quantity at one time (variable x site x layer x lead day, see :func:`trajectory_matrix`).
The target (say bottom oxygen at Point B at the horizon) is one column; each candidate observation is one
column plus an observation error standard deviation.

For one scalar observation ``h`` with error variance ``r^2`` the Kalman update reduces the variance of the
target ``t`` by (ensemble covariance formula; e.g. Ancell and Hakim 2007, Evensen 2009)

    reduction = cov(t, h)^2 / (var(h) + r^2),

which needs no observed value: the variance after an observation depends on the anomalies only. A plan of
``K`` samples is built greedily: pick the candidate with the largest reduction, apply a serial ensemble
square-root update (EnSRF, Whitaker and Hamill 2002) of the anomalies of every column with that hypothetical
observation, then score the remaining candidates against the updated ensemble. Because the EnSRF makes the
ensemble covariance after each pick exactly ``P - K H P``, the variance after ``K`` picks equals the Kalman
posterior variance given those ``K`` observations computed from the prior ensemble covariance.

Log space (``log=True``): the twin's filter analyses concentrations as ``z = log x`` (``assimilation.
transforms``), so the plan can be made in the same space. Every column whose members are all > 0 is
log-transformed (others stay linear); an observation error ``s`` of a log-transformed column becomes, by
lognormal moment matching at the column's ensemble mean ``m`` (the value one expects to observe),
``r = sqrt(log(1 + (s / m)^2))``. Variances and reductions are then log-space variances (squared relative
errors, roughly); :func:`format_plan` also shows the lognormal standard deviation in physical units.

The functions here are pure NumPy (float64) and know nothing of the store: the CLI builds ``E`` from the
ensemble forecast and the candidates from a file (:func:`parse_candidates`) or from the layout
(:func:`default_candidates`).
"""
from __future__ import annotations

import csv
import difflib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from twin.errors import InputError
from twin.state_layout import OBSERVABLE, STATE_VARIABLES, StateLayout
from twin.units import DEFAULT_ERROR_SD

__all__ = [
    "Candidate",
    "CandidateSpec",
    "PlanStep",
    "SamplingPlan",
    "TrialResult",
    "VerificationSummary",
    "candidates_from_specs",
    "compare_plan_with_random",
    "default_candidates",
    "expected_variance_reduction",
    "format_plan",
    "greedy_plan",
    "parse_candidates",
    "parse_target",
    "rank_candidates",
    "target_column",
    "trajectory_column",
    "trajectory_matrix",
    "verify_against_random",
]

# Ties in the greedy score (e.g. two candidates that are copies of each other) are broken by label, so
# that the plan does not depend on the order the candidates were listed in.
_TIE_RTOL = 1e-12


class Candidate(NamedTuple):
    """One candidate observation.

    Attributes:
        label: what it is, e.g. ``"nitrate@Point B/bottom day+3"``.
        state_column: column of the ensemble matrix ``E`` that the observation sees.
        error_sd: observation error standard deviation, physical units of that column, > 0.
    """

    label: str
    state_column: int
    error_sd: float


class PlanStep(NamedTuple):
    """One pick of a greedy plan.

    Attributes:
        candidate: the candidate picked.
        index: its position in the candidates given.
        variance: expected variance of the target after this pick and all earlier ones (analysis space).
        reduction: the variance reduction this pick brings, given the earlier picks.
    """

    candidate: Candidate
    index: int
    variance: float
    reduction: float


class SamplingPlan(NamedTuple):
    """Result of :func:`greedy_plan`.

    Attributes:
        initial_variance: variance of the target before any observation (analysis space).
        steps: the picks, in order.
        log: whether variances are of the log-transformed target.
        target_mean: ensemble mean of the target in physical units (to convert log-space variances).
    """

    initial_variance: float
    steps: tuple[PlanStep, ...]
    log: bool
    target_mean: float


# --------------------------------------------------------------------------------------------- kernels


def _check_ensemble(E, target_column: int, candidates: Sequence[Candidate]) -> np.ndarray:
    """``E`` as a float64 (N, p) array after checking it and the column indices."""
    E = np.asarray(E, dtype=np.float64)
    if E.ndim != 2:
        raise ValueError(f"ensemble matrix must be 2-D (members, columns); got shape {E.shape}")
    num_members, num_columns = E.shape
    if num_members < 2:
        raise ValueError(f"need at least 2 ensemble members to estimate covariances; got {num_members}")
    if not 0 <= int(target_column) < num_columns:
        raise ValueError(f"target_column {target_column} outside the ensemble's {num_columns} columns")
    if len(candidates) == 0:
        raise ValueError("no candidate observations given")
    for c in candidates:
        if not 0 <= int(c.state_column) < num_columns:
            raise ValueError(f"candidate {c.label!r}: state_column {c.state_column} outside the ensemble's "
                             f"{num_columns} columns")
        if not (math.isfinite(c.error_sd) and c.error_sd > 0):
            raise ValueError(f"candidate {c.label!r}: error_sd must be finite and > 0; got {c.error_sd}")
    columns = sorted({int(target_column)} | {int(c.state_column) for c in candidates})
    if not np.all(np.isfinite(E[:, columns])):
        raise ValueError("ensemble matrix has non-finite values in the target or candidate columns")
    return E


def _log_mask(E: np.ndarray, log: bool) -> np.ndarray:
    """(p,) True for the columns analysed in log space: all members > 0 when ``log``."""
    if not log:
        return np.zeros(E.shape[1], dtype=bool)
    return np.all(E > 0, axis=0)


def _to_analysis_space(E: np.ndarray, log_mask: np.ndarray) -> np.ndarray:
    return np.where(log_mask, np.log(np.where(log_mask, E, 1.0)), E)


def _lognormal_obs(value: np.ndarray, error_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-space observation and error sd by lognormal moment matching (as ``assimilation.transforms``)."""
    var = np.log1p((error_sd / value) ** 2)
    return np.log(value) - 0.5 * var, np.sqrt(var)


def _planning_error_sd(E: np.ndarray, log_mask: np.ndarray, columns: np.ndarray,
                       error_sd: np.ndarray) -> np.ndarray:
    """Analysis-space error sd of each candidate; a log column's error is matched at its ensemble mean."""
    mean = E[:, columns].mean(axis=0)
    is_log = log_mask[columns]
    _, r_log = _lognormal_obs(np.where(is_log, mean, 1.0), error_sd)
    return np.where(is_log, r_log, error_sd)


def _ensrf_step(mean: np.ndarray, A: np.ndarray, column: int, error_sd: float,
                value: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Serial EnSRF update with one scalar observation of ``column`` (Whitaker and Hamill 2002, eqs. 10-13).

    Legend: A (N, q) anomalies, a = A[:, column] predicted-observation anomalies, P = A^T A / (N - 1),
    K = P h / (h^T P h + r^2) the Kalman gain, alpha = 1 / (1 + sqrt(r^2 / (h^T P h + r^2))) the reduced-gain
    factor that makes (A - alpha a K^T)^T (A - alpha a K^T) / (N - 1) = P - K h^T P exactly.

    Args:
        mean: (q,) ensemble mean (only updated when ``value`` is given).
        A: (N, q) anomalies.
        column: the observed column.
        error_sd: observation error sd (analysis space).
        value: the observed value (analysis space), or None for a variance-only update.

    Returns:
        (mean (q,), A (N, q)) after the update.
    """
    n1 = A.shape[0] - 1
    a = A[:, column]
    total = a @ a / n1 + error_sd**2            # h^T P h + r^2
    gain = (A.T @ a) / (n1 * total)              # (q,)
    alpha = 1.0 / (1.0 + math.sqrt(error_sd**2 / total))
    if value is not None:
        mean = mean + gain * (value - mean[column])
    return mean, A - alpha * np.outer(a, gain)


def _reductions(A: np.ndarray, target: int, columns: np.ndarray, error_sd: np.ndarray) -> np.ndarray:
    """cov(t, h_k)^2 / (var(h_k) + r_k^2) for every candidate k."""
    n1 = A.shape[0] - 1
    cov_t = (A.T @ A[:, target]) / n1
    var = np.einsum("ij,ij->j", A, A) / n1
    return cov_t[columns] ** 2 / (var[columns] + error_sd**2)


def expected_variance_reduction(E, target_column: int, candidate: Candidate, *, log: bool = False) -> float:
    """Expected reduction of the target's variance from one observation (ensemble covariance formula).

    Args:
        E: (N, p) ensemble matrix, physical units.
        target_column: column of the target.
        candidate: the observation.
        log: analyse in log space (module docstring).

    Returns:
        cov(t, h)^2 / (var(h) + r^2), with sample (N - 1) covariances, in analysis space.
    """
    return float(rank_candidates(E, target_column, [candidate], log=log)[0][1])


def rank_candidates(E, target_column: int, candidates: Sequence[Candidate], *,
                    log: bool = False) -> list[tuple[Candidate, float]]:
    """Every candidate with its expected variance reduction on its own, best first.

    Args:
        E: (N, p) ensemble matrix, physical units.
        target_column: column of the target.
        candidates: the candidate observations.
        log: analyse in log space (module docstring).

    Returns:
        (candidate, reduction) pairs sorted by decreasing reduction, ties by label.
    """
    E = _check_ensemble(E, target_column, candidates)
    log_mask = _log_mask(E, log)
    Z = _to_analysis_space(E, log_mask)
    columns = np.array([c.state_column for c in candidates], dtype=int)
    error_sd = _planning_error_sd(E, log_mask, columns, np.array([c.error_sd for c in candidates], float))
    A = Z - Z.mean(axis=0)
    reduction = _reductions(A, int(target_column), columns, error_sd)
    order = sorted(range(len(candidates)), key=lambda k: (-reduction[k], candidates[k].label, k))
    return [(candidates[k], float(reduction[k])) for k in order]


def _pick(score: np.ndarray, labels: Sequence[str]) -> int:
    """Index of the best score; near-ties (relative 1e-12) go to the smallest label, then the first."""
    best = np.max(score)
    tied = np.flatnonzero(score >= best - _TIE_RTOL * abs(best))
    return int(min(tied, key=lambda k: (labels[k], k)))


def greedy_plan(E, target_column: int, candidates: Sequence[Candidate], budget: int, *, log: bool = False,
                allow_repeats: bool = False) -> SamplingPlan:
    """Greedy plan of ``budget`` observations minimising the target's expected variance.

    Each pick maximises the reduction given the earlier picks; between picks the anomalies of every column
    get a serial EnSRF update with the hypothetical observation (module docstring), so the expected variance
    after ``K`` picks equals the Kalman posterior variance of the target given those observations under the
    ensemble covariance.

    Args:
        E: (N, p) ensemble matrix, physical units.
        target_column: column of the target.
        candidates: the candidate observations.
        budget: number of observations to plan, >= 0.
        log: analyse in log space (module docstring).
        allow_repeats: allow the same candidate more than once (a repeat is another observation of the same
            quantity with independent error, e.g. a replicate bottle). Off by default.

    Returns:
        :class:`SamplingPlan` with the initial variance and one :class:`PlanStep` per pick.

    Raises:
        ValueError: bad shapes or columns, error_sd <= 0, or a budget larger than the number of candidates
            without ``allow_repeats``.
    """
    E = _check_ensemble(E, target_column, candidates)
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"budget must be >= 0; got {budget}")
    if budget > len(candidates) and not allow_repeats:
        raise ValueError(f"budget {budget} exceeds the {len(candidates)} candidates; lower the budget, add "
                         f"candidates, or allow repeats")
    # Only the target and the candidate columns enter the scores: update those alone.
    columns = np.array([c.state_column for c in candidates], dtype=int)
    keep, inverse = np.unique(np.r_[int(target_column), columns], return_inverse=True)
    target, local = int(inverse[0]), inverse[1:]
    sub = E[:, keep]
    log_mask = _log_mask(sub, log)
    Z = _to_analysis_space(sub, log_mask)
    error_sd = _planning_error_sd(sub, log_mask, local, np.array([c.error_sd for c in candidates], float))
    mean, A = Z.mean(axis=0), Z - Z.mean(axis=0)
    n1 = A.shape[0] - 1
    labels = [c.label for c in candidates]
    available = np.ones(len(candidates), dtype=bool)
    steps = []
    for _ in range(budget):
        score = np.where(available, _reductions(A, target, local, error_sd), -np.inf)
        k = _pick(score, labels)
        mean, A = _ensrf_step(mean, A, int(local[k]), float(error_sd[k]))
        variance = float(A[:, target] @ A[:, target] / n1)
        steps.append(PlanStep(candidates[k], k, variance, float(score[k])))
        available[k] = allow_repeats
    initial = float(np.var(Z[:, target], ddof=1))
    return SamplingPlan(initial, tuple(steps), bool(log_mask[target]), float(sub[:, target].mean()))


def format_plan(plan: SamplingPlan, target: str = "target", units: str = "") -> str:
    """The plan as a text table: pick, candidate, expected variance and sd after it, reduction.

    With a log-space plan the sd column is the lognormal sd in physical units at the prior mean,
    m sqrt(exp(var) - 1).
    """
    def sd(var: float) -> float:
        return plan.target_mean * math.sqrt(math.expm1(var)) if plan.log else math.sqrt(var)

    space = "log-space " if plan.log else ""
    unit = f" ({units})" if units else ""
    width = max([len("candidate")] + [len(s.candidate.label) for s in plan.steps])
    var_head, sd_head = space + "variance", "sd" + unit
    wv, ws = max(12, len(var_head)), max(12, len(sd_head))
    lines = [f"target {target}: prior {space}variance {plan.initial_variance:.4g}, sd{unit} "
             f"{sd(plan.initial_variance):.4g}",
             f"{'pick':>4}  {'candidate':<{width}}  {var_head:>{wv}}  {sd_head:>{ws}}  {'reduction':>10}"]
    for i, s in enumerate(plan.steps, 1):
        lines.append(f"{i:>4}  {s.candidate.label:<{width}}  {s.variance:>{wv}.4g}  {sd(s.variance):>{ws}.4g}  "
                     f"{s.reduction:>10.4g}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- layout and files


def trajectory_matrix(trajectories) -> np.ndarray:
    """Ensemble trajectories (N, H, n) -> the (N, H * n) matrix of this module.

    Index ``d`` of the time axis holds lead day ``d + 1``; column ``(lead_day - 1) * n + state_index``
    (:func:`trajectory_column`).
    """
    X = np.asarray(trajectories, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"trajectories must be (members, lead days, state); got shape {X.shape}")
    return X.reshape(X.shape[0], -1)


def trajectory_column(state_index: int, lead_day: int, state_dim: int) -> int:
    """Column of ``state_index`` at ``lead_day`` (1-based) in :func:`trajectory_matrix`."""
    if lead_day < 1:
        raise ValueError(f"lead_day must be >= 1; got {lead_day}")
    return (lead_day - 1) * state_dim + state_index


def parse_target(text: str) -> tuple[str, str, str]:
    """``"VARIABLE@SITE/LAYER"`` -> (variable, site, layer)."""
    variable, at, rest = text.partition("@")
    site, slash, layer = rest.rpartition("/")
    if not (at and slash and variable.strip() and site.strip() and layer.strip()):
        raise ValueError(f"target {text!r} must read VARIABLE@SITE/LAYER, e.g. 'oxygen@Point B/bottom'")
    return variable.strip(), site.strip(), layer.strip()


def _state_index(layout: StateLayout, variable: str, site: str, layer: str, observed: bool) -> int:
    """State index of a variable, or ValueError naming what is unknown and the valid choices."""
    valid = tuple(OBSERVABLE) if observed else STATE_VARIABLES
    for name, value, choices in (("variable", variable, valid), ("site", site, layout.sites),
                                 ("layer", layer, layout.layers)):
        if value not in choices:
            raise ValueError(f"unknown {name} {value!r}{_did_you_mean(value, choices)}; valid: {list(choices)}")
    return layout.observation_index(variable, site, layer) if observed else layout.index(variable, site, layer)


def target_column(layout: StateLayout, target: str, horizon: int) -> int:
    """Column of ``target`` (``"VARIABLE@SITE/LAYER"``, any state variable) at lead day ``horizon``."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 day; got {horizon}")
    variable, site, layer = parse_target(target)
    return trajectory_column(_state_index(layout, variable, site, layer, observed=False), horizon, layout.dim)


def _label(variable: str, site: str, layer: str, lead_day: int) -> str:
    return f"{variable}@{site}/{layer} day+{lead_day}"


def default_candidates(layout: StateLayout, horizon: int, *, variables: Sequence[str] | None = None,
                       error_sd: Mapping[str, float] | None = None) -> list[Candidate]:
    """Every observable variable at every site and layer on each lead day 1..``horizon``.

    Args:
        layout: the twin's state layout.
        horizon: last lead day, >= 1.
        variables: observed variables to offer (default: all the twin observes, ``OBSERVABLE``).
        error_sd: per-variable error sd overriding ``twin.units.DEFAULT_ERROR_SD``.

    Returns:
        Candidates with columns of :func:`trajectory_matrix`, in (lead day, site, layer, variable) order.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 day; got {horizon}")
    names = tuple(OBSERVABLE) if variables is None else tuple(variables)
    errors = {**DEFAULT_ERROR_SD, **(error_sd or {})}
    out = []
    for day in range(1, horizon + 1):
        for site in layout.sites:
            for layer in layout.layers:
                for v in names:
                    index = _state_index(layout, v, site, layer, observed=True)
                    out.append(Candidate(_label(v, site, layer, day), trajectory_column(index, day, layout.dim),
                                         float(errors[v])))
    return out


class CandidateSpec(NamedTuple):
    """One row of a candidates file, before it is resolved against a layout.

    Attributes:
        variable, site, layer: what is observed where.
        lead_day: days after the analysis, >= 1.
        error_sd: error sd in canonical units, or None for ``DEFAULT_ERROR_SD``.
        source, line: file and 1-based line the row came from (for error messages).
    """

    variable: str
    site: str
    layer: str
    lead_day: int
    error_sd: float | None
    source: str = ""
    line: int | None = None


_FIELDS = ("variable", "site", "layer", "lead_day", "error_sd")
_REQUIRED = ("variable", "site", "layer", "lead_day")


def _did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _spec_from_row(row: Mapping, path: Path, line: int | None) -> CandidateSpec:
    """Check one row (mapping of field -> raw value) and build its spec."""
    unknown = [k for k in row if k not in _FIELDS]
    if unknown:
        k = str(unknown[0])
        raise InputError(path, f"unknown field {k!r}{_did_you_mean(k, _FIELDS)}; expected {list(_FIELDS)}",
                         line=line)
    for k in _REQUIRED:
        if row.get(k) is None or str(row[k]).strip() == "":
            raise InputError(path, f"missing value for {k!r}", line=line, field=k)
    variable = str(row["variable"]).strip()
    if variable not in DEFAULT_ERROR_SD:
        raise InputError(path, f"unknown variable {variable!r}{_did_you_mean(variable, DEFAULT_ERROR_SD)}",
                         line=line, field="variable")
    try:
        lead = float(row["lead_day"])
    except (TypeError, ValueError):
        lead = float("nan")
    if not (math.isfinite(lead) and lead == int(lead) and lead >= 1):
        raise InputError(path, f"lead_day must be a whole number of days >= 1; got {row['lead_day']!r}",
                         line=line, field="lead_day")
    raw = row.get("error_sd")
    error = None
    if raw is not None and str(raw).strip() != "":
        try:
            error = float(raw)
        except (TypeError, ValueError):
            error = float("nan")
        if not (math.isfinite(error) and error > 0):
            raise InputError(path, f"error_sd must be a number > 0 (or empty for the default); got {raw!r}",
                             line=line, field="error_sd")
    return CandidateSpec(variable, str(row["site"]).strip(), str(row["layer"]).strip(), int(lead), error,
                         str(path), line)


def parse_candidates(path: str | Path) -> list[CandidateSpec]:
    """Read a candidates file: CSV (header ``variable,site,layer,lead_day,error_sd``) or YAML (``.yaml``/
    ``.yml``: a list of mappings with those keys, or ``{candidates: [...]}``). ``error_sd`` may be empty or
    absent for the default of the variable; ``#`` starts a comment line in CSV.

    Args:
        path: the file.

    Returns:
        One :class:`CandidateSpec` per row, in file order (resolve with :func:`candidates_from_specs`).

    Raises:
        InputError: naming the file, line and field of the first bad row.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(path, f"cannot read candidates file: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        specs = _parse_yaml(text, path)
    else:
        specs = _parse_csv(text, path)
    if not specs:
        raise InputError(path, "no candidates in file")
    return specs


def _parse_csv(text: str, path: Path) -> list[CandidateSpec]:
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1)
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return []
    rows = list(csv.reader([ln for _, ln in lines], skipinitialspace=True))
    header = [h.strip() for h in rows[0]]
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        raise InputError(path, f"header lacks column(s) {missing}; expected {list(_FIELDS)}", line=lines[0][0])
    specs = []
    for (line, _), values in zip(lines[1:], rows[1:]):
        if len(values) != len(header):
            raise InputError(path, f"{len(values)} values for {len(header)} columns {header}", line=line)
        specs.append(_spec_from_row(dict(zip(header, values)), path, line))
    return specs


def _parse_yaml(text: str, path: Path) -> list[CandidateSpec]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(path, f"invalid YAML: {getattr(exc, 'problem', exc)}",
                         line=mark.line + 1 if mark else None) from None
    if isinstance(data, dict):
        if set(data) != {"candidates"}:
            raise InputError(path, f"expected a list of candidates or a mapping with the single key "
                                   f"'candidates'; got keys {sorted(map(str, data))}")
        data = data["candidates"]
        node = next(v for k, v in node.value if k.value == "candidates")
    if data is None:
        return []
    if not isinstance(data, list):
        raise InputError(path, f"candidates must be a list of mappings; got {type(data).__name__}")
    specs = []
    for item, item_node in zip(data, node.value):
        line = item_node.start_mark.line + 1
        if not isinstance(item, dict):
            raise InputError(path, f"each candidate must be a mapping with keys {list(_FIELDS)}", line=line)
        specs.append(_spec_from_row(item, path, line))
    return specs


def candidates_from_specs(specs: Sequence[CandidateSpec], layout: StateLayout, horizon: int) -> list[Candidate]:
    """Resolve file rows against the twin's layout into :class:`Candidate` s.

    Args:
        specs: rows from :func:`parse_candidates`.
        layout: the twin's state layout.
        horizon: the forecast's last lead day (a row beyond it cannot be planned).

    Returns:
        Candidates with columns of :func:`trajectory_matrix`, errors defaulted from ``DEFAULT_ERROR_SD``.

    Raises:
        InputError: a variable the twin cannot observe, an unknown site or layer, or a lead day beyond the
            horizon, naming the file and line.
    """
    out = []
    for s in specs:
        if s.lead_day > horizon:
            raise InputError(s.source or "<candidates>", f"lead_day {s.lead_day} is beyond the horizon "
                             f"of {horizon} days", line=s.line, field="lead_day")
        try:
            index = _state_index(layout, s.variable, s.site, s.layer, observed=True)
        except ValueError as exc:
            raise InputError(s.source or "<candidates>", str(exc), line=s.line) from None
        error = DEFAULT_ERROR_SD[s.variable] if s.error_sd is None else s.error_sd
        out.append(Candidate(_label(s.variable, s.site, s.layer, s.lead_day),
                             trajectory_column(index, s.lead_day, layout.dim), float(error)))
    return out


# ------------------------------------------------------------------------------------------ verification


class TrialResult(NamedTuple):
    """Absolute error of the target's ensemble mean (physical units) in one twin-experiment trial.

    Attributes:
        prior_error: before any observation.
        plan_error: after assimilating the plan's observations.
        random_error: after assimilating as many randomly chosen candidates.
    """

    prior_error: float
    plan_error: float
    random_error: float


class VerificationSummary(NamedTuple):
    """Errors over many trials of :func:`compare_plan_with_random`.

    Attributes:
        prior_errors, plan_errors, random_errors: (T,) absolute errors of the target mean per trial.
    """

    prior_errors: np.ndarray
    plan_errors: np.ndarray
    random_errors: np.ndarray

    @property
    def num_trials(self) -> int:
        return len(self.plan_errors)

    @property
    def plan_mean(self) -> float:
        return float(np.mean(self.plan_errors))

    @property
    def plan_sd(self) -> float:
        return float(np.std(self.plan_errors, ddof=1))

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_errors))

    @property
    def random_sd(self) -> float:
        return float(np.std(self.random_errors, ddof=1))

    @property
    def mean_gain(self) -> float:
        """Mean of (random error - plan error): > 0 when the plan does better."""
        return float(np.mean(self.random_errors - self.plan_errors))

    @property
    def gain_se(self) -> float:
        """Standard error of :attr:`mean_gain` (paired trials)."""
        return float(np.std(self.random_errors - self.plan_errors, ddof=1) / math.sqrt(self.num_trials))

    @property
    def fraction_plan_better(self) -> float:
        return float(np.mean(self.plan_errors < self.random_errors))


def _assimilate(E: np.ndarray, log_mask: np.ndarray, target: int, picks: Sequence[Candidate],
                values: np.ndarray) -> float:
    """Target mean (physical units) after a serial EnSRF mean and anomaly update with ``picks``.

    A log-space observation that is not > 0 is skipped, as the filter does (``INVALID_FOR_TRANSFORM``).
    """
    Z = _to_analysis_space(E, log_mask)
    mean, A = Z.mean(axis=0), Z - Z.mean(axis=0)
    for c, y in zip(picks, values):
        col = int(c.state_column)
        if log_mask[col]:
            if not y > 0:
                continue
            y_log, r_log = _lognormal_obs(np.float64(y), np.float64(c.error_sd))
            mean, A = _ensrf_step(mean, A, col, float(r_log), float(y_log))
        else:
            mean, A = _ensrf_step(mean, A, col, float(c.error_sd), float(y))
    members = mean[target] + A[:, target]
    return float(np.mean(np.exp(members)) if log_mask[target] else np.mean(members))


def verify_against_random(truth, E, target_column: int, candidates: Sequence[Candidate], budget: int, *,
                          rng: np.random.Generator, log: bool = False, allow_repeats: bool = False,
                          plan: SamplingPlan | None = None) -> TrialResult:
    """One twin-experiment trial: assimilate the plan's observations or as many random ones; compare errors.

    Observations are truth + Gaussian noise with each candidate's error sd. The plan and the random choice
    see the same noise for the same candidate (common random numbers: the comparison is then about the
    choice, not the noise); a repeated candidate gets fresh noise on each occurrence. The update is a
    deterministic serial EnSRF of mean and anomalies (no perturbed observations), in log space for the
    log-transformed columns when ``log``.

    Args:
        truth: (p,) the true trajectory, same columns as ``E``, physical units.
        E: (N, p) prior ensemble matrix, physical units.
        target_column: column of the target.
        candidates: the candidate observations.
        budget: number of observations in each arm.
        rng: the trial's random generator (noise, then random picks).
        log: analyse in log space (module docstring).
        allow_repeats: as in :func:`greedy_plan`; also lets the random arm repeat.
        plan: the greedy plan if already computed (it depends on ``E`` only), else computed here.

    Returns:
        :class:`TrialResult` of absolute errors of the target's ensemble mean.
    """
    E = _check_ensemble(E, target_column, candidates)
    truth = np.asarray(truth, dtype=np.float64)
    if truth.shape != (E.shape[1],):
        raise ValueError(f"truth must have shape ({E.shape[1]},) like the ensemble's columns; "
                         f"got {truth.shape}")
    if plan is None:
        plan = greedy_plan(E, target_column, candidates, budget, log=log, allow_repeats=allow_repeats)
    if len(plan.steps) != budget:
        raise ValueError(f"plan has {len(plan.steps)} steps for a budget of {budget}")
    if any(s.index >= len(candidates) or candidates[s.index] != s.candidate for s in plan.steps):
        raise ValueError("plan was made for another list of candidates")
    noise = rng.standard_normal((max(budget, 1), len(candidates)))  # row j: the j-th occurrence
    random_picks = rng.choice(len(candidates), size=budget, replace=allow_repeats)

    def observe(picks: Sequence[int]) -> np.ndarray:
        seen: dict[int, int] = {}
        values = []
        for k in picks:
            j = seen.get(k, 0)
            seen[k] = j + 1
            c = candidates[k]
            values.append(truth[c.state_column] + c.error_sd * noise[j, k])
        return np.array(values)

    plan_picks = [s.index for s in plan.steps]
    log_mask = _log_mask(E, log)
    t = int(target_column)
    truth_t = truth[t]
    prior = _assimilate(E, log_mask, t, [], np.array([]))
    after_plan = _assimilate(E, log_mask, t, [candidates[k] for k in plan_picks], observe(plan_picks))
    after_random = _assimilate(E, log_mask, t, [candidates[k] for k in random_picks], observe(random_picks))
    return TrialResult(abs(prior - truth_t), abs(after_plan - truth_t), abs(after_random - truth_t))


def compare_plan_with_random(truth, E, target_column: int, candidates: Sequence[Candidate], budget: int, *,
                             num_trials: int, seed: int, log: bool = False,
                             allow_repeats: bool = False) -> VerificationSummary:
    """Many trials of :func:`verify_against_random` with independent noise and random picks.

    Args:
        truth: (p,) one truth for every trial, or (num_trials, p) one per trial (e.g. truths drawn from the
            prior distribution).
        E: (N, p) prior ensemble matrix, physical units.
        target_column, candidates, budget, log, allow_repeats: as in :func:`verify_against_random`.
        num_trials: number of trials, >= 2 (for a spread).
        seed: seeds one independent generator per trial (``numpy.random.Generator.spawn``).

    Returns:
        :class:`VerificationSummary` (per-trial errors; mean, sd, mean gain and its standard error).
    """
    if num_trials < 2:
        raise ValueError(f"num_trials must be >= 2 to report a spread; got {num_trials}")
    truth = np.asarray(truth, dtype=np.float64)
    truths = np.broadcast_to(truth, (num_trials, truth.shape[-1])) if truth.ndim == 1 else truth
    if truths.shape[0] != num_trials:
        raise ValueError(f"truth has {truths.shape[0]} rows for {num_trials} trials")
    plan = greedy_plan(E, target_column, candidates, budget, log=log, allow_repeats=allow_repeats)
    rngs = np.random.default_rng(seed).spawn(num_trials)
    results = [verify_against_random(truths[i], E, target_column, candidates, budget, rng=rngs[i], log=log,
                                     allow_repeats=allow_repeats, plan=plan) for i in range(num_trials)]
    prior, planned, random = (np.array(x) for x in zip(*results))
    return VerificationSummary(prior, planned, random)

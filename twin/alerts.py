"""Alerts: exceedance probabilities from the forecast ensemble, and their verification against observations.

An alert (``twin.config.AlertConfig``) asks for the probability that an *observation* of a state variable at
a site and layer falls beyond a threshold within a horizon. Each cycle turns the forecast ensemble into that
probability (observation error included, so the forecast is of what would be measured, which is what the
hindcast verifies against) and raises the alert when the probability reaches its level. In a hindcast the
issued probabilities are scored against what was observed: Brier score and its decomposition (Murphy 1973),
reliability diagram (Wilks 2011, section 8.4.4), hit rate, false-alarm rate and false-alarm ratio.

All functions are pure numpy; times are ``numpy.datetime64`` (or floats in days), probabilities in [0, 1],
thresholds and values in the variable's canonical unit (``twin.state_layout.STATE_UNITS``).

References:
    Murphy, A. H. (1973). A new vector partition of the probability score. J. Appl. Meteor. 12, 595-600.
    Wilks, D. S. (2011). Statistical Methods in the Atmospheric Sciences, 3rd ed., chapter 8.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Literal, Mapping, NamedTuple, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtr

from twin.units import DEFAULT_ERROR_SD

Direction = Literal["below", "above"]
_DIRECTIONS = ("below", "above")
ForecastKey = tuple[str, str, str]  # (variable, site, layer)


# --------------------------------------------------------------------------------------------------------
# Exceedance probabilities from the forecast ensemble


def _check_direction(direction: str) -> None:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")


def _member_exceedance(members: np.ndarray, threshold: float, direction: str, error_sd: float) -> np.ndarray:
    """Per-member probability that an observation (member value + N(0, error_sd^2)) is beyond the threshold.

    With ``error_sd == 0`` it is the indicator of the member itself being strictly beyond. NaN members
    stay NaN so that a broken member is never counted as a non-exceedance.
    """
    _check_direction(direction)
    if not error_sd >= 0:  # also catches NaN
        raise ValueError(f"error_sd must be >= 0, got {error_sd!r}")
    x = np.asarray(members, dtype=float)
    if error_sd == 0:
        beyond = x < threshold if direction == "below" else x > threshold
        q = beyond.astype(float)
    else:
        z = (threshold - x) / error_sd
        # ndtr(-z) rather than 1 - ndtr(z): keeps precision in the far tail of "above".
        q = ndtr(z) if direction == "below" else ndtr(-z)
    return np.where(np.isnan(x), np.nan, q)


def exceedance_probability(members: ArrayLike, threshold: float, direction: Direction, error_sd: float = 0.0
                           ) -> np.ndarray:
    """Probability that an observation falls beyond ``threshold``, from a forecast ensemble.

    The forecast distribution of the observation is the ensemble dressed with Gaussian observation error:
    ``P = mean_m Phi((threshold - x_m) / error_sd)`` for "below" and ``mean_m Phi((x_m - threshold) /
    error_sd)`` for "above". With ``error_sd == 0`` it is the fraction of members strictly beyond.

    Args:
        members: (..., N) ensemble values, e.g. (num_lead_days, N), in the variable's canonical unit.
        threshold: the threshold, same unit.
        direction: "below" or "above".
        error_sd: observation error standard deviation (>= 0), same unit.

    Returns:
        (...) probabilities in [0, 1]; NaN where any member is NaN.
    """
    return np.mean(_member_exceedance(members, threshold, direction, error_sd), axis=-1)


def window_probability(members: ArrayLike, threshold: float, direction: Direction, error_sd: float = 0.0,
                       horizon_days: int | None = None) -> np.ndarray:
    """Probability of exceedance at some time within the horizon.

    Definition: for each member, the largest per-day exceedance probability over lead days 1..horizon
    (observation error included), averaged over members::

        P = mean_m max_{d <= horizon} q_{m,d},   q_{m,d} = P(x_{m,d} + e beyond threshold),  e ~ N(0, sd^2)

    Why this one: with ``error_sd == 0`` it is exactly the fraction of member trajectories that cross the
    threshold within the horizon, the ensemble estimate of "the state goes beyond". With observation error,
    the exact probability of "an observation in the window is beyond" depends on how many observations are
    taken and when (errors are independent between observations), which the forecast cannot know: with
    weekly bottles there is usually one. ``max_d q`` is the probability for a single observation taken on
    the member's most extreme day: it never exceeds the probability for several observations that include
    that day, and never falls below that of one observation on any other day. It is monotone in the
    ensemble values and reduces to the exceedance probability when the horizon is one day.

    Args:
        members: (..., num_lead_days, N) ensemble values; row ``k`` on the lead-day axis is valid ``k + 1``
            days after the issue time.
        threshold, direction, error_sd: as in ``exceedance_probability``.
        horizon_days: use lead days 1..horizon_days (all when None).

    Returns:
        (...) probabilities in [0, 1].

    Raises:
        ValueError: the forecast has fewer lead days than the horizon.
    """
    x = np.asarray(members, dtype=float)
    if x.ndim < 2:
        raise ValueError(f"members must have shape (..., num_lead_days, N), got shape {x.shape}")
    if horizon_days is not None:
        if horizon_days < 1 or horizon_days > x.shape[-2]:
            raise ValueError(f"horizon of {horizon_days} days needs that many lead days; the forecast has "
                             f"{x.shape[-2]}")
        x = x[..., :horizon_days, :]
    q = _member_exceedance(x, threshold, direction, error_sd)
    return np.mean(np.max(q, axis=-2), axis=-1)


def alert_error_sd(alert) -> float:
    """Observation error sd used by ``alert``: its own, else ``DEFAULT_ERROR_SD`` of its variable, else 0
    (phytoplankton, zooplankton and detritus are not observed: their alerts are on the state itself)."""
    if alert.error_sd is not None:
        return float(alert.error_sd)
    return float(DEFAULT_ERROR_SD.get(alert.variable, 0.0))


class AlertRecord(NamedTuple):
    """One alert evaluated at one issue time (one row of the alert history)."""
    name: str
    variable: str
    site: str
    layer: str
    issue_time: np.datetime64
    horizon_days: int
    threshold: float
    direction: str
    level: float                     # the alert's probability level
    error_sd: float                  # observation error in the probability
    probability: float               # P(exceedance within the horizon), ``window_probability``
    raised: bool                     # probability >= level
    daily_probability: tuple[float, ...]  # P(exceedance) on lead days 1..horizon_days

    def as_json(self) -> dict:
        """The record as JSON-ready values (issue time as an ISO 8601 string, NaN as None)."""
        out = self._asdict()
        out["issue_time"] = str(np.datetime64(self.issue_time, "s"))
        out["probability"] = _json_float(self.probability)
        out["daily_probability"] = [_json_float(v) for v in self.daily_probability]
        return out


def evaluate_alerts(alerts: Sequence, forecast_by_variable: Mapping[ForecastKey, ArrayLike],
                    issue_time) -> list[AlertRecord]:
    """Exceedance probabilities and raised alerts for one forecast.

    Args:
        alerts: ``twin.config.AlertConfig`` items (names must be unique).
        forecast_by_variable: (variable, site, layer) -> (num_lead_days, N) forecast ensemble of that
            variable, row ``k`` valid ``k + 1`` days after ``issue_time``; see ``alert_forecasts``.
        issue_time: time of the analysis the forecast starts from (anything ``numpy.datetime64`` takes).

    Returns:
        One ``AlertRecord`` per alert, in the order of ``alerts``.

    Raises:
        ValueError: duplicate alert names, a forecast missing for an alert, or shorter than its horizon.
    """
    names = [a.name for a in alerts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate alert names {dup}: give each alert a distinct 'name'")
    issue = np.datetime64(issue_time, "s")
    records = []
    for alert in alerts:
        key = (alert.variable, alert.site, alert.layer)
        if key not in forecast_by_variable:
            raise ValueError(f"alert {alert.name!r}: no forecast of {alert.variable} at {alert.site}/"
                             f"{alert.layer}; forecasts given for {sorted(forecast_by_variable)}")
        x = np.asarray(forecast_by_variable[key], dtype=float)
        if x.ndim != 2:
            raise ValueError(f"alert {alert.name!r}: forecast must have shape (num_lead_days, N), got {x.shape}")
        if x.shape[0] < alert.horizon_days:
            raise ValueError(f"alert {alert.name!r}: horizon of {alert.horizon_days} days but the forecast "
                             f"has {x.shape[0]} lead days; raise hindcast.forecast_days or shorten the horizon")
        sd = alert_error_sd(alert)
        x = x[: alert.horizon_days]
        daily = exceedance_probability(x, alert.threshold, alert.direction, sd)
        p = float(window_probability(x, alert.threshold, alert.direction, sd))
        records.append(AlertRecord(
            name=alert.name, variable=alert.variable, site=alert.site, layer=alert.layer, issue_time=issue,
            horizon_days=int(alert.horizon_days), threshold=float(alert.threshold), direction=alert.direction,
            level=float(alert.probability), error_sd=sd, probability=p,
            raised=bool(p >= alert.probability), daily_probability=tuple(float(v) for v in daily)))
    return records


def alert_forecasts(alerts: Iterable, forecast_ensemble: ArrayLike, layout) -> dict[ForecastKey, np.ndarray]:
    """Pick from a full-state forecast the series ``evaluate_alerts`` needs.

    Args:
        alerts: ``twin.config.AlertConfig`` items.
        forecast_ensemble: (num_lead_days, N, n) forecast ensemble of the twin state.
        layout: the twin's ``twin.state_layout.StateLayout``.

    Returns:
        (variable, site, layer) -> (num_lead_days, N) array, for every alert.

    Raises:
        ValueError: an alert names a site or layer the twin does not carry.
    """
    ens = np.asarray(forecast_ensemble)
    out = {}
    for alert in alerts:
        i = layout.index(alert.variable, alert.site, alert.layer)
        if i < 0:
            raise ValueError(f"alert {alert.name!r}: the twin carries no {alert.variable} at {alert.site}/"
                             f"{alert.layer} (sites {list(layout.sites)}, layers {list(layout.layers)})")
        out[(alert.variable, alert.site, alert.layer)] = ens[..., i]
    return out


# --------------------------------------------------------------------------------------------------------
# Verification of probability forecasts of a binary event


class BrierDecomposition(NamedTuple):
    """Murphy (1973): ``brier = reliability - resolution + uncertainty`` (exact when forecasts are binned
    at their distinct values; otherwise up to the within-bin terms of Stephenson et al. 2008)."""
    brier: float
    reliability: float
    resolution: float
    uncertainty: float


class ReliabilityDiagram(NamedTuple):
    """Per probability bin: its centre, mean forecast, observed event frequency and number of forecasts.
    Empty bins have NaN mean forecast and frequency."""
    bin_centres: np.ndarray
    mean_forecast: np.ndarray
    observed_frequency: np.ndarray
    counts: np.ndarray


class Contingency(NamedTuple):
    """2x2 contingency table of a warning (raised when p >= level) and the scores drawn from it.

    ``hit_rate`` = hits / (hits + misses) (probability of detection); ``false_alarm_rate`` = false alarms /
    (false alarms + correct negatives) (probability of false detection, POFD); ``false_alarm_ratio`` = false
    alarms / (hits + false alarms) (FAR). NaN where the denominator is zero.
    """
    hits: int
    misses: int
    false_alarms: int
    correct_negatives: int
    hit_rate: float
    false_alarm_rate: float
    false_alarm_ratio: float


def _pairs(p: ArrayLike, o: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flat finite (probability, outcome 0/1) pairs; checks shapes and ranges."""
    p = np.asarray(p, dtype=float)
    o = np.asarray(o, dtype=float)
    if p.shape != o.shape:
        raise ValueError(f"forecasts and outcomes must have the same shape, got {p.shape} and {o.shape}")
    ok = np.isfinite(p) & np.isfinite(o)
    p, o = p[ok].ravel(), o[ok].ravel()
    if np.any((p < 0) | (p > 1)):
        raise ValueError("forecast probabilities must lie in [0, 1]")
    if np.any((o != 0) & (o != 1)):
        raise ValueError("outcomes must be 0/1 (or booleans)")
    return p, o


def _binned(p: np.ndarray, o: np.ndarray, bins: int | ArrayLike | None):
    """Bin the pairs. ``bins``: number of equal-width bins on [0, 1]; an array of increasing edges; or None
    for one bin per distinct forecast value. Returns centres, counts, sum of forecasts, sum of outcomes."""
    if bins is None:
        centres, idx = np.unique(p, return_inverse=True)
        nb = centres.size
    else:
        if np.ndim(bins) == 0 and int(bins) < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        edges = np.linspace(0.0, 1.0, int(bins) + 1) if np.ndim(bins) == 0 else np.asarray(bins, float)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("bin edges must be an increasing 1-D array of at least two values")
        nb = edges.size - 1
        centres = 0.5 * (edges[:-1] + edges[1:])
        # Right-open bins, the last one closed so that p = 1 falls in it.
        idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, nb - 1)
    counts = np.bincount(idx, minlength=nb)
    sum_p = np.bincount(idx, weights=p, minlength=nb)
    sum_o = np.bincount(idx, weights=o, minlength=nb)
    return centres, counts, sum_p, sum_o


def brier_score(p: ArrayLike, o: ArrayLike) -> float:
    """Brier score ``mean (p - o)^2`` over finite pairs (NaN when there are none).

    Args:
        p: forecast probabilities in [0, 1], any shape.
        o: outcomes, 0/1 or booleans, same shape.
    """
    p, o = _pairs(p, o)
    return float(np.mean((p - o) ** 2)) if p.size else math.nan


def brier_skill_score(p: ArrayLike, o: ArrayLike) -> float:
    """Brier skill score ``1 - BS / (o (1 - o))`` against the sample's climatological base rate ``o``.

    The reference forecasts the base rate every time, whose Brier score is ``o (1 - o)``, the uncertainty
    term. NaN when there are no pairs or the event always or never happened.
    """
    p, o = _pairs(p, o)
    if p.size == 0:
        return math.nan
    uncertainty = o.mean() * (1 - o.mean())
    return float(1.0 - np.mean((p - o) ** 2) / uncertainty) if uncertainty > 0 else math.nan


def brier_decomposition(p: ArrayLike, o: ArrayLike, bins: int | ArrayLike | None = 10) -> BrierDecomposition:
    """Murphy's (1973) partition of the Brier score.

    With ``n_k`` forecasts in bin ``k``, mean forecast ``p_k``, event frequency ``o_k`` and overall
    frequency ``o``, over ``n`` pairs::

        reliability = sum_k n_k (p_k - o_k)^2 / n,  resolution = sum_k n_k (o_k - o)^2 / n,
        uncertainty = o (1 - o)

    ``brier - (reliability - resolution + uncertainty)`` is exactly zero when ``bins=None`` (one bin per
    distinct forecast value) and otherwise equals the within-bin variance of the forecasts minus twice
    their within-bin covariance with the outcomes (Stephenson et al. 2008), small for narrow bins.

    Args:
        p: forecast probabilities in [0, 1].
        o: outcomes 0/1, same shape.
        bins: number of equal-width bins, increasing bin edges, or None (distinct values).

    Returns:
        ``BrierDecomposition`` (all NaN when there are no pairs).
    """
    p, o = _pairs(p, o)
    if p.size == 0:
        return BrierDecomposition(math.nan, math.nan, math.nan, math.nan)
    _, counts, sum_p, sum_o = _binned(p, o, bins)
    n = p.size
    full = counts > 0
    pk, ok_, nk = sum_p[full] / counts[full], sum_o[full] / counts[full], counts[full]
    base = o.mean()
    return BrierDecomposition(
        brier=float(np.mean((p - o) ** 2)),
        reliability=float(np.sum(nk * (pk - ok_) ** 2) / n),
        resolution=float(np.sum(nk * (ok_ - base) ** 2) / n),
        uncertainty=float(base * (1 - base)))


def reliability_diagram(p: ArrayLike, o: ArrayLike, bins: int | ArrayLike | None = 10) -> ReliabilityDiagram:
    """Observed event frequency against forecast probability, per bin.

    Args:
        p, o, bins: as in ``brier_decomposition``.

    Returns:
        ``ReliabilityDiagram`` of arrays of length num_bins.
    """
    p, o = _pairs(p, o)
    centres, counts, sum_p, sum_o = _binned(p, o, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / counts, np.nan)
        freq = np.where(counts > 0, sum_o / counts, np.nan)
    return ReliabilityDiagram(np.asarray(centres, float), mean_p, freq, counts.astype(int))


def _ratio(a: int, b: int) -> float:
    return a / b if b > 0 else math.nan


def hit_and_false_alarm_rates(p: ArrayLike, o: ArrayLike, level: float) -> Contingency:
    """Contingency table and rates of the warning "raised when p >= level".

    Args:
        p: forecast probabilities in [0, 1].
        o: outcomes 0/1, same shape.
        level: the alert's probability level.

    Returns:
        ``Contingency`` with counts, hit rate, false-alarm rate (POFD) and false-alarm ratio (FAR).
    """
    p, o = _pairs(p, o)
    warned, event = p >= level, o == 1
    hits = int(np.sum(warned & event))
    misses = int(np.sum(~warned & event))
    false_alarms = int(np.sum(warned & ~event))
    correct_negatives = int(np.sum(~warned & ~event))
    return Contingency(hits, misses, false_alarms, correct_negatives,
                       hit_rate=_ratio(hits, hits + misses),
                       false_alarm_rate=_ratio(false_alarms, false_alarms + correct_negatives),
                       false_alarm_ratio=_ratio(false_alarms, hits + false_alarms))


def _as_time(t: ArrayLike) -> tuple[np.ndarray, Any]:
    """Times as comparable numbers and the unit of one day: datetime64 -> ns, numbers -> days."""
    a = np.asarray(t)
    if a.dtype.kind == "M":
        return a.astype("datetime64[ns]"), np.timedelta64(86_400_000_000_000, "ns")
    if a.dtype.kind in "iuf" or a.size == 0:
        return a.astype(float), 1.0
    try:
        return a.astype("datetime64[ns]"), np.timedelta64(86_400_000_000_000, "ns")
    except (ValueError, TypeError):
        raise ValueError(f"times must be datetime64 or numbers of days, got dtype {a.dtype}") from None


def verification_pairs(issue_times: ArrayLike, probabilities: ArrayLike, obs_times: ArrayLike,
                       obs_values: ArrayLike, threshold: float, direction: Direction, horizon_days: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forecast-outcome pairs of an alert over a hindcast.

    The event for an issue time ``t`` is "an observation in ``(t, t + horizon_days]`` is strictly beyond
    the threshold". An issue time with no (finite) observation in its window has no outcome and is left
    out, so sparse data (weekly bottles) give fewer pairs, not false negatives. ``t`` should be the time up
    to which observations were assimilated, so that the window holds only observations the forecast had
    not seen.

    Args:
        issue_times: (T,) issue times (datetime64, or floats in days).
        probabilities: (T,) issued probabilities.
        obs_times: (M,) observation times, same kind as ``issue_times``, any order.
        obs_values: (M,) observed values (NaN ignored).
        threshold, direction: as in the alert.
        horizon_days: window length in days.

    Returns:
        (p, o, used): p (K,) probabilities and o (K,) outcomes 0/1 of the K verifiable issue times, and
        used (T,) booleans marking them.
    """
    _check_direction(direction)
    t_issue, day = _as_time(issue_times)
    t_obs, _ = _as_time(obs_times)
    p = np.asarray(probabilities, dtype=float)
    values = np.asarray(obs_values, dtype=float)
    if p.shape != t_issue.shape or p.ndim != 1:
        raise ValueError(f"issue_times and probabilities must be 1-D of equal length, got {t_issue.shape} "
                         f"and {p.shape}")
    if values.shape != t_obs.shape or values.ndim != 1:
        raise ValueError(f"obs_times and obs_values must be 1-D of equal length, got {t_obs.shape} and "
                         f"{values.shape}")
    if (t_issue.dtype.kind == "M") != (t_obs.dtype.kind == "M"):
        raise ValueError("issue_times and obs_times must both be datetimes or both be numbers of days")
    keep = np.isfinite(values)
    order = np.argsort(t_obs[keep], kind="stable")
    t_sorted, v_sorted = t_obs[keep][order], values[keep][order]
    beyond = v_sorted < threshold if direction == "below" else v_sorted > threshold
    cum = np.concatenate([[0], np.cumsum(beyond)])
    # Window (t, t + h]: first index after t, first index after t + h.
    lo = np.searchsorted(t_sorted, t_issue, side="right")
    hi = np.searchsorted(t_sorted, t_issue + horizon_days * day, side="right")
    used = (hi > lo) & np.isfinite(p)
    outcome = (cum[hi] - cum[lo] > 0).astype(float)
    return p[used], outcome[used], used


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def verify_alert(alert, issue_times: ArrayLike, probabilities: ArrayLike, obs_times: ArrayLike,
                 obs_values: ArrayLike, bins: int | ArrayLike | None = 10) -> dict:
    """Verify an alert's issued probabilities against observations over a hindcast.

    Pairs are formed by ``verification_pairs``. Windows of consecutive issue days overlap, so the pairs are
    serially correlated: ``n`` overstates the number of independent cases.

    Args:
        alert: ``twin.config.AlertConfig`` (threshold, direction, horizon_days, probability level).
        issue_times: (T,) issue times of the daily forecasts.
        probabilities: (T,) issued probabilities (``AlertRecord.probability``).
        obs_times, obs_values: (M,) observations of the alert's variable at its site and layer.
        bins: probability bins of the decomposition and reliability diagram (see ``brier_decomposition``).

    Returns:
        JSON-ready dict (undefined scores as None): name, threshold, direction, horizon_days, level,
        n (pairs), n_events, base_rate, brier, reliability, resolution, uncertainty, brier_skill_score
        (``1 - brier / uncertainty``: skill over the sample's climatological base rate), hits, misses,
        false_alarms, correct_negatives, hit_rate, false_alarm_rate (POFD), false_alarm_ratio (FAR), and
        reliability_diagram {bin_centres, mean_forecast, observed_frequency, counts} as lists.
    """
    p, o, _ = verification_pairs(issue_times, probabilities, obs_times, obs_values, alert.threshold,
                                 alert.direction, alert.horizon_days)
    dec = brier_decomposition(p, o, bins)
    table = hit_and_false_alarm_rates(p, o, alert.probability)
    diagram = reliability_diagram(p, o, bins)
    bss = brier_skill_score(p, o)
    return {
        "name": alert.name, "threshold": float(alert.threshold), "direction": alert.direction,
        "horizon_days": int(alert.horizon_days), "level": float(alert.probability),
        "n": int(p.size), "n_events": int(o.sum()),
        "base_rate": _json_float(o.mean()) if p.size else None,
        "brier": _json_float(dec.brier), "reliability": _json_float(dec.reliability),
        "resolution": _json_float(dec.resolution), "uncertainty": _json_float(dec.uncertainty),
        "brier_skill_score": _json_float(bss),
        "hits": table.hits, "misses": table.misses, "false_alarms": table.false_alarms,
        "correct_negatives": table.correct_negatives, "hit_rate": _json_float(table.hit_rate),
        "false_alarm_rate": _json_float(table.false_alarm_rate),
        "false_alarm_ratio": _json_float(table.false_alarm_ratio),
        "reliability_diagram": {
            "bin_centres": [float(c) for c in diagram.bin_centres],
            "mean_forecast": [_json_float(v) for v in diagram.mean_forecast],
            "observed_frequency": [_json_float(v) for v in diagram.observed_frequency],
            "counts": [int(c) for c in diagram.counts]},
    }


def reliability_figure(verification: Mapping, ax=None):
    """Reliability diagram of one alert's verification (from ``verify_alert``).

    Observed frequency against mean forecast per bin, with the diagonal (perfect reliability), the
    base rate and the no-skill line (half-way between them: points beyond it add to the Brier skill
    score), and the number of forecasts per bin as an inset histogram.

    Args:
        verification: the dict returned by ``verify_alert``.
        ax: matplotlib Axes to draw on; a new figure when None (created without pyplot, so no backend
            or global figure state is touched).

    Returns:
        The matplotlib ``Figure``.
    """
    if ax is None:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(4.6, 4.4))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    diagram = verification["reliability_diagram"]
    centres = np.asarray(diagram["bin_centres"], float)
    mean_p = np.array([np.nan if v is None else v for v in diagram["mean_forecast"]], float)
    freq = np.array([np.nan if v is None else v for v in diagram["observed_frequency"]], float)
    counts = np.asarray(diagram["counts"], float)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect reliability")
    base = verification.get("base_rate")
    if base is not None:
        ax.axhline(base, color="tab:green", lw=0.8, ls=":", label=f"base rate {base:.2f}")
        ax.plot([0, 1], [base / 2, (1 + base) / 2], color="tab:orange", lw=0.8, ls=":", label="no skill")
    ok = counts > 0
    ax.plot(mean_p[ok], freq[ok], "o-", color="tab:blue", ms=4, label="alert")
    ax.axvline(verification["level"], color="tab:red", lw=0.8, alpha=0.6, label="alert level")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="forecast probability", ylabel="observed frequency",
           aspect="equal")
    bss = verification.get("brier_skill_score")
    ax.set_title(f"{verification['name']}\nn={verification['n']}, BS={_fmt(verification.get('brier'))}, "
                 f"BSS={_fmt(bss)}", fontsize=8)
    ax.legend(loc="upper left", fontsize=6)
    inset = ax.inset_axes([0.58, 0.06, 0.38, 0.22])
    width = np.diff(centres).min() if centres.size > 1 else 0.1
    inset.bar(centres, counts, width=0.9 * width, color="tab:blue", alpha=0.6)
    if counts.max(initial=0) > 0:
        inset.set_yscale("log")
    inset.set_xlim(0, 1)
    inset.tick_params(labelsize=5)
    inset.set_title("forecasts per bin", fontsize=6)
    return fig


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"

"""Scores of the twin: against a known truth, and against withheld observations with two baselines."""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from emulators.forcing import evaluate_climatology, fit_harmonic_climatology


def gaussian_crps(mean, sd, obs) -> np.ndarray:
    """CRPS of a normal forecast N(mean, sd^2) for observations ``obs`` (Gneiting et al. 2005, eq. 5)."""
    mean, sd, obs = (np.asarray(a, float) for a in (mean, sd, obs))
    sd = np.maximum(sd, 1e-12)
    z = (obs - mean) / sd
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + erf(z / math.sqrt(2)))
    return sd * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def lognormal_interval(mean, sd, z: float) -> tuple[np.ndarray, np.ndarray]:
    """The central interval of +-``z`` log-space sd of the lognormal with this ``mean`` and ``sd`` (moment
    matched: s^2 = log(1 + sd^2 / mean^2), median mean exp(-s^2 / 2)); NaN where mean <= 0."""
    mean, sd = np.asarray(mean, float), np.asarray(sd, float)
    positive = mean > 0
    m = np.where(positive, mean, np.nan)
    s2 = np.log1p((sd / m) ** 2)
    median = m * np.exp(-0.5 * s2)
    return median * np.exp(-z * np.sqrt(s2)), median * np.exp(z * np.sqrt(s2))


def _finite_differences(a, b) -> np.ndarray:
    d = np.asarray(a, float) - np.asarray(b, float)
    return d[np.isfinite(d)]


def rmse(a, b) -> float:
    d = _finite_differences(a, b)
    return float(np.sqrt(np.mean(d**2))) if d.size else float("nan")


def mean_error(a, b) -> float:
    """Mean of ``a - b`` over the finite differences (the bias of ``a`` against ``b``), NaN if none."""
    d = _finite_differences(a, b)
    return float(np.mean(d)) if d.size else float("nan")


BURN_IN_CYCLES = 30  # the first cycles, while the ensemble forgets its initial state, are not scored


def truth_scores(analysis_mean: np.ndarray, analysis_sd: np.ndarray, truth: np.ndarray,
                 burn_in: int = BURN_IN_CYCLES) -> list[dict]:
    """Per state element: RMSE and bias (mean error) of the analysis mean, mean spread and spread-skill ratio,
    CRPS.

    Args:
        analysis_mean, analysis_sd, truth: (T, n) on the same times.
    """
    sl = slice(burn_in, None)
    out = []
    for i in range(truth.shape[1]):
        r = rmse(analysis_mean[sl, i], truth[sl, i])
        spread = float(np.sqrt(np.mean(analysis_sd[sl, i] ** 2)))
        out.append({"rmse": r, "bias": mean_error(analysis_mean[sl, i], truth[sl, i]), "spread": spread,
                    "spread_skill": spread / r if r > 0 else float("nan"),
                    "crps": float(np.mean(gaussian_crps(analysis_mean[sl, i], analysis_sd[sl, i], truth[sl, i])))})
    return out


def analysis_at_observations(analysis_mean: np.ndarray, truth: np.ndarray, cycles: np.ndarray,
                             state_index: np.ndarray, burn_in: int = BURN_IN_CYCLES) -> dict[int, dict]:
    """Analysis RMSE against the truth on the cycles where the element had an assimilated observation
    (after the burn-in), per state element: {index: {"rmse_at_observations", "n_at_observations"}}.

    The analysis error to set beside the observation error: where a value was assimilated, the analysis
    combines it with the forecast and should be closer to the truth than it. ``truth_scores``' RMSE runs over
    every day, most of them (for weekly bottles) up to six days of forecast after the last sample.
    """
    out = {}
    for i in np.unique(state_index):
        c = np.unique(cycles[(state_index == i) & (cycles >= burn_in)])
        if c.size:
            out[int(i)] = {"rmse_at_observations": rmse(analysis_mean[c, i], truth[c, i]),
                           "n_at_observations": int(c.size)}
    return out


def persistence_forecast(times: np.ndarray, values: np.ndarray, train: np.ndarray, targets: np.ndarray
                         ) -> np.ndarray:
    """For each target index: the last training value strictly before its time (NaN when none)."""
    t_train = times[train]
    order = np.argsort(t_train, kind="stable")
    t_sorted, v_sorted = t_train[order], values[train][order]
    pos = np.searchsorted(t_sorted, times[targets], side="left") - 1
    return np.where(pos >= 0, v_sorted[np.clip(pos, 0, None)], np.nan) if t_sorted.size else \
        np.full(targets.size, np.nan)


def climatology_forecast(times: np.ndarray, values: np.ndarray, train: np.ndarray, targets: np.ndarray,
                         n_harmonics: int = 2) -> np.ndarray:
    """Day-of-year harmonic climatology of the training values, at the target times."""
    days = (times - np.datetime64("2000-01-01", "ns")) / np.timedelta64(1, "D")
    if train.sum() < 2 * n_harmonics + 2:
        return np.full(targets.size, np.nan)
    clim = fit_harmonic_climatology(days[train], values[train], n_harmonics=n_harmonics)
    return evaluate_climatology(clim, days[targets])

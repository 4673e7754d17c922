"""Qualifying the data: IOOS QARTOD tests per series, aggregated worst-wins into the canonical flag.

The tests themselves are ioos_qc's (gross range, climatology, spike, rate of change, flat line); this
module picks the ones that fit each series, feeds them thresholds from the config, keeps every test's
result as its own variable (``qc_<test>``, QARTOD scale, 2 where the test did not run) and aggregates.
Spike, rate of change and flat line only run on high-frequency series, split into segments at gaps
longer than three median intervals so that a gap is never read as a spike. Below-detection (censored)
and missing values are not tested: censored is not bad.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from ioos_qc import qartod

from twin import flags
from twin.config import FlatLine, GrossRange, QcConfig, RateOfChange, SeasonalSpan, Spike
from twin.observations import OBS_DIM

QC_TESTS = ("gross_range", "climatology", "spike", "rate_of_change", "flat_line", "reference_drift")

# Physically possible ranges in canonical units (fail) and the range of coastal values (suspect).
BUILTIN_GROSS_RANGE: dict[str, GrossRange] = {
    "temperature": GrossRange(fail_span=(-2.5, 40.0), suspect_span=(-2.0, 35.0)),
    "salinity": GrossRange(fail_span=(0.0, 42.0), suspect_span=(0.0, 41.0)),
    "oxygen": GrossRange(fail_span=(0.0, 600.0), suspect_span=(0.0, 450.0)),
    "oxygen_saturation": GrossRange(fail_span=(0.0, 250.0), suspect_span=(20.0, 180.0)),
    "nitrate": GrossRange(fail_span=(0.0, 500.0), suspect_span=(0.0, 150.0)),
    "nitrite": GrossRange(fail_span=(0.0, 50.0), suspect_span=(0.0, 10.0)),
    "nitrate_nitrite": GrossRange(fail_span=(0.0, 500.0), suspect_span=(0.0, 150.0)),
    "ammonium": GrossRange(fail_span=(0.0, 200.0), suspect_span=(0.0, 50.0)),
    "phosphate": GrossRange(fail_span=(0.0, 30.0), suspect_span=(0.0, 5.0)),
    "silicate": GrossRange(fail_span=(0.0, 300.0), suspect_span=(0.0, 100.0)),
    "chlorophyll": GrossRange(fail_span=(0.0, 300.0), suspect_span=(0.0, 60.0)),
    "turbidity": GrossRange(fail_span=(0.0, 4000.0), suspect_span=(0.0, 500.0)),
    "par": GrossRange(fail_span=(0.0, 3000.0), suspect_span=(0.0, 2500.0)),
    "ph": GrossRange(fail_span=(6.0, 9.5), suspect_span=(7.5, 8.6)),
    "air_temperature": GrossRange(fail_span=(-40.0, 50.0)),
    "air_pressure": GrossRange(fail_span=(850.0, 1085.0)),
    "relative_humidity": GrossRange(fail_span=(0.0, 100.5)),
    "wind_speed": GrossRange(fail_span=(0.0, 60.0)),
    "wind_direction": GrossRange(fail_span=(0.0, 360.0)),
}
BUILTIN_SPIKE: dict[str, Spike] = {
    "temperature": Spike(suspect_threshold=1.0, fail_threshold=3.0),
    "salinity": Spike(suspect_threshold=0.5, fail_threshold=2.0),
    "oxygen": Spike(suspect_threshold=25.0, fail_threshold=60.0),
    "chlorophyll": Spike(suspect_threshold=5.0, fail_threshold=15.0),
    "fluorescence": Spike(suspect_threshold=5.0, fail_threshold=15.0),
}
BUILTIN_RATE_OF_CHANGE: dict[str, RateOfChange] = {
    "temperature": RateOfChange(threshold_per_hour=3.0),
    "salinity": RateOfChange(threshold_per_hour=3.0),
}
BUILTIN_FLAT_LINE: dict[str, FlatLine] = {
    "temperature": FlatLine(tolerance=1e-4, suspect_hours=6.0, fail_hours=24.0),
    "salinity": FlatLine(tolerance=1e-4, suspect_hours=6.0, fail_hours=24.0),
}


def _thresholds(config: QcConfig, test: str, variable: str):
    own = getattr(config, test).get(variable)
    if own is not None or not config.use_builtin_defaults:
        return own
    builtin = {"gross_range": BUILTIN_GROSS_RANGE, "spike": BUILTIN_SPIKE,
               "rate_of_change": BUILTIN_RATE_OF_CHANGE, "flat_line": BUILTIN_FLAT_LINE}.get(test, {})
    return builtin.get(variable)


def _flags(masked) -> np.ndarray:
    # ioos_qc returns a masked array; a masked entry means the test could not judge it.
    return np.ma.filled(np.ma.asarray(masked), flags.NOT_EVALUATED).astype(np.int8)


def _segments(seconds: np.ndarray, max_interval_s: float) -> list[slice]:
    if seconds.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(seconds) > max_interval_s) + 1
    edges = np.concatenate([[0], breaks, [seconds.size]])
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _climatology(spans: tuple[SeasonalSpan, ...], values, times) -> np.ndarray:
    months = pd.DatetimeIndex(times).month.to_numpy()
    out = np.full(values.shape, flags.NOT_EVALUATED, np.int8)
    for s in spans:
        first, last = s.months
        sel = (months >= first) & (months <= last) if first <= last else (months >= first) | (months <= last)
        lo, hi = s.span
        out[sel] = np.where((values[sel] < lo) | (values[sel] > hi), flags.SUSPECT, flags.GOOD)
    return out


def run_series_tests(variable: str, values: np.ndarray, times: np.ndarray, config: QcConfig) -> dict:
    """QARTOD results for one time-sorted series of usable values, one int8 array per test."""
    n = values.size
    result = {t: np.full(n, flags.NOT_EVALUATED, np.int8) for t in QC_TESTS}
    if n == 0:
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ioos_qc warns on masked input; we mask on purpose
        gross = _thresholds(config, "gross_range", variable)
        if gross is not None:
            result["gross_range"] = _flags(qartod.gross_range_test(
                values, fail_span=gross.fail_span, suspect_span=gross.suspect_span))
        clim = config.climatology.get(variable)
        if clim:
            result["climatology"] = _climatology(clim, values, times)
        seconds = times.astype("datetime64[s]").astype(np.int64).astype(float)
        if n < 3:
            return result
        median_dt = float(np.median(np.diff(seconds)))
        if median_dt <= 0 or median_dt > config.high_frequency_max_interval_hours * 3600.0:
            return result
        spike = _thresholds(config, "spike", variable)
        roc = _thresholds(config, "rate_of_change", variable)
        flat = _thresholds(config, "flat_line", variable)
        for seg in _segments(seconds, 3.0 * median_dt):
            v, t = values[seg], times[seg]
            if v.size < 3:
                continue
            if spike is not None:
                result["spike"][seg] = _flags(qartod.spike_test(
                    v, suspect_threshold=spike.suspect_threshold, fail_threshold=spike.fail_threshold,
                    method="differential"))  # "average" also flags both neighbours of a spike
            if roc is not None:
                result["rate_of_change"][seg] = _flags(qartod.rate_of_change_test(
                    v, t, threshold=roc.threshold_per_hour / 3600.0))
            if flat is not None:
                seg_dt = float(np.median(np.diff(seconds[seg])))
                if flat.suspect_hours * 3600.0 > 2 * seg_dt:
                    result["flat_line"][seg] = _flags(qartod.flat_line_test(
                        v, t, suspect_threshold=int(flat.suspect_hours * 3600),
                        fail_threshold=int(flat.fail_hours * 3600), tolerance=flat.tolerance))
    # The first points of a spike window cannot be judged; ioos_qc marks them good, keep that.
    return result


def apply_qc(table: xr.Dataset, config: QcConfig | None = None, progress: bool = False,
             only_series_of: np.ndarray | None = None) -> xr.Dataset:
    """Run the QARTOD tests on every series and aggregate worst-wins into ``qc``.

    Returns the table with ``qc`` updated, ``qc_native`` (the flag from the native scale alone) and one
    ``qc_<test>`` variable per test. A series is one (source, site, layer_code, depth, variable).
    ``only_series_of`` (bool per row): run the series tests only on the series holding one of these rows
    (an operational cycle requalifying new rows; other rows' series results are then not evaluated).
    """
    config = config or QcConfig()
    n = table.sizes[OBS_DIM]
    qc_native = table["qc"].values.astype(np.int8)
    results = {t: np.full(n, flags.NOT_EVALUATED, np.int8) for t in QC_TESTS}
    usable = ~table["censored"].values & np.isin(qc_native, (flags.GOOD, flags.NOT_EVALUATED, flags.SUSPECT))
    keys = pd.DataFrame({
        "source": table["source"].values.astype(str), "site": table["site"].values.astype(str),
        "layer_code": table["layer_code"].values.astype(str),
        "depth": np.nan_to_num(table["depth"].values, nan=-1.0),
        "variable": table["variable"].values.astype(str),
    })[usable]
    times_all = table["time"].values
    values_all = table["value"].values
    groups = keys.groupby(list(keys.columns), sort=False).indices
    iterator = groups.items()
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=len(groups), desc="qc", unit="series")
    usable_idx = np.flatnonzero(usable)
    for key, local in iterator:
        idx = usable_idx[local]
        if only_series_of is not None and not only_series_of[idx].any():
            continue
        order = np.argsort(times_all[idx], kind="stable")
        idx = idx[order]
        res = run_series_tests(key[-1], values_all[idx], times_all[idx], config)
        for t in QC_TESTS:
            results[t][idx] = res[t]
    results["reference_drift"] = reference_drift_test(table, usable)
    aggregated = flags.worst(qc_native, *results.values())
    # A test that did not run leaves the native flag as it was (worst() ranks not-evaluated lowest).
    out = table.assign(qc=(OBS_DIM, aggregated), qc_native=(OBS_DIM, qc_native))
    for t, r in results.items():
        out[f"qc_{t}"] = (OBS_DIM, r)
        out[f"qc_{t}"].attrs.update(long_name=f"QARTOD {t.replace('_', ' ')} test flag",
                                    flag_values=np.array([1, 2, 3, 4, 9], np.int8),
                                    flag_meanings="pass not_evaluated suspect fail missing")
    return out


def qc_without(table: xr.Dataset, tests: tuple[str, ...]) -> np.ndarray:
    """(n,) the aggregated flag as if ``tests`` had not run: worst of the native flag and the other tests'
    (``qc`` itself where the table has no per-test flags, i.e. was not qualified here)."""
    if "qc_native" not in table or any(f"qc_{t}" not in table for t in QC_TESTS):
        return table["qc"].values
    others = [table[f"qc_{t}"].values for t in QC_TESTS if t not in tests]
    return flags.worst(table["qc_native"].values, *others)


def reference_drift_test(table: xr.Dataset, usable: np.ndarray | None = None, *, window_hours: float = 3.0,
                         min_pairs: int = 8, high_frequency_hours: float = 6.0) -> np.ndarray:
    """Drift of a high-frequency sensor against reference samples of the same quantity (buoy vs bottles).

    For every (site, layer, variable) seen by a high-frequency source (median interval under
    ``high_frequency_hours``) and by another, sparser source, the sensor's values within ``window_hours`` of
    each reference sample are averaged and differenced with it; a straight line d(t) = a + b t is fitted by
    least squares. Where the fit is significant (slope or mean beyond 3 standard errors), the sensor's values
    whose fitted drift exceeds their observation error are flagged suspect, and bad beyond three times it.
    This is how a fouling oxygen or fluorescence sensor is caught: the discrete samples are the reference.

    Returns:
        (n,) int8 flags on the QARTOD scale (2 where the test does not apply).
    """
    n = table.sizes[OBS_DIM]
    out = np.full(n, flags.NOT_EVALUATED, np.int8)
    if n == 0:
        return out
    if usable is None:
        usable = np.isin(table["qc"].values, flags.USABLE_QC) & ~table["censored"].values
    frame = pd.DataFrame({
        "site": table["site"].values.astype(str), "layer": table["layer"].values.astype(str),
        "variable": table["variable"].values.astype(str), "source": table["source"].values.astype(str),
        "t": (table["time"].values - np.datetime64("1970-01-01", "ns")) / np.timedelta64(1, "D"),
        "value": table["value"].values, "err": table["error_sd"].values})[usable & np.isfinite(table["value"].values)]
    window = window_hours / 24.0
    for (_, _, _), g in frame.groupby(["site", "layer", "variable"], sort=False):
        by_source = {src: gs.sort_values("t") for src, gs in g.groupby("source", sort=False)}
        if len(by_source) < 2:
            continue
        interval = {src: float(np.median(np.diff(gs["t"].to_numpy()))) if len(gs) > 2 else np.inf
                    for src, gs in by_source.items()}
        high = [s for s, dt in interval.items() if dt * 24 < high_frequency_hours]
        refs = [s for s in by_source if s not in high]
        if not high or not refs:
            continue
        ref = pd.concat([by_source[s] for s in refs])
        for src in high:
            hf = by_source[src]
            ht, hv = hf["t"].to_numpy(), hf["value"].to_numpy()
            lo = np.searchsorted(ht, ref["t"].to_numpy() - window, side="left")
            hi = np.searchsorted(ht, ref["t"].to_numpy() + window, side="right")
            csum = np.concatenate([[0.0], np.cumsum(hv)])
            count = hi - lo
            has = count > 0
            if has.sum() < min_pairs:
                continue
            t_pair = ref["t"].to_numpy()[has]
            diff = (csum[hi[has]] - csum[lo[has]]) / count[has] - ref["value"].to_numpy()[has]
            t0 = t_pair.mean()
            design = np.stack([np.ones_like(t_pair), t_pair - t0], axis=1)
            coef, *_ = np.linalg.lstsq(design, diff, rcond=None)
            resid = diff - design @ coef
            dof = max(len(diff) - 2, 1)
            s2 = float(resid @ resid) / dof
            cov = s2 * np.linalg.inv(design.T @ design)
            se_a, se_b = np.sqrt(np.diag(cov))
            significant = abs(coef[1]) > 3 * se_b or abs(coef[0]) > 3 * se_a
            rows = hf.index.to_numpy()
            if not significant:
                out[rows] = flags.GOOD
                continue
            drift = np.abs(coef[0] + coef[1] * (ht - t0))
            err = hf["err"].to_numpy()
            out[rows] = np.where(drift > 3 * err, flags.BAD, np.where(drift > err, flags.SUSPECT, flags.GOOD))
    return out


def plot_qc(table: xr.Dataset, directory: str | Path) -> list[Path]:
    """One PNG per (site, variable): values over time, layers as colours, suspect and bad marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({
        "site": table["site"].values.astype(str), "variable": table["variable"].values.astype(str),
        "layer": [c or l or "" for c, l in zip(table["layer_code"].values.astype(str),
                                                table["layer"].values.astype(str))],
        "time": table["time"].values, "value": table["value"].values, "qc": table["qc"].values,
        "censored": table["censored"].values,
    })
    df = df[df["qc"] != flags.MISSING]
    written = []
    for (site, variable), g in df.groupby(["site", "variable"], sort=True):
        fig, ax = plt.subplots(figsize=(10, 3.2))
        for layer, gl in g.groupby("layer"):
            ok = gl[gl["qc"].isin([flags.GOOD, flags.NOT_EVALUATED]) & ~gl["censored"]]
            ax.plot(ok["time"], ok["value"], ".", ms=2.5, label=f"{layer or 'all'}")
        cens = g[g["censored"]]
        sus = g[g["qc"] == flags.SUSPECT]
        bad = g[g["qc"] == flags.BAD]
        if len(cens):
            ax.plot(cens["time"], cens["value"], "v", ms=4, color="grey", label="below detection")
        if len(sus):
            ax.plot(sus["time"], sus["value"], "o", ms=5, mfc="none", color="orange", label="suspect")
        if len(bad):
            ax.plot(bad["time"], bad["value"], "x", ms=5, color="red", label="bad")
        ax.set_title(f"{site}: {variable}")
        ax.set_ylabel(variable)
        ax.legend(loc="upper right", fontsize=7, ncol=3)
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{site}_{variable}")
        path = directory / f"qc_{safe}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written

"""Data summary: per site, layer and variable, what is there and how good it is.

Counting rules (documented for `twin data summary`):
- good: qc 1 and not censored; censored: below detection (qc 1, censored); suspect: qc 3; bad: qc 4;
  missing: qc 9 plus qc 2 (not evaluated, e.g. SOMLIT 8 "not yet flagged"), which the SOMLIT scale groups
  with missing; ``count_not_evaluated`` reports the qc 2 part separately.
- first, last, median interval and longest gap use the times of rows that carry a value (qc != 9).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from twin import flags

SUMMARY_FIELDS = ("site", "depth", "variable", "count_good", "count_suspect", "count_bad",
                  "count_censored", "count_missing", "first", "last", "median_interval_days",
                  "longest_gap_days")


def depth_label(layer_code: str, depth: float) -> str:
    """The layer code as the source writes it, else the depth in metres, else ''."""
    if layer_code:
        return layer_code
    if np.isfinite(depth):
        return f"{depth:g}"
    return ""


def _iso(t) -> str | None:
    return None if pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def summarise(table: xr.Dataset) -> list[dict]:
    """One dict per (site, depth label, variable), sorted by site, depth label, variable."""
    if table.sizes.get("obs", 0) == 0:
        return []
    df = pd.DataFrame({
        "site": table["site"].values.astype(str),
        "layer_code": table["layer_code"].values.astype(str),
        "depth_m": table["depth"].values,
        "variable": table["variable"].values.astype(str),
        "qc": table["qc"].values.astype(int),
        "censored": table["censored"].values.astype(bool),
        "time": table["time"].values,
    })
    depth_text = {d: depth_label("", d) for d in np.unique(df["depth_m"].dropna())}
    df["depth"] = np.where(df["layer_code"] != "", df["layer_code"],
                           df["depth_m"].map(depth_text).astype(object).fillna(""))
    qc, cens = df["qc"], df["censored"]
    df["is_good"] = (qc == flags.GOOD) & ~cens
    df["is_censored"] = (qc == flags.GOOD) & cens
    df["is_suspect"] = qc == flags.SUSPECT
    df["is_bad"] = qc == flags.BAD
    df["is_not_evaluated"] = qc == flags.NOT_EVALUATED
    df["is_missing"] = (qc == flags.MISSING) | df["is_not_evaluated"]
    counts = df.groupby(["site", "depth", "variable"], sort=True)[
        ["is_good", "is_suspect", "is_bad", "is_censored", "is_missing", "is_not_evaluated"]].sum()
    present = df[qc != flags.MISSING]
    times_by_series = {key: np.unique(t.to_numpy())
                       for key, t in present.groupby(["site", "depth", "variable"], sort=False)["time"]}
    empty = np.array([], "datetime64[ns]")
    out = []
    for (site, depth, variable), row in counts.iterrows():
        times = times_by_series.get((site, depth, variable), empty)
        if times.size >= 2:
            gaps = np.diff(times).astype("timedelta64[s]").astype(float) / 86400.0
            median_interval, longest_gap = float(np.median(gaps)), float(gaps.max())
        else:
            median_interval = longest_gap = None
        out.append({
            "site": site, "depth": depth, "variable": variable,
            "count_good": int(row["is_good"]), "count_suspect": int(row["is_suspect"]),
            "count_bad": int(row["is_bad"]), "count_censored": int(row["is_censored"]),
            "count_missing": int(row["is_missing"]),
            "count_not_evaluated": int(row["is_not_evaluated"]),
            "first": _iso(times[0]) if times.size else None,
            "last": _iso(times[-1]) if times.size else None,
            "median_interval_days": None if median_interval is None else round(median_interval, 6),
            "longest_gap_days": None if longest_gap is None else round(longest_gap, 6),
        })
    return out


def format_summary(series: list[dict]) -> str:
    """Human-readable table of ``summarise`` output."""
    if not series:
        return "no observations"
    header = (f"{'site':<12} {'depth':<7} {'variable':<18} {'good':>7} {'susp':>6} {'bad':>6} "
              f"{'cens':>6} {'miss':>6} {'(n.e.)':>6}  {'first':<10} {'last':<10} {'med.int(d)':>10} {'max.gap(d)':>10}")
    lines = [header, "-" * len(header)]
    for s in series:
        fmt = lambda v: "-" if v is None else f"{v:.3g}"
        lines.append(
            f"{s['site'][:12]:<12} {s['depth'][:7]:<7} {s['variable'][:18]:<18} {s['count_good']:>7} "
            f"{s['count_suspect']:>6} {s['count_bad']:>6} {s['count_censored']:>6} {s['count_missing']:>6} {s['count_not_evaluated']:>6}  "
            f"{(s['first'] or '-')[:10]:<10} {(s['last'] or '-')[:10]:<10} "
            f"{fmt(s['median_interval_days']):>10} {fmt(s['longest_gap_days']):>10}")
    lines.append("miss includes (n.e.), values never evaluated (e.g. SOMLIT flag 8, or a source without flags)")
    return "\n".join(lines)

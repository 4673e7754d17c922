"""Ingestion benchmark: our readers against a plain ``pandas.read_csv`` of the same files, in one run.

Reads every data file of ../shared/data (SOMLIT, COAST-HF, NERRS SWMP; the SWMP `doc/` tables are
documentation, not data, and are not read) with the twin's readers, which parse, map flags, convert units,
check sentinels and build the canonical table, and with bare ``pandas.read_csv``, which only parses.
Prints rows per second of both and their ratio; the last line is JSON.

Usage: python bench/ingest.py [--data ../shared/data] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twin.readers import read_observations  # noqa: E402

CTD_MAPPING = REPO / "configs" / "mappings" / "somlit_ctd_banyuls.yaml"


def data_files(root: Path) -> list[tuple[Path, str, dict]]:
    """(path, format, reader options) of every data file under ``root``."""
    files: list[tuple[Path, str, dict]] = []
    somlit = root / "somlit-med"
    files.append((somlit / "HYDRO.csv", "somlit", {}))
    if CTD_MAPPING.exists():
        files.append((somlit / "CTD_BANYULS.csv", "csv", {"mapping": str(CTD_MAPPING)}))
    files += [(p, "coasthf", {}) for p in sorted((root / "coast-hf-sample").glob("*.csv"))]
    swmp = root / "swmp-apalachicola"
    files += [(p, "swmp", {}) for p in sorted(swmp.glob("*.csv*"))]
    files += [(p, "swmp", {}) for p in sorted((swmp / "raw_cdmo_nut").glob("*.csv"))]
    return [f for f in files if f[0].exists()]


def time_ours(files) -> tuple[float, int, int]:
    start = time.perf_counter()
    rows = obs = 0
    for path, fmt, options in files:
        table = read_observations(path, fmt, **options)
        obs += table.sizes["obs"]
        rows += int(table["line"].to_series().nunique())
    return time.perf_counter() - start, rows, obs


def time_pandas(files) -> tuple[float, int]:
    start = time.perf_counter()
    rows = 0
    for path, _, _ in files:
        rows += len(pd.read_csv(path, low_memory=False))
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs for each side")
    args = parser.parse_args()
    root = Path(args.data)
    if not root.exists():
        sys.exit(f"bench/ingest.py: data folder {root} not found (pass --data)")
    files = data_files(root)
    print(f"{len(files)} files under {root}")
    time_ours(files[:1]), time_pandas(files[:1])  # warm imports and caches for both sides
    ours = min((time_ours(files) for _ in range(args.repeat)), key=lambda r: r[0])
    theirs = min((time_pandas(files) for _ in range(args.repeat)), key=lambda r: r[0])
    seconds, rows, obs = ours
    seconds_pd, rows_pd = theirs
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "files": len(files), "rows": rows, "rows_pandas": rows_pd, "observations": obs,
        "seconds": round(seconds, 4), "seconds_pandas": round(seconds_pd, 4),
        "rows_per_s": round(rows / seconds, 1), "rows_per_s_pandas": round(rows_pd / seconds_pd, 1),
        "ratio": round((rows / seconds) / (rows_pd / seconds_pd), 4), "peak_rss_mb": round(peak_mb, 1),
    }
    print(f"twin readers : {rows:>8} rows -> {obs} observations in {seconds:.3f} s "
          f"({result['rows_per_s']:.0f} rows/s)")
    print(f"pandas only  : {rows_pd:>8} rows in {seconds_pd:.3f} s ({result['rows_per_s_pandas']:.0f} rows/s)")
    print(f"ratio (ours / pandas) = {result['ratio']:.3f}; peak RSS {peak_mb:.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

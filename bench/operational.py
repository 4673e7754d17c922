"""Operational cycle benchmark: wall time of each ``twin cycle`` call, one process per day as a scheduler runs it.

Writes a twin experiment delivered day by day (``twin.osse.write_daily_experiment``), creates a store with the
demo emulator, then calls ``twin cycle STORE --data DAY`` in a fresh process for each day and times it
(process start, imports, ingestion, QC, the day's analysis, a 7-day forecast, alerts, atomic writes). The
first call exports the window and forecast programs into the store (``twin.programs``) and fills its
compilation cache; the goal is under 5 s per call after it on 2 CPU cores. Baseline in the same run: the same
cycles called in one warm process, to show what a process start costs; both stores must end with the same
ensemble. Last line JSON.

With ``--augmented`` the store also estimates what the demo does besides the state (``configs/demo.yaml``: the
buoy oxygen sensor's offset, the surface Chl:N error, the growth and grazing rates), and each call also reports
them (``twin.operational.augmented_status``, which reloads the emulator for the parameters' ranges).

Usage: python bench/operational.py [--days 20] [--members 32] [--augmented]
       (--days 100: the issue's operational run)
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from twin.config import load_config, parse_config  # noqa: E402
from twin.hindcast import bottle_errors  # noqa: E402
from twin.operational import init_store, run_cycle  # noqa: E402
from twin.osse import BUOY_ERROR, ExperimentSpec, write_daily_experiment  # noqa: E402


def demo_augmented() -> tuple[dict, dict]:
    """The demo's estimated elements, as ``configs/demo.yaml`` sets them: (the buoy's offsets, the model's
    ``estimate_parameters`` and ``bias``)."""
    demo = load_config(REPO / "configs" / "demo.yaml").model_dump(mode="json")
    model = {k: demo["model"][k] for k in ("estimate_parameters", "bias")}
    return demo["experiment"]["buoy_offsets"], model


def config(incoming: Path, members: int, augmented: bool = False) -> dict:
    offsets, model = demo_augmented() if augmented else ({}, {})
    buoy_sd = {k: BUOY_ERROR[k] for k in ("temperature", "salinity", "oxygen", "fluorescence")}
    buoy_sd["chlorophyll"] = BUOY_ERROR["fluorescence"]
    return {"name": "bench-ops",
            "sites": [{"name": "SYNTH-B", "latitude": 43.68, "longitude": 7.32, "aliases": ["SYNTH01"],
                       "bottom_depth_m": 60.0}],
            "sources": [{"path": str(incoming / "*" / "somlit.csv"), "format": "somlit", **bottle_errors()},
                        {"path": str(incoming / "*" / "coasthf.csv"), "format": "coasthf", "error_sd": buoy_sd,
                         "fluorescence_calibration": {"SYNTH01": [1.0, 0.0]},
                         **({"name": "buoy", "offsets": offsets} if augmented else {})}],
            "emulator": {"checkpoint": str(REPO / "configs" / "emulators" / "demo")},
            "filter": {"members": members},
            "hindcast": {"start": "2016-01-01", "forcing_mode": "causal"},
            "alerts": [{"variable": "oxygen", "site": "SYNTH-B", "layer": "bottom", "threshold": 200.0,
                        "direction": "below", "probability": 0.3}],
            **({"model": model} if augmented else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--augmented", action="store_true", help="estimate the demo's offset, Chl:N error and rates")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    spec = ExperimentSpec(site="SYNTH-B", platform="SYNTH01", latitude=43.68, longitude=7.32,
                          start=np.datetime64("2016-01-01"), num_days=args.days + 2, seed=5, buoy_gap_fraction=0.0)
    _, days = write_daily_experiment(work / "all", spec)
    days = days[:args.days]
    (work / "incoming").mkdir()
    store = work / "store"
    init_store(store, parse_config(config(work / "incoming", args.members, args.augmented)), quiet=True)
    walls = []
    for day, paths in days:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "twin.cli", "cycle", str(store), "--data", str(paths[0].parent),
                               "--quiet"], capture_output=True, text=True, cwd=REPO)
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"twin cycle failed on {day}:\n{proc.stderr[-2000:]}")
        print(f"{day}: {walls[-1]:.2f} s  {proc.stdout.strip()[:100]}", file=sys.stderr, flush=True)
    # Baseline: the same kind of cycle in this (warm) process, on a copy fed the same days.
    store2 = work / "store-inproc"
    init_store(store2, parse_config(config(work / "incoming", args.members, args.augmented)), quiet=True)
    inproc = []
    for _, paths in days:
        t0 = time.perf_counter()
        run_cycle(store2, data=(str(paths[0].parent),), quiet=True)
        inproc.append(time.perf_counter() - t0)
    after_first = np.asarray(walls[1:])
    from twin.operational import load_state
    from twin.store import Store
    final = [np.asarray(load_state(Store(s), Store(s).manifest())[0]) for s in (store, store2)]
    result = {"cycles": len(walls), "first_call_seconds": walls[0],
              "median_seconds_after_first": float(np.median(after_first)),
              "max_seconds_after_first": float(after_first.max()),
              "median_seconds_in_process": float(np.median(inproc[1:])),
              "process_overhead_ratio": float(np.median(after_first) / np.median(inproc[1:])),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
              "goal_seconds": 5.0, "cycles_over_goal_after_first": int(np.sum(after_first >= 5.0)),
              "final_members_max_abs_diff_process_vs_in_process": float(np.max(np.abs(final[0] - final[1]))),
              "members": args.members, "augmented": args.augmented}
    print(f"twin cycle, one process per day: first {walls[0]:.1f} s, then median "
          f"{result['median_seconds_after_first']:.2f} s (max {result['max_seconds_after_first']:.2f} s); "
          f"in-process median {result['median_seconds_in_process']:.2f} s; "
          f"peak RSS of a cycle process {result['peak_rss_mb']:.0f} MiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

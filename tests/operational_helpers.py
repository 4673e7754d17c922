"""Helpers shared by the operational tests: a daily twin experiment, a store's config, feeding it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.config import parse_config
from twin.hindcast import bottle_errors
from twin.operational import init_store, run_cycle
from twin.osse import BUOY_ERROR
from twin.store import Store

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "configs" / "emulators" / "demo"
DAYS = 101            # files for days 1..100 (the buoy starts on day 1): 100 daily cycle calls
CALLS = 100
START = "2016-01-01"


def _config(incoming: Path, *, end: str | None = None) -> dict:
    buoy_sd = {k: BUOY_ERROR[k] for k in ("temperature", "salinity", "oxygen", "fluorescence")}
    buoy_sd["chlorophyll"] = BUOY_ERROR["fluorescence"] * 2.0
    return {
        "name": "ops-osse",
        "sites": [{"name": "SYNTH-B", "latitude": 43.68, "longitude": 7.32, "aliases": ["SYNTH01"],
                   "bottom_depth_m": 60.0}],
        "sources": [{"path": str(incoming / "*" / "somlit.csv"), "format": "somlit", **bottle_errors()},
                    # The buoy's oxygen offset is estimated (its optode drifts): operations carry it too.
                    {"path": str(incoming / "*" / "coasthf.csv"), "format": "coasthf", "error_sd": buoy_sd,
                     "fluorescence_calibration": {"SYNTH01": [2.0, 0.0]}, "name": "buoy",
                     "offsets": {"oxygen": {"sd": 0.05, "timescale_days": 3650}}}],
        "emulator": {"checkpoint": str(CHECKPOINT)},
        "filter": {"members": 16, "inflation": 1.05},
        "hindcast": {"start": START, "end": end, "forcing_mode": "causal", "forecast_days": 5},
        "alerts": [{"variable": "chlorophyll", "site": "SYNTH-B", "threshold": 1.0, "direction": "above",
                    "horizon_days": 5, "probability": 0.3}],
    }


def _new_store(root: Path, name: str, days=None) -> Path:
    store = root / name
    (root / f"{name}-incoming").mkdir(exist_ok=True)
    init_store(store, parse_config(_config(root / f"{name}-incoming")), quiet=True)
    return store


def _feed(store: Path, days, first: int, count: int) -> list[dict]:
    return [run_cycle(store, data=(str(paths[0].parent),), quiet=True) for _, paths in days[first:first + count]]


def _day_number(day: str) -> int:
    return int((np.datetime64(day) - np.datetime64(START)) / np.timedelta64(1, "D"))


def _members(store: Path) -> np.ndarray:
    s = Store(store)
    return s.load_arrays(s.manifest()["files"]["state"])["members"]

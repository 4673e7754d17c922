"""Operational twin cycles under SIGKILL fault injection (issue 6). Apart from ``test_operational.py`` so that
the suite's two workers (pytest-xdist, one file each) share the long trials with the other files."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from operational_helpers import _day_number, _feed, _members, _new_store

from twin.operational import run_cycle
from twin.store import Store


def _cycle_command(store: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "twin.cli", "cycle", str(store), "--data", str(data), "--quiet", "--json"]


# A scheduled cycle process, as in operations: with the store's compilation cache.
CYCLE_ENV = {k: v for k, v in os.environ.items() if k != "TWIN_COMPILATION_CACHE"}


def test_sigkill_at_random_points_leaves_a_consistent_store(daily, tmp_path):
    """Kill ``twin cycle`` with SIGKILL at random moments (>= 50 trials); every time the store opens and is
    consistent, and the next cycle ends exactly where an uninterrupted one does.

    The first trials start from a store without compiled programs, so kills also land while the cycle
    exports its programs and fills the compilation cache; the others from one with them, as operations
    run on most days (and faster: the CI's time)."""
    _, days = daily
    trials = int(os.environ.get("TWIN_FAULT_TRIALS", "50"))
    cold_trials = trials // 5
    base = _new_store(tmp_path, "base")
    _feed(base, days, 0, 3)
    shutil.rmtree(base / "programs", ignore_errors=True)  # _feed's in-process cycles exported them
    data = days[3][1][0].parent

    def timed_cycle(source: Path, name: str) -> tuple[Path, float]:
        store = tmp_path / name
        shutil.copytree(source, store)
        started = time.perf_counter()
        assert subprocess.run(_cycle_command(store, data), capture_output=True, env=CYCLE_ENV).returncode == 0
        return store, time.perf_counter() - started

    reference, full_cold = timed_cycle(base, "reference")
    warm_base = tmp_path / "warm-base"
    shutil.copytree(base, warm_base)
    for compiled in ("jax-cache", "programs"):
        shutil.copytree(reference / compiled, warm_base / compiled)
    warm_reference, full_warm = timed_cycle(warm_base, "warm-reference")
    expected = _members(reference)
    assert np.array_equal(_members(warm_reference), expected)
    rng = np.random.default_rng(0)
    outcomes = {"killed": 0, "finished": 0}
    for trial in range(trials):
        store = tmp_path / f"trial-{trial}"
        cold = trial < cold_trials
        shutil.copytree(base if cold else warm_base, store)
        proc = subprocess.Popen(_cycle_command(store, data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=CYCLE_ENV)
        time.sleep(rng.uniform(0.0, full_cold if cold else full_warm))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            outcomes["killed"] += 1
        else:
            outcomes["finished"] += 1
        proc.wait()
        s = Store(store)
        assert s.check() == [], f"trial {trial}: {s.check()}"
        done = s.manifest()["cycles_done"]
        assert done in (_day_number(days[2][0]), _day_number(days[3][0])), f"trial {trial}: {done} cycles"
        run_cycle(store, data=(str(data),), quiet=True)  # completes what was killed (or finds nothing new)
        assert np.array_equal(_members(store), expected), f"trial {trial}"
        assert json.loads((store / "manifest.json").read_text())["cycles_done"] == _day_number(days[3][0])
        shutil.rmtree(store)
    assert outcomes["killed"] >= trials // 2, outcomes

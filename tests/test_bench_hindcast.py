"""The hindcast benchmark's NumPy loop does the twin's cycle: same analysis means and dispositions."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_hindcast", REPO / "bench" / "hindcast.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numpy_loop_matches_twin_cycle():
    bench = _bench()
    problem = bench.build_problem(num_days=20, num_members=8)
    # Two windows of 10 cycles: the second's keys come from its first cycle number, as in the hindcast.
    hindcast = problem.config.hindcast.model_copy(update={"window_days": 10})
    problem = problem._replace(config=problem.config.model_copy(update={"hindcast": hindcast}))
    check = bench.check_equivalence(problem, 20)
    assert check["assimilated"] > 0  # the filter had something to do
    assert check["disposition_mismatches"] == 0
    # float32 rounding gives up to ~4e-5, a 1 % change of the model error ~2e-3 (see CHECK_RTOL).
    assert check["max_rel_diff"] < bench.CHECK_RTOL

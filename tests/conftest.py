"""Shared test helpers: where the real data live, and small canonical tables."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# The CLI keeps compiled programs in each store (twin.operational.use_compilation_cache); in this one long
# process, calling it on many stores, it stays off (subprocesses that need it remove the variable).
os.environ["TWIN_COMPILATION_CACHE"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = REPO / "tests" / "fixtures"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data is only on the project's machines)")
    return path


@pytest.fixture
def small_table():
    from twin.observations import make_observations
    times = np.array(["2020-01-01T00", "2020-01-08T00", "2020-01-15T00", "2020-01-15T00"], "datetime64[ns]")
    return make_observations(
        time=times, site=["Point B"] * 4, variable=["nitrate"] * 4, value=[1.0, 0.05, np.nan, 2.0],
        qc=np.array([1, 1, 9, 3], np.int8), native_qc=["2", "0", "9", "3"], source="fixture.csv",
        censored=[False, True, False, False], layer="surface", layer_code="S", depth=1.0,
        error_sd=0.3, line=[2, 3, 4, 5])


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module: one long process compiling hundreds of
    programs (a store's cycle, forecast, training ...) otherwise keeps them all mapped."""
    yield
    import jax
    jax.clear_caches()


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """The operational tests' twin experiment: a file of each source for every day (one call per day)."""
    from operational_helpers import DAYS, START

    from twin.osse import ExperimentSpec, write_daily_experiment
    root = tmp_path_factory.mktemp("daily")
    spec = ExperimentSpec(site="SYNTH-B", platform="SYNTH01", latitude=43.68, longitude=7.32,
                          start=np.datetime64(START), num_days=DAYS, seed=3, fluorescence_slope=2.0,
                          buoy_gap_fraction=0.0)  # a file every day: one call per calendar day
    _, days = write_daily_experiment(root / "all", spec)
    return root, days

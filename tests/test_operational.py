"""Operational twin cycles on a store: equivalence with the hindcast, idempotence, restart reproducibility,
locking, late data, corrupt files, and SIGKILL fault injection (issue 6)."""
from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
import xarray as xr
from operational_helpers import CALLS, CHECKPOINT, DAYS, START, _config, _day_number, _feed, _members, _new_store  # noqa: F401

from twin.config import parse_config
from twin.hindcast import run_hindcast
from twin.operational import init_store, run_cycle, store_status
from twin.store import Store, StoreBusy


@pytest.fixture(scope="module")
def operated(daily, tmp_path_factory):
    """A store fed day by day for ``CALLS`` days, one cycle call per day."""
    root, days = daily
    work = tmp_path_factory.mktemp("ops")
    store = _new_store(work, "store")
    started = time.perf_counter()
    reports = _feed(store, days, 0, CALLS)
    return store, reports, (time.perf_counter() - started) / CALLS


def test_daily_cycles_match_the_equivalent_hindcast(daily, operated, tmp_path):
    root, days = daily
    store, reports, _ = operated
    manifest = Store(store).manifest()
    cycles = manifest["cycles_done"]
    # The data of day k complete the analysis window of day k (k - 12 h .. k + 12 h): the last day fed
    # brings the store to its analysis (the buoy starts on day 1, so 100 calls feed days 1..100).
    assert cycles == _day_number(days[CALLS - 1][0]) == CALLS
    end = str(np.datetime64(START) + np.timedelta64(cycles - 1, "D"))
    config = parse_config(_config(root / "all", end=end))
    run_hindcast(config, tmp_path / "hc", quiet=True)
    with xr.open_dataset(tmp_path / "hc" / "reanalysis.nc") as ds:
        assert ds.sizes["time"] == cycles
    history = Store(store).load_arrays(manifest["files"]["history"])
    ops_mean = history["analysis_mean"]
    from twin.operational import store_layout
    layout = store_layout(config)
    assert ("buoy", "oxygen") in layout.sensors
    with xr.open_dataset(tmp_path / "hc" / "reanalysis.nc") as ds:
        hc = {v: ds[v].values for v in layout.state_variables()}
    for v, s, layer in layout.variables():
        i = layout.index(v, s, layer)
        li = layout.layers.index(layer)
        # Same algorithm, same keys; only the order of float32 sums differs (slots padded differently,
        # one-day windows instead of one long scan): agreement to 1e-3 relative over 99 cycles.
        np.testing.assert_allclose(ops_mean[:, i], hc[v][:, 0, li], rtol=1e-3, atol=1e-5,
                                   err_msg=f"{v}@{s}/{layer}")
    # the final ensemble is the one the store carries
    np.testing.assert_allclose(_members(store).mean(0), ops_mean[-1], rtol=1e-6)
    # The store's status summarises the buoy optode's estimated offset as the hindcast's metrics do.
    hc_offsets = json.loads((tmp_path / "hc" / "metrics.json").read_text())["sensor_offsets"]
    status = store_status(store)
    assert status["augmented_since"] == str(np.datetime64(START) + np.timedelta64(1, "D"))
    assert set(status["augmented"]) == {"sensor_offsets"}
    assert set(status["augmented"]["sensor_offsets"]) == set(hc_offsets)
    for name, expected in hc_offsets.items():
        got = status["augmented"]["sensor_offsets"][name]
        for k in ("mean", "q05", "q95", "last", "analysis_sd"):
            assert got[k] == pytest.approx(expected[k], rel=1e-3, abs=1e-5), f"{name} {k}"
    assert all(r["errors"] == [] for r in reports)
    assert sum(r["cycles"] for r in reports) == cycles
    # Each cycle call reports the same summary as the status would have then; the last one, the status's.
    assert reports[-1]["augmented"] == status["augmented"]
    assert reports[-1]["augmented_since"] == status["augmented_since"]


def test_cycle_again_without_new_data_changes_nothing(operated):
    store, _, _ = operated
    before = (store / "manifest.json").read_bytes()
    report = run_cycle(store, quiet=True)
    assert report["message"] == "nothing new" and report["cycles"] == 0
    assert (store / "manifest.json").read_bytes() == before


def test_restart_gives_the_same_state_bit_for_bit(daily, tmp_path):
    _, days = daily
    a = _new_store(tmp_path, "a")
    b = _new_store(tmp_path, "b")
    _feed(a, days, 0, 6)
    _feed(a, days, 6, 6)
    # b: the same twelve days of files at once: one cycle call runs all the analyses in a row
    run_cycle(b, data=tuple(str(p[0].parent) for _, p in days[:12]), quiet=True)
    assert Store(a).manifest()["cycles_done"] == Store(b).manifest()["cycles_done"] == _day_number(days[11][0])
    assert np.array_equal(_members(a), _members(b))


def test_second_cycle_waits_for_the_lock_then_refuses(daily, tmp_path):
    store = _new_store(tmp_path, "locked")
    holder_ready, release = threading.Event(), threading.Event()

    def hold():
        with Store(store).lock():
            holder_ready.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    holder_ready.wait(5)
    started = time.monotonic()
    with pytest.raises(StoreBusy, match="already running"):
        run_cycle(store, quiet=True, lock_timeout_s=1.0)
    assert time.monotonic() - started >= 1.0
    release.set()
    t.join()
    run_cycle(store, quiet=True, lock_timeout_s=1.0)  # free again


def test_late_data_are_kept_with_their_disposition(daily, tmp_path):
    _, days = daily
    store = _new_store(tmp_path, "late")
    # day 1's bottles held back; days 0 and 2..9 arrive first
    held = [(d, p) for d, p in days[:10] if any(q.name == "somlit.csv" for q in p)][0]
    for day, paths in days[:10]:
        feed = [q for q in paths if not (day == held[0] and q.name == "somlit.csv")]
        run_cycle(store, data=tuple(map(str, feed)), quiet=True)
    late_file = next(q for q in held[1] if q.name == "somlit.csv")
    report = run_cycle(store, data=(str(late_file),), quiet=True)
    assert report["late"] > 0
    status = store_status(store)
    assert status["ledger"]["by_disposition"]["late"] == report["late"]


def test_corrupt_file_is_reported_and_retried(daily, tmp_path):
    _, days = daily
    store = _new_store(tmp_path, "corrupt")
    _feed(store, days, 0, 3)
    bad = tmp_path / "bad" / "coasthf.csv"
    bad.parent.mkdir()
    bad.write_text("this is not a COAST-HF export\n1;2;3\n")
    _, paths = days[3]
    report = run_cycle(store, data=(str(bad), *map(str, paths)), quiet=True)
    assert [e["file"] for e in report["errors"]] == [str(bad)] and report["cycles"] == 1
    rows = store_status(store)["ledger"]["rows"]
    again = run_cycle(store, data=(str(bad),), quiet=True)
    assert [e["file"] for e in again["errors"]] == [str(bad)]  # tried again, still reported
    assert store_status(store)["ledger"]["rows"] == rows          # nothing already stored was lost


def test_status_reports_the_ledger_and_health(operated):
    store, _, _ = operated
    status = store_status(store)
    assert status["healthy"] and status["cycles_done"] == CALLS
    by = status["ledger"]["by_disposition"]
    assert by["assimilated"] > 100 and by.get("late", 0) == 0
    assert status["emulator"] == "emulator-0"


def test_forecast_products_and_alerts_each_cycle(operated):
    store, reports, _ = operated
    s = Store(store)
    alerts = s.load_json(s.manifest()["files"]["alerts"])
    assert len(alerts) == CALLS  # one evaluation per call (each moved the twin a day)
    assert all(0.0 <= a["probability"] <= 1.0 for a in alerts)
    products = sorted((store / "products").glob("forecast-*.nc"))
    assert len(products) == CALLS
    with xr.open_dataset(products[-1]) as ds:
        assert ds.sizes["time"] == 5 and np.all(ds["chlorophyll_q05"].values <= ds["chlorophyll_q95"].values)


def test_store_takes_its_boundary_from_the_data_at_init(daily, tmp_path):
    """``boundary_from_data`` in a store: the medians of the data there at init, written into the store's
    config, the same as a hindcast takes from the same data; the store's process model uses them."""
    from emulators.parameters import TRACERS
    from twin.hindcast import data_offshore_water
    from twin.ingest import ingest
    from twin.operational import load_store_config, store_layout, store_sites
    from twin.qc import apply_qc
    root, days = daily
    incoming = tmp_path / "incoming"
    for _, paths in days:
        shutil.copytree(paths[0].parent, incoming / paths[0].parent.name)
    raw = _config(incoming)
    raw["sites"][0]["boundary_from_data"] = True
    raw["model"] = {"kind": "process"}
    config = parse_config(raw)
    init_store(tmp_path / "store", config, quiet=True)
    stored = load_store_config(Store(tmp_path / "store"))
    water = stored.sites[0].offshore_water
    expected = data_offshore_water(apply_qc(ingest(config), config.qc), "SYNTH-B", ("surface", "bottom"))
    assert {"nitrate/surface", "nitrate/bottom", "oxygen/bottom"} <= set(water)
    assert water == pytest.approx(expected)
    offshore = np.asarray(store_sites(stored, store_layout(stored)).offshore_state)[0]
    assert offshore[len(TRACERS) + TRACERS.index("nitrate")] == pytest.approx(water["nitrate/bottom"])


def test_the_compiled_model_key_changes_with_the_emulators_calibrated_parameters(tmp_path):
    """A refit may change only the emulator's parameter inputs (same weights): the stored programs, which hold
    them as constants, must then not be reused."""
    from types import SimpleNamespace

    from emulators.checkpoint import load_checkpoint, save_checkpoint
    from twin.operational import model_key
    (tmp_path / "config.yaml").write_text("name: x\n", encoding="utf-8")
    emulator = load_checkpoint(CHECKPOINT)
    save_checkpoint(tmp_path / "emulator-0", emulator)
    save_checkpoint(tmp_path / "emulator-1", emulator.replace(parameter_values={"max_growth_rate": 1.3}))
    store = SimpleNamespace(path=lambda name: tmp_path / name)
    keys = [model_key(store, {"files": {"emulator": name}}) for name in ("emulator-0", "emulator-1")]
    assert keys[0] != keys[1]
    assert model_key(store, {"files": {"emulator": "emulator-0"}}) == keys[0]  # deterministic


def test_status_gives_the_estimated_parameters_in_their_own_units(daily, tmp_path, capsys):
    """A store whose filter estimates the growth rate records, each cycle, the emulator's parameter inputs it
    stepped with and the analysis quantiles, and its status gives the factor and the value (the emulator's
    value times exp(the analysed factor)) as a hindcast's metrics do."""
    from emulators.checkpoint import load_checkpoint
    from twin.forecast import emulator_model_params, parameter_input_names, parameter_input_range
    from twin.operational import store_layout
    root, days = daily
    incoming = tmp_path / "incoming"
    raw = _config(incoming)
    raw["model"] = {"estimate_parameters": {"max_growth_rate": {"sd": 0.15, "timescale_days": 365}}}
    config = parse_config(raw)
    init_store(tmp_path / "store", config, quiet=True)
    run_cycle(tmp_path / "store", data=tuple(str(paths[0].parent) for _, paths in days[:12]), quiet=True)
    s = Store(tmp_path / "store")
    history = s.load_arrays(s.manifest()["files"]["history"])
    emulator = load_checkpoint(CHECKPOINT)
    names = parameter_input_names(emulator)
    own = np.asarray(emulator_model_params(emulator).parameters)
    cycles = s.manifest()["cycles_done"]
    assert cycles == 12
    np.testing.assert_array_equal(history["parameter_values"], np.tile(own[None], (cycles, 1)))
    assert history["analysis_quantiles"].shape == (cycles, 3, history["analysis_mean"].shape[1])
    layout = store_layout(config)
    i = layout.index("max_growth_rate_log_factor", "SYNTH-B", "surface")
    entry = store_status(tmp_path / "store")["augmented"]["estimated_parameters"][
        "max_growth_rate_log_factor@SYNTH-B/surface"]
    k = names.index("max_growth_rate")
    factor = history["analysis_mean"][:, i].astype(np.float64)
    assert entry["last"] == pytest.approx(factor[-1], rel=1e-6)
    assert entry["value"]["last"] == pytest.approx(own[k] * np.exp(factor[-1]), rel=1e-6)
    assert entry["value"]["mean"] == pytest.approx(np.mean(own[k] * np.exp(factor)), rel=1e-5)
    assert entry["training_range"] == pytest.approx([float(a[k]) for a in parameter_input_range(emulator)])
    assert 0.0 <= entry["cycles_at_range_limit"] <= 1.0
    from twin.cli import main
    main(["status", str(tmp_path / "store")])
    printed = capsys.readouterr().out
    assert "estimated in the state, since 2016-01-02:" in printed
    assert f"max_growth_rate {own[k] * np.exp(factor).mean():.3g} on average" in printed
    # `twin cycle` prints the same lines after the cycles it ran.
    main(["cycle", str(tmp_path / "store"), "--quiet", "--data", str(days[12][1][0].parent)])
    printed = capsys.readouterr().out
    assert "1 cycle(s)" in printed and "estimated in the state, since 2016-01-02:" in printed
    history = s.load_arrays(s.manifest()["files"]["history"])
    factor = history["analysis_mean"][:, i].astype(np.float64)
    assert factor.size == 13
    assert f"max_growth_rate {own[k] * np.exp(factor).mean():.3g} on average" in printed


def test_history_records_that_an_older_store_lacks_start_with_nan_rows():
    """A store made before a record existed (here the analysis quantiles) keeps its history's rows aligned:
    the new record's rows for the earlier cycles are NaN, and the status summarises from the first cycle that
    has it."""
    from types import SimpleNamespace

    from twin.operational import _extend_history
    n = 4
    old = {"analysis_mean": np.ones((3, n), np.float32), "analysis_sd": np.ones((3, n), np.float32)}
    out = SimpleNamespace(analysis_mean=np.full((2, n), 2.0, np.float32), analysis_sd=np.ones((2, n), np.float32),
                          analysis_quantiles=np.zeros((2, 3, n), np.float32), forecast_mean=np.zeros((2, n)),
                          forecast_sd=np.zeros((2, n)),
                          diagnostics=SimpleNamespace(inflation=np.ones(2), normalized_innovation=np.zeros(2)))
    forcing = SimpleNamespace(_asdict=lambda: {"par": np.arange(10.0)})
    new = _extend_history(old, out, forcing, 3, 5)
    assert new["analysis_mean"].shape == (5, n) and new["analysis_quantiles"].shape == (5, 3, n)
    assert np.isnan(new["analysis_quantiles"][:3]).all() and (new["analysis_quantiles"][3:] == 0).all()
    np.testing.assert_array_equal(new["forcing_par"], [np.nan, np.nan, np.nan, 3.0, 4.0])

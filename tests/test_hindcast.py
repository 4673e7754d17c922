"""End-to-end hindcast on a short twin experiment (process model forecasts, to stay fast in CI)."""
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from twin import dispositions as disp
from twin.cli import main
from twin.config import parse_config
from twin.hindcast import run_hindcast

SMALL = {
    "name": "small-osse",
    "experiment": {"days": 120, "seed": 2, "start": "2016-03-01"},
    "model": {"kind": "process", "substeps": 6},
    "filter": {"members": 12, "inflation": 1.05},
    "hindcast": {"window_days": 60},
    "validation": {"withhold_fraction": 0.2, "seed": 1},
    # Thresholds crossed in this experiment (the truth's window event rates are about 0.3 and 0.15).
    "alerts": [{"variable": "chlorophyll", "site": "SYNTH-B", "threshold": 1.0, "direction": "above",
                "probability": 0.3},
               {"variable": "oxygen", "site": "SYNTH-B", "layer": "bottom", "threshold": 220.0,
                "direction": "below", "probability": 0.3}],
}
PLAIN = {k: v for k, v in SMALL.items() if k != "alerts"}  # alert forecasts cost a compile: only where tested


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hc") / "run"
    metrics = run_hindcast(parse_config(SMALL), out, quiet=True)
    return out, metrics


def test_products_are_written_and_complete(run):
    out, metrics = run
    assert {p.name for p in out.iterdir()} >= {"reanalysis.nc", "metrics.json", "report.html",
                                               "resolved_config.yaml", "lineage.json"}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["period"] == {"start": "2016-03-01", "days": 120}
    with xr.open_dataset(out / "reanalysis.nc") as ds:
        assert ds["nitrate"].dims == ("time", "site", "layer") and ds.sizes["time"] == 120
        for v in ("nitrate", "zooplankton", "chlorophyll", "oxygen"):
            q05, q50, q95 = (ds[f"{v}_q{q}"].values for q in ("05", "50", "95"))
            assert np.all(q05 <= q50 + 1e-6) and np.all(q50 <= q95 + 1e-6) and np.all(q05 > 0)
            assert ds[v].attrs["units"]
        # every ledger row has a disposition, and the bottles were assimilated
        codes = ds["obs_disposition"].values
        assert set(np.unique(codes)) <= set(disp.DISPOSITION_NAMES)
        assert (codes == disp.ASSIMILATED).sum() > 100 and (codes == disp.WITHHELD).sum() > 10
        assimilated = codes == disp.ASSIMILATED
        assert np.all(np.isfinite(ds["obs_forecast"].values[assimilated]))


def test_the_experiment_tells_the_filter_each_bottle_s_own_error(run):
    """The bottles are drawn with sd hypot(analytical, fraction * value) (twin.osse); the filter is told that
    per sample, of the sampled value (rtol 1e-5: the ledger's float64 against the formula), and the truth
    metrics' observation error is the RMS of the assimilated values' errors (bottom nitrate: one bottle a
    cycle, so the super-observations are the samples; rel 1e-5, they are float32)."""
    from twin.osse import BOTTLE_ERROR, BOTTLE_RELATIVE_ERROR
    out, metrics = run
    with xr.open_dataset(out / "reanalysis.nc") as ds:
        bottle = np.char.endswith(ds["obs_source"].values.astype(str), "somlit_synthetic.csv")
        for v in ("nitrate", "silicate", "oxygen"):
            rows = bottle & (ds["obs_variable"].values == v) & (ds["obs_native_qc"].values == "2")
            value, sd = ds["obs_value"].values[rows], ds["obs_error_sd"].values[rows]
            assert rows.sum() > 10
            np.testing.assert_allclose(sd, np.hypot(BOTTLE_ERROR[v], BOTTLE_RELATIVE_ERROR.get(v, 0.0) * value),
                                       rtol=1e-5)
        assert np.ptp(ds["obs_error_sd"].values[bottle & (ds["obs_variable"].values == "nitrate")]) > 0.01
        rows = (ds["obs_variable"].values == "nitrate") & (ds["obs_layer"].values == "bottom") \
            & (ds["obs_disposition"].values == disp.ASSIMILATED)
        rms = float(np.sqrt(np.mean(ds["obs_error_sd"].values[rows] ** 2)))
    assert metrics["truth"]["nitrate@SYNTH-B/bottom"]["observation_error"] == pytest.approx(rms, rel=1e-5)


def test_metrics_have_truth_and_validation_structure(run):
    _, metrics = run
    truth = metrics["truth"]
    assert set(truth["nitrate@SYNTH-B/surface"]) >= {"twin", "free_run", "process_model"}
    assert "zooplankton@SYNTH-B/bottom" in metrics["unobserved"]
    assert "nitrate@SYNTH-B/surface" not in metrics["unobserved"]
    v = metrics["validation"]["nitrate@SYNTH-B/surface"]
    assert set(v) == {"n", "twin", "persistence", "climatology"}
    assert 0.0 <= v["twin"]["coverage_90"] <= 1.0 and v["twin"]["crps"] >= 0
    assert 0.0 <= v["twin"]["coverage_90_lognormal"] <= 1.0 and 0.0 <= v["twin"]["normal_interval_below_zero"] <= 1
    # assimilating weekly nitrate beats the free run at the observed surface nitrate
    assert truth["nitrate@SYNTH-B/surface"]["twin"]["rmse"] < truth["nitrate@SYNTH-B/surface"]["free_run"]["rmse"]
    # the analysis on the days a value was assimilated: observed variables only, weekly bottles for nitrate
    nitrate = truth["nitrate@SYNTH-B/surface"]["twin"]
    assert nitrate["rmse_at_observations"] > 0 and 2 < nitrate["n_at_observations"] < metrics["period"]["days"] / 6
    assert "rmse_at_observations" not in truth["zooplankton@SYNTH-B/surface"]["twin"]
    # innovation statistics per series and source: the bottles and the buoy apart, counts from the ledger
    by_series = metrics["innovations"]["by_series"]
    bottles = by_series["nitrate@SYNTH-B/surface"]
    assert len(bottles) == 1 and next(iter(bottles.values()))["n"] > 5
    assert len(by_series["oxygen@SYNTH-B/surface"]) == 2   # the buoy's and the bottles'
    assert all(e["desroziers_error_sd"] >= 0 and e["consistency"] > 0
               for per in by_series.values() for e in per.values())


def test_desroziers_estimate_recovers_the_observation_error():
    """A scalar linear-Gaussian analysis (B = 4, R = 1, K = B / (B + R)): E[(y - a)(y - f)] = R exactly, and
    E[(y - f)^2] = B + R; rows not assimilated are left out. Tolerance: 3 % at n = 40000 (sampling error
    about 1 % on the mean of the products)."""
    from twin.products import innovation_statistics
    rng = np.random.default_rng(0)
    n, b, r = 40_000, 4.0, 1.0
    truth = 10.0 + rng.normal(0, 3, n)
    forecast = truth + rng.normal(0, np.sqrt(b), n)
    y = truth + rng.normal(0, np.sqrt(r), n)
    analysis = forecast + b / (b + r) * (y - forecast)
    codes = np.where(np.arange(n) % 10 == 0, disp.BAD_QC, disp.ASSIMILATED)
    y[codes == disp.BAD_QC] += 1e3   # not assimilated: must not count
    ds = xr.Dataset({"obs_value": ("obs", y), "obs_forecast": ("obs", forecast), "obs_analysis": ("obs", analysis),
                     "obs_error_sd": ("obs", np.full(n, 2.0)), "obs_forecast_sd": ("obs", np.full(n, 2.0)),
                     "obs_disposition": ("obs", codes), "obs_variable": ("obs", np.full(n, "nitrate", object)),
                     "obs_site": ("obs", np.full(n, "A", object)), "obs_layer": ("obs", np.full(n, "surface", object)),
                     "obs_source": ("obs", np.full(n, "/data/x/bottles.csv", object))})
    e = innovation_statistics(ds)["nitrate@A/surface"]["bottles.csv"]
    assert e["n"] == 36_000
    np.testing.assert_allclose(e["desroziers_error_sd"], np.sqrt(r), rtol=0.03)
    np.testing.assert_allclose(e["rms"], np.sqrt(b + r), rtol=0.03)
    assert abs(e["mean"]) < 0.05 and e["error_sd"] == 2.0
    np.testing.assert_allclose(e["consistency"], np.sqrt(b + r) / np.hypot(2.0, 2.0), rtol=0.03)


def test_report_embeds_its_figures(run):
    out, metrics = run
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "<h2>Skill against the truth" in page
    assert "<th>bias twin</th>" in page and "<th>bias free run</th>" in page
    # The metrics' bias is the mean error, bounded by the RMSE.
    for name, e in metrics["truth"].items():
        for label in ("twin", "free_run", "process_model"):
            assert abs(e[label]["bias"]) <= e[label]["rmse"] * (1 + 1e-9), f"{name} {label}"


def test_alerts_are_verified_against_observations_and_truth(run):
    out, metrics = run
    alerts = metrics["alerts"]
    assert list(alerts) == ["surface chlorophyll above 1.0 at SYNTH-B", "bottom oxygen below 220.0 at SYNTH-B"]
    for entry in alerts.values():
        assert entry["definition"]["horizon_days"] == 7 and 0 <= entry["raised_days"] <= 120
        for against in ("observed", "truth"):
            v = entry[against]
            assert v["n"] > 50 and 0 < v["n_events"] < v["n"], "the events happen, but not always"
            assert 0.0 <= v["brier"] <= 1.0
            assert v["hits"] + v["misses"] + v["false_alarms"] + v["correct_negatives"] == v["n"]
    history = pd.read_csv(out / "alerts.csv", parse_dates=["time"])
    assert list(history.columns) == ["time", "alert", "probability", "raised", "state_probability"]
    assert len(history) == 2 * 120 and history["probability"].between(0, 1).all()
    oxygen = history[history["alert"] == "bottom oxygen below 220.0 at SYNTH-B"]
    assert oxygen["raised"].sum() == alerts["bottom oxygen below 220.0 at SYNTH-B"]["raised_days"]
    assert str(oxygen["time"].iloc[0])[:10] == "2016-03-02"  # the first analysis
    page = (out / "report.html").read_text()
    assert "<h2>Alerts</h2>" in page
    for name in alerts:
        assert f'alt="reliability diagram of {name}"' in page and f'alt="probability history of {name}"' in page


def test_a_failed_run_leaves_the_previous_one_intact(run, monkeypatch):
    out, _ = run
    before = (out / "metrics.json").read_text()
    import twin.products

    def boom(*args, **kwargs):
        raise RuntimeError("killed while writing products")
    monkeypatch.setattr(twin.products, "write_products", boom)
    with pytest.raises(RuntimeError, match="killed while writing"):
        run_hindcast(parse_config(PLAIN), out, quiet=True)
    assert (out / "metrics.json").read_text() == before
    assert not list(out.parent.glob(".run.partial-*")), "the partial folder is cleaned up"


def test_cli_hindcast_prints_skill(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    import yaml
    small = dict(PLAIN, experiment={"days": 40, "seed": 3}, validation={"withhold_fraction": 0.0},
                 filter={"members": 8})
    cfg.write_text(yaml.safe_dump(small))
    assert main(["hindcast", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("hindcast small-osse: 40 days")
    assert json.loads(lines[-1])["period"]["days"] == 40


def test_report_renders_in_headless_chromium(run):
    """Opens report.html in Debian's Chromium (installed by .ci/run) and checks every figure loads."""
    import shutil
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright
    out, _ = run
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((out / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        count = page.evaluate("document.images.length")
        loaded = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        browser.close()
    assert count >= 2 and loaded
    assert errors == []


def test_emulator_hindcast_with_the_committed_demo_checkpoint(tmp_path):
    """The demo's emulator checkpoint drives a short hindcast: finite, positive, and better than its free
    run at the observed surface nitrate."""
    from pathlib import Path
    checkpoint = Path(__file__).resolve().parents[1] / "configs" / "emulators" / "demo"
    small = dict(PLAIN, model={"kind": "emulator"}, emulator={"checkpoint": str(checkpoint)},
                 experiment={"days": 90, "seed": 4}, validation={"withhold_fraction": 0.0})
    metrics = run_hindcast(parse_config(small), tmp_path / "emu", quiet=True)
    nitrate = metrics["truth"]["nitrate@SYNTH-B/surface"]
    assert nitrate["twin"]["rmse"] < nitrate["free_run"]["rmse"]
    assert metrics["innovations"]["diverged_cycles"] == 0
    assert metrics["emulator_lineage"] and metrics["emulator_lineage"][0]["kind"] == "pretrain"
    with xr.open_dataset(tmp_path / "emu" / "reanalysis.nc") as ds:
        assert np.all(ds["zooplankton_q05"].values > 0) and np.all(np.isfinite(ds["oxygen"].values))


def test_boundary_from_data_takes_the_station_medians():
    from emulators.parameters import TRACERS
    from twin.config import SiteConfig, TwinConfig
    from twin.forecast import site_struct
    from twin.hindcast import resolve_boundaries
    from twin.observations import make_observations
    n = 12
    values = np.arange(1.0, n + 1.0)
    table = make_observations(
        time=pd.date_range("2020-01-01", periods=n, freq="7D").values, site=["Point B"] * n,
        variable=["nitrate"] * n, value=values, qc=np.ones(n, np.int8), native_qc=["2"] * n,
        source="fixture.csv", layer="bottom", layer_code="F", depth=50.0, error_sd=0.1)
    site = SiteConfig(name="Point B", latitude=43.68, longitude=7.32, bottom_depth_m=60, boundary_from_data=True,
                      offshore_water={"oxygen/bottom": 230.0})
    config, report = resolve_boundaries(TwinConfig(sites=(site,)), table, ("surface", "bottom"))
    assert report == {"Point B boundary": {"nitrate/bottom": float(np.median(values))}}
    # the data fill what the config does not give; what it gives stays
    assert config.sites[0].offshore_water == {"nitrate/bottom": float(np.median(values)), "oxygen/bottom": 230.0}
    offshore = np.asarray(site_struct(config.sites[0], 2).offshore_state)
    before = np.asarray(site_struct(site.model_copy(update={"offshore_water": {}}), 2).offshore_state)
    k_no3, k_o2 = (len(TRACERS) + TRACERS.index(t) for t in ("nitrate", "oxygen"))
    assert offshore[k_no3] == np.median(values) and offshore[k_o2] == 230.0
    assert np.array_equal(np.delete(offshore, [k_no3, k_o2]), np.delete(before, [k_no3, k_o2]))  # generic shelf
    # fewer than 10 usable values: the generic shelf
    few, report = resolve_boundaries(TwinConfig(sites=(site,)), table.isel(obs=slice(0, 9)), ("surface", "bottom"))
    assert few.sites[0].offshore_water == {"oxygen/bottom": 230.0} and report["Point B boundary"] == {}


def test_seasonal_boundary_is_the_annual_harmonic_of_the_log_and_multiplies_the_offshore_water():
    """boundary_seasonal: (a, b) of log nitrate = c + a cos(w d) + b sin(w d) over three years of weekly
    bottom samples, recovered to 1e-6 (an exact fit), given keys kept; the process stepper then relaxes to the
    offshore water times exp(a cos(w d) + b sin(w d)) on day d: the same step as the process model with that
    offshore water (float32, rtol 1e-6). The emulator cannot take it."""
    import jax
    import jax.numpy as jnp

    from emulators.forcing import day_of_year_of, synthetic_forcing
    from emulators.parameters import TRACERS, ProcessParams, default_site
    from emulators.process_model import initial_state
    from emulators.process_model import step as process_step
    from twin.config import ModelConfig, SiteConfig, TwinConfig
    from twin.errors import ConfigError
    from twin.forecast import offshore_seasonal, process_stepper, stack_sites
    from twin.hindcast import resolve_boundaries
    from twin.observations import make_observations
    from twin.state_layout import StateLayout
    n = 156
    times = pd.date_range("2020-01-01", periods=n, freq="7D").values
    w = 2 * np.pi * day_of_year_of(times) / 365.25
    values = np.exp(0.5 + 0.8 * np.cos(w) - 0.3 * np.sin(w))
    table = make_observations(
        time=times, site=["Point B"] * n, variable=["nitrate"] * n, value=values, qc=np.ones(n, np.int8),
        native_qc=["2"] * n, source="fixture.csv", layer="bottom", layer_code="F", depth=50.0, error_sd=0.1)
    site = SiteConfig(name="Point B", latitude=43.68, longitude=7.32, bottom_depth_m=60, boundary_from_data=True,
                      boundary_seasonal=True, offshore_seasonal={"oxygen/bottom": (0.01, 0.0)})
    config, report = resolve_boundaries(TwinConfig(sites=(site,), model=ModelConfig(kind="process")), table,
                                        ("surface", "bottom"))
    np.testing.assert_allclose(config.sites[0].offshore_seasonal["nitrate/bottom"], (0.8, -0.3), atol=1e-4)
    assert config.sites[0].offshore_seasonal["oxygen/bottom"] == (0.01, 0.0)
    assert set(report["Point B seasonal boundary"]) == {"nitrate/bottom"}

    layout = StateLayout(("Point B",), 2)
    harmonic = offshore_seasonal(config.sites, layout)                                 # (1, 2 * T, 2)
    k = len(TRACERS) + TRACERS.index("nitrate")
    np.testing.assert_allclose(harmonic[0, k], (0.8, -0.3), atol=1e-4)
    sites = stack_sites([default_site(2, 43.68)])
    forcing = jax.tree.map(lambda a: a[40:41], synthetic_forcing(60))                  # one site, day 40
    x = jnp.asarray(initial_state(2))[None, None]
    seasonal = np.asarray(process_stepper(ProcessParams(), sites, 4, harmonic)(x, forcing))
    day = float(forcing.day_of_year[0])
    factor = np.exp(harmonic[0, :, 0] * np.cos(2 * np.pi * day / 365.25)
                    + harmonic[0, :, 1] * np.sin(2 * np.pi * day / 365.25))
    site0 = jax.tree.map(lambda a: a[0], sites)
    expected = process_step(x[0, 0], jax.tree.map(lambda a: a[0], forcing), ProcessParams(),
                            site0._replace(offshore_state=site0.offshore_state * factor), substeps=4)
    np.testing.assert_allclose(seasonal[0, 0], np.asarray(expected), rtol=1e-6)
    plain = np.asarray(process_stepper(ProcessParams(), sites, 4)(x, forcing))
    assert not np.allclose(seasonal, plain, rtol=1e-4)
    with pytest.raises(ConfigError, match="seasonal offshore water .* is for model.kind process"):
        parse_config({"sites": [{"name": "A", "latitude": 43, "longitude": 7, "boundary_from_data": True,
                                 "boundary_seasonal": True}], "model": {"kind": "emulator"}})


def test_offshore_water_keys_are_checked():
    from emulators.parameters import LAYERS, TRACERS
    from twin.config import MODEL_LAYERS, OBSERVED_STATE, OFFSHORE_TRACERS, STATE_VARIABLES, parse_config
    from twin.errors import ConfigError
    from twin.state_layout import OBSERVABLE
    from twin.state_layout import STATE_VARIABLES as LAYOUT_STATE_VARIABLES
    assert OFFSHORE_TRACERS == TRACERS and MODEL_LAYERS == LAYERS
    assert set(OBSERVED_STATE) == set(OBSERVABLE.values())
    assert STATE_VARIABLES == LAYOUT_STATE_VARIABLES
    with pytest.raises(ConfigError, match=r"sites\.0\.offshore_water.*'nitrat/bottom'"):
        parse_config({"sites": [{"name": "x", "latitude": 43, "longitude": 7,
                                 "offshore_water": {"nitrat/bottom": 2.0}}]})


def test_emulator_can_take_the_truths_parameters():
    """``model.process_params: truth`` with the emulator: the truth's values of its parameter inputs."""
    from pathlib import Path

    import jax.numpy as jnp

    from emulators.checkpoint import load_checkpoint
    from emulators.forcing import synthetic_forcing
    from emulators.parameters import ProcessParams
    from emulators.process_model import initial_state
    from twin.forecast import emulator_stepper, stack_sites
    emulator = load_checkpoint(Path(__file__).resolve().parents[1] / "configs" / "emulators" / "demo")
    assert "param/max_grazing_rate" in emulator.config.forcing_names
    forcing = stack_sites([synthetic_forcing(3, latitude=43.68)])
    day = type(forcing)(*(a[1] for a in forcing))
    x = jnp.asarray(initial_state(2))[None, None]
    plain = np.asarray(emulator_stepper(emulator)(x, day))
    assert np.array_equal(plain, np.asarray(emulator_stepper(emulator, ProcessParams())(x, day)))
    grazed = np.asarray(emulator_stepper(emulator, ProcessParams()._replace(max_grazing_rate=1.5))(x, day))
    assert not np.allclose(plain, grazed)


def test_next_chlorophyll_scale_finds_the_unbiased_scale():
    from twin.hindcast import next_chlorophyll_scale
    # first pass: the ratio itself; a layer without samples (NaN) keeps its scale; a step is x4 at most
    first = next_chlorophyll_scale(np.array([[1.0, 1.0, 2.0]]), np.array([[1.8, np.nan, 100.0]]))
    np.testing.assert_allclose(first, [[1.8, 1.0, 8.0]])
    # a damped response, ratio = (2.5 / scale) ** 0.7: the secant steps converge to 2.5 within 1 %
    scale, previous = np.array([[1.0]]), None
    for _ in range(4):
        ratio = (2.5 / scale) ** 0.7
        scale, previous = next_chlorophyll_scale(scale, ratio, previous), (scale, ratio)
    np.testing.assert_allclose(scale, [[2.5]], rtol=0.01)


def test_chlorophyll_ratio_counts_only_assimilated_samples():
    from types import SimpleNamespace

    from assimilation import dispositions as dsp
    from twin.hindcast import CALIBRATION_MIN_SAMPLES, chlorophyll_forecast_ratio
    from twin.state_layout import StateLayout
    layout = StateLayout(("A",), 2)
    surface, bottom = layout.index("chlorophyll", "A", "surface"), layout.index("chlorophyll", "A", "bottom")
    T = 2 * CALIBRATION_MIN_SAMPLES
    index = np.tile([surface, bottom], (T, 1))
    value = np.tile([2.0, 1.0], (T, 1))
    forecast = np.tile([1.0, 1.0], (T, 1))
    disposition = np.full((T, 2), dsp.ASSIMILATED)
    disposition[::2, 0] = dsp.MISSING              # e.g. withheld samples, with a wild forecast: not counted
    forecast[::2, 0] = 100.0
    disposition[1::2, 0] = dsp.REJECTED_OUTLIER     # counted: a biased diagnostic makes good samples outliers
    disposition[CALIBRATION_MIN_SAMPLES - 1:, 1] = dsp.BAD_QC  # too few bottom samples left
    prepared = SimpleNamespace(layout=layout,
                               cycle_obs=SimpleNamespace(obs=SimpleNamespace(state_index=index, value=value)))
    ratio = chlorophyll_forecast_ratio(prepared, SimpleNamespace(obs_forecast=forecast, disposition=disposition))
    assert ratio[0, 0] == pytest.approx(2.0) and np.isnan(ratio[0, 1])


def _two_site_process_day(day: int, num_days: int):
    """Two two-layer sites A and B of the process model, three members at its initial state, and the forcing
    of ``day`` of a ``num_days`` synthetic year: (layout, sites, forcing, members, stepper, zero model error)."""
    import jax
    import jax.numpy as jnp

    from emulators.forcing import synthetic_forcing
    from emulators.parameters import ProcessParams, default_site
    from emulators.process_model import initial_state
    from twin.forecast import process_stepper, stack_sites
    from twin.state_layout import StateLayout
    layout = StateLayout(("A", "B"), 2)
    sites = stack_sites([default_site(2, 43.0), default_site(2, 44.0)])
    forcing = jax.tree.map(lambda a: a[day], stack_sites([synthetic_forcing(num_days), synthetic_forcing(num_days)]))
    members = jnp.zeros((3, layout.dim)).at[:, layout.model_slices()].set(
        jnp.tile(jnp.asarray(initial_state(2)), (3, 2, 1)))
    return layout, sites, forcing, members, process_stepper(ProcessParams(), sites), \
        np.zeros(layout.model_dim, np.float32)


def test_chlorophyll_scale_multiplies_the_diagnostic():
    import jax

    from twin.forecast import make_forecast
    layout, sites, forcing, members, stepper, zero = _two_site_process_day(0, 3)
    plain = make_forecast(stepper, layout, sites, zero)
    scale = np.array([[2.0, 0.5], [1.0, 3.0]], np.float32)
    scaled = make_forecast(stepper, layout, sites, zero, chlorophyll_scale=scale)
    key = jax.random.PRNGKey(0)
    a, b = np.asarray(plain(members, forcing, key)), np.asarray(scaled(members, forcing, key))
    diag = layout.diagnostic_slices()
    np.testing.assert_allclose(b[:, diag], a[:, diag] * scale[None], rtol=1e-6)
    model = layout.model_slices()
    np.testing.assert_array_equal(b[:, model], a[:, model])


def test_seasonal_chlorophyll_factor_multiplies_the_diagnostic_by_its_harmonic():
    """sites[].chlorophyll_seasonal (a, b): the diagnostic times c exp(a cos(w d) + b sin(w d)) on day d,
    w = 2 pi / 365.25, per site and layer (float32, rtol 1e-5); a layer not given gets (0, 0)."""
    import jax

    from twin.forecast import chlorophyll_scales, make_forecast
    config = parse_config({"sites": [
        {"name": "A", "latitude": 43, "longitude": 7, "chlorophyll_scale": {"surface": 2.0},
         "chlorophyll_seasonal": {"surface": [0.3, -0.2], "bottom": [0.0, 0.5]}},
        {"name": "B", "latitude": 44, "longitude": 7}]})
    layout, sites, forcing, members, stepper, zero = _two_site_process_day(100, 200)
    factors = chlorophyll_scales(config.sites, layout)
    np.testing.assert_allclose(factors, [[[2.0, 0.3, -0.2], [1.0, 0.0, 0.5]], [[1.0, 0, 0], [1.0, 0, 0]]],
                               rtol=1e-7)   # float32
    key = jax.random.PRNGKey(0)
    plain = np.asarray(make_forecast(stepper, layout, sites, zero)(members, forcing, key))
    seasonal = np.asarray(make_forecast(stepper, layout, sites, zero, chlorophyll_scale=factors)(members, forcing, key))
    w = 2 * np.pi * np.asarray(forcing.day_of_year, np.float64)[:, None] / 365.25       # (S, 1)
    expected = factors[..., 0] * np.exp(factors[..., 1] * np.cos(w) + factors[..., 2] * np.sin(w))
    diag = layout.diagnostic_slices()
    np.testing.assert_allclose(seasonal[:, diag], plain[:, diag] * expected[None], rtol=1e-5)
    assert abs(float(forcing.day_of_year[0]) - 100) < 1 and not np.allclose(expected[0], [2.0, 1.0], rtol=0.05)


def test_seasonal_chlorophyll_ratio_recovers_the_harmonic_of_the_forecast_error():
    """Forecasts low by exp(0.4 cos(w d) - 0.25 sin(w d) + 0.3) at two years of weekly samples: the harmonic
    (0.4, -0.25) comes back to 1e-9 (an exact fit), the mean (0.3) left to the scale; samples not offered to
    the filter, with wild forecasts, do not count."""
    from types import SimpleNamespace

    from assimilation import dispositions as dsp
    from emulators.forcing import day_of_year_of
    from twin.hindcast import chlorophyll_seasonal_ratio, harmonic_fit
    from twin.state_layout import StateLayout
    layout = StateLayout(("A",), 1)
    T = 730
    day0 = np.datetime64("2001-01-01")
    index = np.full((T, 1), layout.index("chlorophyll", "A", "surface"))
    d = day_of_year_of(day0 + np.arange(T) * np.timedelta64(1, "D"))   # 0 on each 1 January
    value = (1.0 + 0.5 * np.sin(np.arange(T) / 9.0))[:, None]
    error = 0.4 * np.cos(2 * np.pi * d / 365.25) - 0.25 * np.sin(2 * np.pi * d / 365.25) + 0.3
    forecast = value / np.exp(error)[:, None]
    disposition = np.full((T, 1), dsp.MISSING)
    disposition[::7] = dsp.ASSIMILATED
    forecast[3::7] = 100.0                          # not offered to the filter (withheld): not counted
    prepared = SimpleNamespace(layout=layout, day0=day0,
                               cycle_obs=SimpleNamespace(obs=SimpleNamespace(state_index=index, value=value)))
    harmonic = chlorophyll_seasonal_ratio(prepared, SimpleNamespace(obs_forecast=forecast, disposition=disposition))
    np.testing.assert_allclose(harmonic[0, 0], [0.4, -0.25], atol=1e-9)
    np.testing.assert_allclose(harmonic_fit(np.array([0.0, 91.3, 182.6, 273.9]), [1.0, 1.0, 1.0, 1.0]), [0, 0],
                               atol=1e-12)
    with pytest.raises(Exception, match="calibrate_chlorophyll_seasonal needs calibrate_chlorophyll"):
        parse_config({"hindcast": {"calibrate_chlorophyll_seasonal": True}})


def test_chlorophyll_scale_layers_are_checked():
    from twin.errors import ConfigError
    with pytest.raises(ConfigError, match=r"sites\.0\.chlorophyll_scale"):
        parse_config({"sites": [{"name": "x", "latitude": 43, "longitude": 7,
                                 "chlorophyll_scale": {"middle": 2.0}}]})
    with pytest.raises(ConfigError, match=r"sites\.0\.chlorophyll_scale"):
        parse_config({"sites": [{"name": "x", "latitude": 43, "longitude": 7,
                                 "chlorophyll_scale": {"surface": 0.0}}]})


@pytest.mark.slow
def test_calibration_undoes_a_wrong_chlorophyll_scale(tmp_path, monkeypatch):
    """A twin experiment whose chlorophyll diagnostic starts at half the truth's (scale 0.5): two passes move
    the scales back towards 1, the forecasts at the assimilated samples become nearly unbiased, and the
    resolved config and metrics record the estimate. 80 days give 9 weekly bottles per layer (the buoy's
    chlorophyll is fluorescence, not assimilated as chlorophyll): the sample minimum is lowered to 5."""
    import yaml

    import twin.hindcast
    monkeypatch.setattr(twin.hindcast, "CALIBRATION_MIN_SAMPLES", 5)
    site = {"name": "SYNTH-B", "latitude": 43.68, "longitude": 7.32,
            "chlorophyll_scale": {"surface": 0.5, "bottom": 0.5}}
    config = dict(PLAIN, sites=[site], hindcast={"window_days": 80, "calibrate_chlorophyll": 2},
                  experiment={**PLAIN["experiment"], "days": 80}, filter={"members": 8, "inflation": 1.05},
                  validation={"withhold_fraction": 0.0})
    metrics = run_hindcast(parse_config(config), tmp_path / "run", quiet=True)
    passes = metrics["chlorophyll_calibration"]
    assert [p["pass"] for p in passes] == [1, 2]
    first, last = passes[0]["observed_over_forecast"], passes[-1]["observed_over_forecast"]
    assert first["SYNTH-B/surface"] > 1.5  # half the chlorophyll: forecasts about half the samples
    assert abs(np.log(last["SYNTH-B/surface"])) < 0.5 * abs(np.log(first["SYNTH-B/surface"]))
    assert "Chlorophyll calibration" in (tmp_path / "run" / "report.html").read_text()
    resolved = yaml.safe_load((tmp_path / "run" / "resolved_config.yaml").read_text())
    scale = resolved["sites"][0]["chlorophyll_scale"]
    assert 0.7 < scale["surface"] < 1.5 and 0.6 < scale["bottom"] < 1.6


def test_letkf_hindcast_of_one_site_is_the_etkf_hindcast(run, tmp_path):
    """filter.method letkf at a single site: one local domain that sees every observation with taper 1, so
    the reanalysis is the ETKF's (the module's run; its alerts do not touch the cycles) to float32
    eigensolver round-off over 120 cycles (rtol 1e-3), with the same dispositions."""
    config = parse_config({**PLAIN, "filter": {**PLAIN["filter"], "method": "letkf", "localization_radius_km": 30}})
    run_hindcast(config, tmp_path / "letkf", quiet=True)
    with xr.open_dataset(run[0] / "reanalysis.nc") as etkf, \
            xr.open_dataset(tmp_path / "letkf" / "reanalysis.nc") as letkf:
        for v in ("nitrate", "zooplankton", "oxygen", "chlorophyll"):
            np.testing.assert_allclose(letkf[v].values, etkf[v].values, rtol=1e-3)
        np.testing.assert_array_equal(letkf["obs_disposition"].values, etkf["obs_disposition"].values)


def test_withheld_values_follow_the_observation_not_its_row():
    """The withheld set of a station is the same alone and in a network; replicates go with their value;
    the fraction is the configured one (20000 draws: 0.2 +- 0.01, 3.5 binomial sd)."""
    from twin import flags
    from twin.hindcast import _withhold
    from twin.state_layout import StateLayout

    def table(sites, days=2500):
        rows = [(s, layer, v, np.datetime64("2000-01-01T09:00", "ns") + np.timedelta64(d, "D"))
                for s in sites for d in range(days) for layer in ("surface", "bottom") for v in ("nitrate", "oxygen")]
        site, layer, variable, time = (np.array(c) for c in zip(*rows))
        return xr.Dataset({"site": ("obs", site.astype(object)), "layer": ("obs", layer.astype(object)),
                           "variable": ("obs", variable.astype(object)), "time": ("obs", time),
                           "qc": ("obs", np.full(len(rows), flags.GOOD, np.int8)),
                           "value": ("obs", np.ones(len(rows)))})
    alone, network = table(["A"]), table(["B", "A"])
    w_alone = _withhold(alone, StateLayout(("A",), 2), 0.2, seed=7)
    w_net = _withhold(network, StateLayout(("B", "A"), 2), 0.2, seed=7)
    assert abs(w_alone.mean() - 0.2) < 0.01
    in_a = network["site"].values == "A"
    np.testing.assert_array_equal(w_net[in_a], w_alone)            # rows of A keep their draws
    assert not np.array_equal(_withhold(alone, StateLayout(("A",), 2), 0.2, seed=8), w_alone)
    doubled = xr.concat([alone, alone], dim="obs")                 # every value with a replicate
    w_doubled = _withhold(doubled, StateLayout(("A",), 2), 0.2, seed=7)
    np.testing.assert_array_equal(w_doubled[:alone.sizes["obs"]], w_doubled[alone.sizes["obs"]:])

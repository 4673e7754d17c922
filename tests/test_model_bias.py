"""Model-bias and sensor-offset elements of the state (augmented-state bias estimation): layout, forecast
arithmetic, AR(1) statistics, observation mapping, and twin experiments where the filter must find a
persistent model error and a sensor's offset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from assimilation import FilterParams, Observations, initial_inflation_state
from emulators.forcing import synthetic_forcing
from emulators.parameters import default_site
from emulators.process_model import initial_state
from twin.engine import EngineState, free_forecast, run_window
from twin.forecast import ModelBias, initial_ensemble, make_forecast, model_bias, stack_sites
from twin.state_layout import StateLayout


def test_layout_places_one_bias_per_tracer_and_layer_after_the_diagnostics():
    plain = StateLayout(("A", "B"), 2)
    layout = StateLayout(("A", "B"), 2, ("oxygen", "nitrate"))
    assert (plain.dim, layout.dim) == (36, 44)
    parts = np.concatenate([layout.model_slices().ravel(), layout.diagnostic_slices().ravel(),
                            layout.bias_slices().ravel()])
    assert_array_equal(np.sort(parts), np.arange(layout.dim))          # every element exactly once
    names = layout.names()
    assert len(set(names)) == layout.dim
    assert names[layout.bias_slices()[1, 1]] == "oxygen_bias@B/bottom"
    assert layout.index("oxygen_bias", "B", "bottom") == layout.bias_slices()[1, 1]
    assert layout.index("nitrate_bias", "A", "surface") == layout.bias_slices()[0, 2]
    assert layout.index("silicate_bias", "A", "surface") == -1        # not biased
    # The tracers each bias acts on, within a site's model state, in bias order.
    model_names = [names[i] for i in layout.model_slices()[0]]
    assert [model_names[t] for t in layout.bias_targets()] == [
        "oxygen@A/surface", "oxygen@A/bottom", "nitrate@A/surface", "nitrate@A/bottom"]
    assert_array_equal(np.flatnonzero(~layout.log_mask()), np.sort(layout.bias_slices().ravel()))
    assert plain.log_mask().all()
    assert layout.state_variables()[-2:] == ("oxygen_bias", "nitrate_bias")


def _identity(x, forcing_t, model_params=None):
    return x


def _setup(biased=("oxygen",), days=300):
    layout = StateLayout(("A",), 2, biased)
    sites = stack_sites([default_site(2, 43.0)])
    forcing = stack_sites([synthetic_forcing(days, latitude=43.0)])
    return layout, sites, forcing


def test_bias_multiplies_its_tracer_and_decays_with_its_timescale():
    layout, sites, forcing = _setup()
    bias = ModelBias(np.array([0.1, 0.1], np.float32), np.array([10.0, 10.0], np.float32), noise=False)
    forecast = make_forecast(_identity, layout, sites, np.zeros(layout.model_dim, np.float32), bias=bias)
    x0 = initial_ensemble(jax.random.PRNGKey(0), layout, 3, np.asarray(initial_state(2))[None], 0.3, bias)
    x0 = x0.at[:, layout.bias_slices()[0]].set(jnp.asarray([0.05, -0.02]))
    f0 = jax.tree.map(lambda a: a[0], forcing)
    x1 = np.asarray(forecast(x0, f0, jax.random.PRNGKey(1)))
    x0 = np.asarray(x0)
    o_s, o_b = layout.index("oxygen", "A", "surface"), layout.index("oxygen", "A", "bottom")
    assert_allclose(x1[:, o_s], x0[:, o_s] * np.exp(0.05), rtol=1e-6)
    assert_allclose(x1[:, o_b], x0[:, o_b] * np.exp(-0.02), rtol=1e-6)
    others = [i for i in layout.model_slices()[0] if i not in (o_s, o_b)]
    assert_allclose(x1[:, others], x0[:, others], rtol=1e-6)          # other tracers untouched
    assert_allclose(x1[:, layout.bias_slices()[0]], np.array([[0.05, -0.02]] * 3) * np.exp(-0.1), rtol=1e-6)


def test_chlorophyll_bias_is_a_level_on_the_diagnostic_not_a_rate_on_the_tracers():
    """model.bias 'chlorophyll' (the model's Chl:N error): the day's chlorophyll is the diagnostic of the new
    state times exp(b') with b' the bias after its AR(1) step; the tracers and the diagnostic's recomputation
    are otherwise those of the unbiased twin (rtol 1e-6, float32)."""
    layout, sites, forcing = _setup(("chlorophyll",))
    plain_layout, _, _ = _setup(())
    bias = ModelBias(np.array([0.2, 0.2], np.float32), np.array([10.0, 10.0], np.float32), noise=False)
    zero = np.zeros(layout.model_dim, np.float32)
    forecast = make_forecast(_identity, layout, sites, zero, bias=bias)
    plain = make_forecast(_identity, plain_layout, sites, zero)
    x0 = initial_ensemble(jax.random.PRNGKey(0), layout, 3, np.asarray(initial_state(2))[None], 0.3, bias)
    x0 = x0.at[:, layout.bias_slices()[0]].set(jnp.asarray([0.3, -0.1]))
    f0 = jax.tree.map(lambda a: a[0], forcing)
    x1 = np.asarray(forecast(x0, f0, jax.random.PRNGKey(1)))
    p1 = np.asarray(plain(x0[:, :plain_layout.dim], f0, jax.random.PRNGKey(1)))
    b1 = np.array([0.3, -0.1]) * np.exp(-0.1)
    assert_allclose(x1[:, layout.bias_slices()[0]], np.tile(b1, (3, 1)), rtol=1e-6)
    assert_allclose(x1[:, layout.model_slices()[0]], p1[:, plain_layout.model_slices()[0]], rtol=1e-6)
    chl = [layout.index("chlorophyll", "A", layer) for layer in layout.layers]
    assert_allclose(x1[:, chl], p1[:, chl] * np.exp(b1), rtol=1e-6)
    assert layout.bias_targets().tolist() == chl                     # positions of the diagnostic
    assert layout.units("chlorophyll_bias") == "1"


def test_summary_prints_a_tracer_bias_per_day_and_the_chl_n_error_as_a_share_of_the_ratio():
    from twin.cli import _summary_lines
    entry = {"mean": 0.1, "q05": -0.05, "q95": 0.2, "last": 0.01}
    metrics = {"name": "x", "period": {"days": 10, "start": "2016-01-01"}, "model": "emulator",
               "model_bias": {"oxygen_bias@A/surface": entry, "chlorophyll_bias@A/surface": entry}}
    lines = _summary_lines(metrics)
    assert "model bias oxygen_bias@A/surface: +10.00 % per day on average (5-95 % over time -5.00 to +20.00), " \
           "last +1.00" in lines
    # 100 (exp(b) - 1): +10.5 % for b = 0.1, -4.9 for -0.05, +22.1 for 0.2, +1.0 for 0.01
    assert "model Chl:N error chlorophyll_bias@A/surface: +10.5 % of the ratio on average (5-95 % over time " \
           "-4.9 to +22.1), last +1.0" in lines


def test_model_bias_without_its_ar1_is_an_error():
    layout, sites, _ = _setup()
    with pytest.raises(ValueError, match="model biases of \\['oxygen'\\]"):
        make_forecast(_identity, layout, sites, np.zeros(layout.model_dim, np.float32))
    with pytest.raises(ValueError, match="model.bias names"):
        model_bias({"nitrate": None}, layout)


def test_bias_ar1_keeps_its_stationary_sd():
    """Started from its stationary distribution, each bias keeps sd ``sd`` and zero mean over 300 days
    (512 members: the sd of a sample sd is 3 %, tolerance 12 %)."""
    layout, sites, forcing = _setup()
    sd = np.array([0.02, 0.005], np.float32)
    bias = ModelBias(sd, np.array([30.0, 30.0], np.float32))
    forecast = make_forecast(_identity, layout, sites, np.zeros(layout.model_dim, np.float32), bias=bias)
    x0 = initial_ensemble(jax.random.PRNGKey(0), layout, 512, np.asarray(initial_state(2))[None], 0.3, bias)
    run = np.asarray(free_forecast(forecast, x0, forcing, jax.random.PRNGKey(2), 300))
    b = run[[0, 99, 299]][..., layout.bias_slices()[0]]                  # (3 days, N, 2)
    assert_allclose(b.std(axis=1, ddof=1), np.tile(sd, (3, 1)), rtol=0.12)
    assert np.all(np.abs(b.mean(axis=1)) < 4 * sd / np.sqrt(512))
    # Consecutive days are correlated as the AR(1): lag-1 correlation exp(-1/30) = 0.967.
    r = np.corrcoef(run[200, :, layout.bias_slices()[0, 0]], run[201, :, layout.bias_slices()[0, 0]])[0, 1]
    assert abs(r - np.exp(-1 / 30)) < 0.02


def test_filter_finds_a_persistent_model_error_and_forecasts_better_with_it():
    """Truth: a model that relaxes every tracer 30 % a day towards its start, with surface oxygen raised by
    3 % a day on top (so it settles 11 % above the model's level). Daily surface-oxygen observations (error
    1 %). Without a bias element the twin's one-day forecast falls back 30 % of the anomaly each day; with
    one, the filter estimates the 3 % and the forecast keeps the anomaly."""
    T, N = 240, 32
    x_eq = jnp.asarray(np.asarray(initial_state(2)))

    def relax(x, forcing_t, model_params=None):
        return x + 0.3 * (x_eq - x)

    layout, sites, forcing = _setup(days=T)
    zero = np.zeros(layout.model_dim, np.float32)
    truth_bias = ModelBias(np.array([0.0, 0.0], np.float32), np.array([1e9, 1e9], np.float32), noise=False)
    truth_fc = make_forecast(relax, layout, sites, zero, bias=truth_bias)
    x = jnp.zeros((1, layout.dim)).at[:, layout.model_slices()[0]].set(x_eq)
    x = x.at[:, layout.bias_slices()[0, 0]].set(0.03)
    truth = np.asarray(free_forecast(truth_fc, x, forcing, jax.random.PRNGKey(0), T))[:, 0]  # (T, n)
    o_s = layout.index("oxygen", "A", "surface")
    assert truth[-1, o_s] / float(x_eq[7]) == pytest.approx(1.109, abs=0.002)  # the settled anomaly

    rng = np.random.default_rng(0)
    err = 0.01 * truth[:, o_s]
    value = truth[:, o_s] + err * rng.standard_normal(T)

    def run(biased):
        lay, _, _ = _setup(biased)
        bias = ModelBias(np.array([0.05, 0.0], np.float32), np.array([100.0, 100.0], np.float32)) if biased \
            else None
        fc = make_forecast(relax, lay, sites, np.full(lay.model_dim, 0.01, np.float32), bias=bias)
        members = initial_ensemble(jax.random.PRNGKey(1), lay, N, np.asarray(x_eq)[None], 0.05, bias)
        i = lay.index("oxygen", "A", "surface")
        obs = Observations(value=jnp.asarray(value, jnp.float32)[:, None], error_sd=jnp.asarray(err, jnp.float32)
                           [:, None], state_index=jnp.full((T, 1), i, jnp.int32), mask=jnp.ones((T, 1), bool),
                           qc_ok=jnp.ones((T, 1), bool))
        params = FilterParams(inflation_factor=1.0, rtps_alpha=0.5)
        _, out = run_window(fc, EngineState(members, initial_inflation_state()), obs, forcing, jax.random.PRNGKey(3),
                            params, jnp.asarray(lay.log_mask()))
        late = slice(T // 2, None)
        rmse = float(np.sqrt(np.mean((np.asarray(out.forecast_mean)[late, i] - truth[late, o_s]) ** 2)))
        b = np.asarray(out.analysis_mean)[late, lay.bias_slices()[0, 0]] if biased else None
        return rmse, b

    rmse_plain, _ = run(())
    rmse_biased, b = run(("oxygen",))
    anomaly = truth[-1, o_s] - float(x_eq[7])
    assert rmse_plain > 0.2 * anomaly                    # without: about 30 % of the anomaly each day
    assert rmse_biased < 0.4 * rmse_plain                # seen: 11.2 without, 2.8 with
    assert abs(b.mean() - 0.03) < 0.006                  # the filter's estimate of the daily 3 % (seen 0.0288)


SMALL_BIASED = {
    "name": "small-osse-bias",
    "experiment": {"days": 120, "seed": 2, "start": "2016-03-01",
                   "buoy_offsets": {"oxygen": {"sd": 0.05, "timescale_days": 3650}}},
    "model": {"kind": "process", "substeps": 6,
              "bias": {"oxygen": {"sd_per_day": {"surface": 0.01}, "timescale_days": 60}}},
    "filter": {"members": 12, "inflation": 1.05},
    "hindcast": {"window_days": 60},
}


def test_hindcast_carries_the_bias_into_its_products_and_a_store(tmp_path):
    """The reanalysis holds the analysed biases (unit d-1) and the buoy's oxygen offset; metrics summarise
    them and do not score them against the truth (which has none); the report and the command line show
    them; a store started from the hindcast takes them (drawn normally: they can be negative)."""
    import json

    import xarray as xr

    from twin.config import parse_config
    from twin.hindcast import run_hindcast
    from twin.operational import init_store, load_store_config, store_layout
    from twin.store import Store

    config = parse_config(SMALL_BIASED)
    out = tmp_path / "hc"
    metrics = run_hindcast(config, out, quiet=True)
    with xr.open_dataset(out / "reanalysis.nc") as ds:
        b = ds["oxygen_bias"].values                              # (time, site, layer)
        assert ds["oxygen_bias"].attrs["units"] == "d-1"
        assert np.all(np.isfinite(b[:, 0, 0])) and np.any(b[:, 0, 0] != 0)
        assert_array_equal(b[:, 0, 1], 0.0)                        # sd 0 at the bottom: no bias there
        assert np.all(ds["oxygen_bias_sd"].values[:, 0, 0] > 0)
        last = float(b[-1, 0, 0])
        last_sd = float(ds["oxygen_bias_sd"].values[-1, 0, 0])
    summary = metrics["model_bias"]
    assert list(summary) == ["oxygen_bias@SYNTH-B/surface"]
    assert summary["oxygen_bias@SYNTH-B/surface"]["last"] == pytest.approx(last, rel=1e-5)
    assert not any("_bias@" in k for k in metrics["truth"])
    assert "oxygen@SYNTH-B/surface" in metrics["truth"]
    report = (out / "report.html").read_text()
    assert "Model bias" in report and "Sensor offsets" in report
    offset = metrics["sensor_offsets"]
    assert list(offset) == ["oxygen_offset_buoy@SYNTH-B/surface"]     # the buoy sees the surface only
    # The experiment's optode drifts by -12 mmol m-3 a year: after 120 days the offset is negative.
    entry = offset["oxygen_offset_buoy@SYNTH-B/surface"]
    assert entry["last"] < 0 and entry["truth_last"] < 0
    assert entry["rmse_vs_truth"] < 0.05                              # the prior sd of the offset
    from twin.cli import _summary_lines
    assert any(line.startswith("sensor offset oxygen_offset_buoy@SYNTH-B/surface: reads -")
               for line in _summary_lines(metrics))
    assert json.loads((out / "metrics.json").read_text())["model_bias"] == summary

    store = tmp_path / "store"
    init_store(store, config, from_hindcast=out, quiet=True)
    s = Store(store)
    layout = store_layout(load_store_config(s))             # with the experiment's sources, the buoy's offset
    assert ("buoy", "oxygen") in layout.sensors
    members = s.load_arrays(s.manifest()["files"]["state"])["members"]
    i = layout.index("oxygen_bias", "SYNTH-B", "surface")
    assert np.all(np.isfinite(members[:, i]))
    assert members[:, i].mean() == pytest.approx(last, abs=4 * last_sd / np.sqrt(12))


# ---------------------------------------------------------------- sensor offsets

def test_layout_places_an_offset_and_a_reading_per_sensor_variable_and_layer():
    layout = StateLayout(("A", "B"), 2, ("oxygen",), (("buoy", "oxygen"), ("buoy", "chlorophyll")))
    assert layout.dim == 2 * (16 + 2 + 2 + 4 + 4)
    parts = np.concatenate([layout.model_slices().ravel(), layout.diagnostic_slices().ravel(),
                            layout.bias_slices().ravel(), layout.sensor_offset_slices().ravel(),
                            layout.sensor_seen_slices().ravel()])
    assert_array_equal(np.sort(parts), np.arange(layout.dim))
    names = layout.names()
    assert names[layout.sensor_offset_slices()[1, 3]] == "chlorophyll_offset_buoy@B/bottom"
    assert names[layout.sensor_seen_slices()[0, 0]] == "oxygen_buoy@A/surface"
    # A sensor's observations see its reading; another source's, the sea.
    assert layout.observation_index("oxygen", "B", "surface", sensor="buoy") == layout.index("oxygen_buoy", "B",
                                                                                            "surface")
    assert layout.observation_index("oxygen", "B", "surface", sensor="bottles") == layout.index("oxygen", "B",
                                                                                               "surface")
    assert layout.observation_index("nitrate", "B", "surface", sensor="buoy") == layout.index("nitrate", "B",
                                                                                             "surface")
    model_names = names[:layout.site_dim]
    assert [model_names[t] for t in layout.sensor_targets()] == [
        "oxygen@A/surface", "oxygen@A/bottom", "chlorophyll@A/surface", "chlorophyll@A/bottom"]
    linear = np.sort(np.concatenate([layout.bias_slices().ravel(), layout.sensor_offset_slices().ravel()]))
    assert_array_equal(np.flatnonzero(~layout.log_mask()), linear)
    assert_array_equal(np.flatnonzero(~layout.inflation_mask()), linear)
    assert StateLayout(("A",), 2).inflation_mask() is None
    assert layout.units("oxygen_buoy") == "mmol m-3" and layout.units("oxygen_offset_buoy") == "1"


def test_reading_is_the_variable_times_exp_offset():
    layout = StateLayout(("A",), 2, (), (("buoy", "oxygen"), ("buoy", "chlorophyll")))
    sites = stack_sites([default_site(2, 43.0)])
    forcing = stack_sites([synthetic_forcing(3, latitude=43.0)])
    offsets = ModelBias(np.full(4, 0.05, np.float32), np.full(4, 100.0, np.float32), noise=False)
    forecast = make_forecast(_identity, layout, sites, np.zeros(layout.model_dim, np.float32), offsets=offsets)
    x0 = initial_ensemble(jax.random.PRNGKey(0), layout, 4, np.asarray(initial_state(2))[None], 0.3,
                          offsets=offsets)
    x1 = np.asarray(forecast(x0, jax.tree.map(lambda a: a[0], forcing), jax.random.PRNGKey(1)))
    c = np.asarray(x0)[:, layout.sensor_offset_slices()[0]] * np.exp(-1 / 100)
    assert_allclose(x1[:, layout.sensor_offset_slices()[0]], c, rtol=1e-6)
    made_of = x1[:, layout.sensor_targets()]
    assert_allclose(x1[:, layout.sensor_seen_slices()[0]], made_of * np.exp(c), rtol=1e-6)
    assert np.all(made_of[:, 2:] > 0)                                    # chlorophyll: the diagnostic
    with pytest.raises(ValueError, match="sensor offsets"):
        make_forecast(_identity, layout, sites, np.zeros(layout.model_dim, np.float32))


def _sensor_table():
    """Surface oxygen at site A: 24 hourly buoy values on day 2 (the drift test flags them bad), a bottle."""
    from twin.observations import make_observations
    day0 = np.datetime64("2020-01-01", "ns")
    hourly = day0 + np.timedelta64(2, "D") + np.arange(24) * np.timedelta64(1, "h") - np.timedelta64(12, "h")
    times = np.concatenate([hourly, [day0 + np.timedelta64(2, "D")]])
    table = make_observations(time=times, site="A", variable="oxygen", value=np.full(25, 240.0),
                              qc=np.array([4] * 24 + [1], np.int8), native_qc="1",
                              source=["/data/buoy/2020.csv"] * 24 + ["/data/bottles.csv"], layer="surface",
                              error_sd=np.full(25, 4.0))
    from twin.qc import QC_TESTS
    for t in QC_TESTS:
        table[f"qc_{t}"] = ("obs", np.where(np.arange(25) < 24, 4 if t == "reference_drift" else 1, 1).astype(np.int8))
    table["qc_native"] = ("obs", np.ones(25, np.int8))
    return table, day0


def test_sensor_rows_see_the_reading_and_are_not_dropped_for_drifting():
    from twin import dispositions as disp
    from twin.config import SourceConfig
    from twin.cycle_obs import build_cycle_observations
    from twin.ingest import sensor_of_rows
    table, day0 = _sensor_table()
    sources = [SourceConfig(path="/data/buoy/*.csv", name="buoy", offsets={"oxygen": {}}),
               SourceConfig(path="/data/bottles.csv", name="bottles")]
    sensor = sensor_of_rows(table, sources)
    assert sensor.tolist() == ["buoy"] * 24 + [""]
    layout = StateLayout(("A",), 2, (), (("buoy", "oxygen"),))
    co = build_cycle_observations(table, layout, day0, 5, sensor=sensor)
    assert sorted(co.group_state_index.tolist()) == sorted([layout.index("oxygen_buoy", "A", "surface"),
                                                           layout.index("oxygen", "A", "surface")])
    assert np.all(co.disposition < 0)                 # all 25 reach the filter: the drift flag does not stop them
    # Without an offset for the buoy its drifting values stay out, and a layout with offsets needs the sensors.
    plain = build_cycle_observations(table, StateLayout(("A",), 2), day0, 5)
    assert np.all(plain.disposition[:24] == disp.BAD_QC)
    with pytest.raises(ValueError, match="pass each row's sensor"):
        build_cycle_observations(table, layout, day0, 5)


def test_filter_separates_a_sensor_offset_from_the_sea():
    """The sea's surface oxygen follows the model; a daily sensor reads it 6 % low (offset log 0.94), weekly
    bottles read it right. The filter's offset estimate settles near log 0.94, and its oxygen follows the
    bottles, not the sensor."""
    T, N = 200, 24
    x_eq = jnp.asarray(np.asarray(initial_state(2)))

    def relax(x, forcing_t, model_params=None):
        return x + 0.3 * (x_eq - x)

    layout = StateLayout(("A",), 2, (), (("buoy", "oxygen"),))
    sites = stack_sites([default_site(2, 43.0)])
    forcing = stack_sites([synthetic_forcing(T, latitude=43.0)])
    offsets = ModelBias(np.array([0.1, 0.1], np.float32), np.array([3650.0, 3650.0], np.float32))
    fc = make_forecast(relax, layout, sites, np.full(layout.model_dim, 0.01, np.float32), offsets=offsets)
    members = initial_ensemble(jax.random.PRNGKey(1), layout, N, np.asarray(x_eq)[None], 0.05, offsets=offsets)
    true_o2 = float(x_eq[7])
    rng = np.random.default_rng(0)
    sensor_value = true_o2 * 0.94 + 1.0 * rng.standard_normal(T)
    bottle_value = np.where(np.arange(T) % 7 == 0, true_o2 + 2.0 * rng.standard_normal(T), np.nan)
    i_seen, i_sea = layout.index("oxygen_buoy", "A", "surface"), layout.index("oxygen", "A", "surface")
    value = np.stack([sensor_value, bottle_value], axis=1).astype(np.float32)
    obs = Observations(value=jnp.asarray(value), error_sd=jnp.tile(jnp.asarray([1.0, 2.0]), (T, 1)),
                       state_index=jnp.tile(jnp.asarray([i_seen, i_sea], jnp.int32), (T, 1)),
                       mask=jnp.asarray(np.isfinite(value)), qc_ok=jnp.ones((T, 2), bool))
    params = FilterParams(inflation_factor=1.05)
    _, out = run_window(fc, EngineState(members, initial_inflation_state()), obs, forcing, jax.random.PRNGKey(3),
                        params, jnp.asarray(layout.log_mask()), inflation_mask=jnp.asarray(layout.inflation_mask()))
    late = slice(T // 2, None)
    c = np.asarray(out.analysis_mean)[late, layout.index("oxygen_offset_buoy", "A", "surface")]
    sea = np.asarray(out.analysis_mean)[late, i_sea]
    assert abs(c.mean() - np.log(0.94)) < 0.01                  # seen: -0.0632 against -0.0619
    assert abs(sea.mean() - true_o2) < 0.01 * true_o2           # the sea, not the sensor's 6 % low (seen 235.25)
    # The unobserved bottom offset is not inflated every cycle (seen sd 0.009; 1.05 ** 200 times more if it were).
    assert np.asarray(out.analysis_sd)[-1, layout.index("oxygen_offset_buoy", "A", "bottom")] < 0.15

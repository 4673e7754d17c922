"""Model-bias elements of the state (augmented-state bias estimation): layout, forecast arithmetic, AR(1)
statistics, and a twin experiment where the filter must find a persistent model error."""
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
    "experiment": {"days": 120, "seed": 2, "start": "2016-03-01"},
    "model": {"kind": "process", "substeps": 6,
              "bias": {"oxygen": {"sd_per_day": {"surface": 0.01}, "timescale_days": 60}}},
    "filter": {"members": 12, "inflation": 1.05},
    "hindcast": {"window_days": 60},
}


def test_hindcast_carries_the_bias_into_its_products_and_a_store(tmp_path):
    """The reanalysis holds the analysed biases (unit d-1); metrics summarise them and do not score them
    against the truth (which has none); the report shows them; a store started from the hindcast takes
    them (drawn normally: they can be negative)."""
    import json

    import xarray as xr

    from twin.config import parse_config
    from twin.hindcast import run_hindcast
    from twin.operational import init_store, store_layout
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
    assert "Model bias" in (out / "report.html").read_text()
    assert json.loads((out / "metrics.json").read_text())["model_bias"] == summary

    store = tmp_path / "store"
    init_store(store, config, from_hindcast=out, quiet=True)
    layout = store_layout(config)
    s = Store(store)
    members = s.load_arrays(s.manifest()["files"]["state"])["members"]
    i = layout.index("oxygen_bias", "SYNTH-B", "surface")
    assert np.all(np.isfinite(members[:, i]))
    assert members[:, i].mean() == pytest.approx(last, abs=4 * last_sd / np.sqrt(12))

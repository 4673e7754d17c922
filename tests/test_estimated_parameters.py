"""Parameters estimated with the state (``model.estimate_parameters``): layout, the forecast's arithmetic with
the demo emulator, the AR(1) of the factors, the config's checks, and a twin experiment where the filter must
find a parameter the model got wrong."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from numpy.testing import assert_allclose, assert_array_equal

from emulators.checkpoint import load_checkpoint
from emulators.forcing import synthetic_forcing
from emulators.parameters import ProcessParams, default_site
from emulators.process_model import initial_state
from twin.config import parse_config
from twin.forecast import (
    EmulatorModelParams,
    ModelBias,
    emulator_model_params,
    emulator_stepper,
    estimated_parameters,
    initial_ensemble,
    make_forecast,
    process_stepper,
    stack_sites,
)
from twin.state_layout import StateLayout

DEMO_EMULATOR = Path(__file__).resolve().parents[1] / "configs" / "emulators" / "demo"


@pytest.fixture(scope="module")
def emulator():
    return load_checkpoint(DEMO_EMULATOR)


def test_layout_gives_each_site_one_factor_per_parameter_at_every_layer():
    layout = StateLayout(("A", "B"), 2, ("chlorophyll",), (("buoy", "oxygen"),), ("max_growth_rate", "phyto_mortality"))
    plain = StateLayout(("A", "B"), 2, ("chlorophyll",), (("buoy", "oxygen"),))
    assert layout.dim == plain.dim + 2 * 2
    parts = np.concatenate([layout.model_slices().ravel(), layout.diagnostic_slices().ravel(),
                            layout.bias_slices().ravel(), layout.sensor_offset_slices().ravel(),
                            layout.sensor_seen_slices().ravel(), layout.parameter_slices().ravel()])
    assert_array_equal(np.sort(parts), np.arange(layout.dim))          # every element exactly once
    names = layout.names()
    assert len(set(names)) == layout.dim == len(layout.variables())
    i = layout.parameter_slices()[1, 1]
    assert names[i] == "phyto_mortality_log_factor@B/surface"         # listed once, at the first layer
    assert layout.index("phyto_mortality_log_factor", "B", "surface") == i
    assert layout.index("phyto_mortality_log_factor", "B", "bottom") == i  # the site's, at every layer
    assert layout.index("max_grazing_rate_log_factor", "B", "surface") == -1  # not estimated
    # The blocks before the factors keep their places.
    assert layout.index("oxygen_buoy", "B", "bottom") - layout.site_dim == plain.index("oxygen_buoy", "B", "bottom") \
        - plain.site_dim
    # Analysed in linear space (a log factor can be negative), and left to their AR(1) by inflation.
    linear = np.flatnonzero(~layout.log_mask())
    assert set(layout.parameter_slices().ravel()) <= set(linear)
    assert not layout.inflation_mask()[layout.parameter_slices().ravel()].any()
    assert StateLayout(("A",), 2, (), (), ("max_growth_rate",)).inflation_mask() is not None


def _one_day():
    forcing = stack_sites([synthetic_forcing(3, latitude=43.68)])
    return type(forcing)(*(a[1] for a in forcing))


def test_each_member_steps_with_its_own_parameter_values(emulator):
    """A member whose factor is theta steps as the emulator given the parameter's value times exp(theta)
    (rtol 1e-5, float32), its other parameter inputs at the emulator's values; the factor then takes its AR(1)
    step (without noise: times exp(-1 / timescale))."""
    layout = StateLayout(("A",), 2, estimated=("max_growth_rate",))
    sites = stack_sites([default_site(2, 43.68)])
    ar1 = ModelBias(np.array([0.2], np.float32), np.array([50.0], np.float32), noise=False)
    stepper = emulator_stepper(emulator)
    forecast = make_forecast(stepper, layout, sites, np.zeros(layout.model_dim, np.float32), parameters=ar1)
    x0 = initial_ensemble(jax.random.PRNGKey(0), layout, 3, np.asarray(initial_state(2))[None], 0.2, parameters=ar1)
    theta = np.array([-0.3, 0.0, 0.4], np.float32)
    x0 = x0.at[:, layout.parameter_slices()[0, 0]].set(theta)
    day = _one_day()
    x1 = np.asarray(forecast(x0, day, jax.random.PRNGKey(1)))
    own = emulator_model_params(emulator)
    k = stepper.parameter_names.index("max_growth_rate")
    model = np.asarray(layout.model_slices()[0])
    for m in range(3):
        values = own.parameters.at[k].multiply(np.exp(theta[m]))
        alone = stepper(x0[m:m + 1, model][:, None], day, EmulatorModelParams(own.weights, values))
        assert_allclose(x1[m, model], np.asarray(alone)[0, 0], rtol=1e-5)
    assert not np.allclose(x1[0, model], x1[2, model], rtol=1e-3)     # the factor matters
    assert_allclose(x1[:, layout.parameter_slices()[0, 0]], theta * np.exp(-1 / 50.0), rtol=1e-6)


def test_factors_keep_their_stationary_spread_and_are_drawn_from_it(emulator):
    layout = StateLayout(("A", "B"), 2, estimated=("max_grazing_rate",))
    ar1 = ModelBias(np.array([0.15], np.float32), np.array([20.0], np.float32))
    x0 = initial_ensemble(jax.random.PRNGKey(3), layout, 4000, np.asarray(initial_state(2))[None].repeat(2, 0),
                          0.2, parameters=ar1)
    theta0 = np.asarray(x0[:, layout.parameter_slices().ravel()])
    assert_allclose(theta0.std(0), 0.15, rtol=0.05)                   # 4000 draws: sd within 5 %
    assert abs(np.corrcoef(theta0.T)[0, 1]) < 0.06                    # independent per site
    # Ten AR(1) steps keep the stationary sd (the identity model: only the factors' arithmetic).
    sites = stack_sites([default_site(2, 43.0)] * 2)
    identity = lambda x, f, p=None, parameter_log_factors=None: x  # noqa: E731
    identity.parameter_names = ("max_growth_rate", "max_grazing_rate")
    forecast = jax.jit(make_forecast(identity, layout, sites, np.zeros(layout.model_dim, np.float32),
                                     parameters=ar1))
    forcing = stack_sites([synthetic_forcing(12, latitude=43.0)] * 2)
    x = x0
    for t in range(10):
        x = forecast(x, jax.tree.map(lambda a: a[t], forcing), jax.random.PRNGKey(10 + t))
    assert_allclose(np.asarray(x[:, layout.parameter_slices().ravel()]).std(0), 0.15, rtol=0.06)


def test_a_model_without_parameter_inputs_is_refused_unless_told():
    layout = StateLayout(("A",), 2, estimated=("max_growth_rate",))
    sites = stack_sites([default_site(2, 43.0)])
    stepper = process_stepper(ProcessParams(), sites)
    ar1 = ModelBias(np.array([0.1], np.float32), np.array([100.0], np.float32))
    zero = np.zeros(layout.model_dim, np.float32)
    with pytest.raises(ValueError, match="takes no parameter inputs"):
        make_forecast(stepper, layout, sites, zero, parameters=ar1)
    with pytest.raises(ValueError, match="pass their AR"):
        make_forecast(stepper, layout, sites, zero)
    # The process-model baseline carries the factors without them acting.
    forecast = make_forecast(stepper, layout, sites, zero, parameters=ar1, parameters_act=False)
    x0 = initial_ensemble(jax.random.PRNGKey(0), layout, 2, np.asarray(initial_state(2))[None], 0.2, parameters=ar1)
    x1 = np.asarray(forecast(x0, _one_day(), jax.random.PRNGKey(1)))
    assert np.isfinite(x1).all()


def test_a_parameter_the_emulator_does_not_take_is_refused(emulator):
    layout = StateLayout(("A",), 2, estimated=("zoo_mortality",))
    ar1 = ModelBias(np.array([0.1], np.float32), np.array([100.0], np.float32))
    with pytest.raises(ValueError, match=r"does not take as inputs.*max_growth_rate"):
        make_forecast(emulator_stepper(emulator), layout, stack_sites([default_site(2, 43.0)]),
                      np.zeros(layout.model_dim, np.float32), parameters=ar1)


def _config(model: str, extra: str = "", emulator: str = "checkpoint: emulators/demo"):
    return parse_config(yaml.safe_load(f"""
name: t
sites: [{{name: A, latitude: 43.0, longitude: 7.0}}]
emulator: {{{emulator}}}
model: {model}
{extra}
"""), "t.yaml")


def test_config_checks_the_estimated_parameters():
    config = _config("{estimate_parameters: {max_growth_rate: {sd: 0.15, timescale_days: 365}}}",
                     "filter: {method: letkf, cross_variable_localization: "
                     "{oxygen: {max_growth_rate_log_factor: 0.0}}}")
    layout = StateLayout.for_config(config, 2)
    assert layout.estimated == ("max_growth_rate",)
    ar1 = estimated_parameters(config.model.estimate_parameters, layout)
    assert_allclose(ar1.persistence, np.exp(-1 / 365.0), rtol=1e-6)
    assert "max_growth_rate_log_factor" in config.augmented_names()
    with pytest.raises(Exception, match="unknown process parameter"):
        _config("{estimate_parameters: {growth: {sd: 0.1}}}")
    with pytest.raises(Exception, match="needs model.kind 'emulator'"):
        _config("{kind: process, estimate_parameters: {max_growth_rate: {sd: 0.1}}}")
    with pytest.raises(Exception, match="varied_params"):
        _config("{estimate_parameters: {zoo_mortality: {sd: 0.1}}}",
                emulator="pretrain: {varied_params: [max_growth_rate]}")
    with pytest.raises(Exception, match="does not carry"):
        _config("{}", "filter: {method: letkf, cross_variable_localization: "
                      "{oxygen: {max_growth_rate_log_factor: 0.0}}}")
    with pytest.raises(Exception, match="sd"):
        _config("{estimate_parameters: {max_growth_rate: {sd: 0}}}")


def test_twin_experiment_finds_the_growth_rate_the_model_got_wrong(emulator):
    """Identical twin with the demo emulator: the truth grows phytoplankton at 0.75 times the emulator's rate;
    the filter, told nothing of it, assimilates weekly surface nitrate and phytoplankton samples (10 %
    error) and must bring the factor's ensemble mean over the last 60 days more than half way to log(0.75), and
    forecast nitrate with at most 0.8 times the error of the same filter without the factor (0.079 against
    0.116 when written)."""
    from assimilation import FilterParams, Observations, initial_inflation_state
    from twin.engine import EngineState, run_window
    days, n = 240, 24
    layout = StateLayout(("A",), 2, estimated=("max_growth_rate",))
    plain = StateLayout(("A",), 2)
    sites = stack_sites([default_site(2, 43.68)])
    forcing = stack_sites([synthetic_forcing(days, latitude=43.68)])
    stepper = emulator_stepper(emulator)
    own = emulator_model_params(emulator)
    k = stepper.parameter_names.index("max_growth_rate")
    truth_params = EmulatorModelParams(own.weights, own.parameters.at[k].multiply(0.75))
    x = jnp.asarray(initial_state(2))[None, None]
    truth = []
    for t in range(days):
        x = stepper(x, jax.tree.map(lambda a: a[t], forcing), truth_params)
        truth.append(np.asarray(x)[0, 0])
    truth = np.array(truth)                                               # (T, 16)
    rng = np.random.default_rng(0)
    observed = [plain.index("nitrate", "A", "surface"), plain.index("phytoplankton", "A", "surface")]
    sampled = (np.arange(days) % 7) == 0
    sd = 0.1
    values = truth[:, observed] * np.exp(sd * rng.standard_normal((days, 2)))
    log_sd = np.full(layout.model_dim, 0.02, np.float32)

    def run(lay, **ar1):
        forecast = make_forecast(stepper, lay, sites, log_sd, **ar1)
        members = initial_ensemble(jax.random.PRNGKey(0), lay, n, np.asarray(initial_state(2))[None], 0.2, **ar1)
        idx = np.array([lay.index("nitrate", "A", "surface"), lay.index("phytoplankton", "A", "surface")])
        obs = Observations(value=jnp.asarray(values, jnp.float32),
                           error_sd=jnp.asarray(sd * values, jnp.float32),
                           state_index=jnp.asarray(np.broadcast_to(idx, (days, 2)), jnp.int32),
                           mask=jnp.asarray(np.broadcast_to(sampled[:, None], (days, 2))),
                           qc_ok=jnp.ones((days, 2), bool))
        state = EngineState(members, initial_inflation_state())
        _, out = run_window(forecast, state, obs, forcing, jax.random.PRNGKey(1),
                            FilterParams(inflation_factor=1.02),
                            jnp.asarray(lay.log_mask()), inflation_mask=None if lay.inflation_mask() is None
                            else jnp.asarray(lay.inflation_mask()))
        return out, idx

    ar1 = ModelBias(np.array([0.3], np.float32), np.array([1000.0], np.float32))
    out, idx = run(layout, parameters=ar1)
    theta = np.asarray(out.analysis_mean)[-60:, layout.parameter_slices()[0, 0]]
    # From 0 (prior sd 0.3) more than half way to log(0.75) = -0.288, without overshooting by 0.1 (-0.20).
    assert np.log(0.75) - 0.1 < theta.mean() < 0.5 * np.log(0.75)
    out_plain, idx_plain = run(plain)
    err = np.sqrt(np.mean((np.asarray(out.forecast_mean)[60:, idx[0]] - truth[60:, observed[0]]) ** 2))
    err_plain = np.sqrt(np.mean((np.asarray(out_plain.forecast_mean)[60:, idx_plain[0]]
                                 - truth[60:, observed[0]]) ** 2))
    assert err < 0.8 * err_plain


def test_refit_trains_on_the_analysed_parameter_values(emulator):
    """A refit's training trajectories give each step the parameter values of the cycle it starts from: the
    emulator's value times exp(the analysed factor), as in the cycles that made the analyses (exact)."""
    from emulators.training import parameter_columns
    from twin.refit import analysis_trajectories
    layout = StateLayout(("A",), 2, estimated=("max_grazing_rate",))
    days, segment = 60, 10
    rng = np.random.default_rng(0)
    mean = np.abs(rng.normal(1.0, 0.2, (days, layout.dim))).astype(np.float32)
    theta = rng.normal(0.0, 0.2, days).astype(np.float32)
    mean[:, layout.parameter_slices()[0, 0]] = theta
    forcing = stack_sites([synthetic_forcing(days, latitude=43.68)])
    base = np.asarray(emulator_model_params(emulator).parameters)
    data, _ = analysis_trajectories(mean, 0.1 * np.abs(mean), layout, forcing, emulator, 0, days, segment, base)
    names = emulator_stepper(emulator).parameter_names
    columns = parameter_columns(emulator.config.forcing_names)
    k = names.index("max_grazing_rate")
    starts = range(0, days - segment, segment)
    for g, start in enumerate(starts):
        expected = base[k] * np.exp(theta[start:start + segment])
        assert_allclose(data.forcing[g, :, columns[k]], expected, rtol=1e-6)
        others = [j for j in range(len(names)) if j != k]
        assert_allclose(data.forcing[g][:, columns[others]], np.broadcast_to(base[others], (segment, len(others))))
    # Mid-run, the analyses stop before the forcing does.
    part, _ = analysis_trajectories(mean[:45], 0.1 * np.abs(mean[:45]), layout, forcing, emulator, 0, 45, segment,
                                    base)
    assert_allclose(part.forcing[:, :, columns[k]], data.forcing[:part.num_traj, :, columns[k]], rtol=1e-6)


def test_refit_keeps_the_analysed_parameter_values_in_the_training_range(emulator):
    """A factor that takes the value out of the emulator's training range: the trajectories hold the range's
    bound, the value each member stepped with (the stepper clips it the same way), not the product."""
    from emulators.training import parameter_columns
    from twin.forecast import parameter_input_range
    from twin.refit import analysis_trajectories
    layout = StateLayout(("A",), 2, estimated=("max_grazing_rate",))
    days, segment = 60, 10
    mean = np.ones((days, layout.dim), np.float32)
    theta = np.where(np.arange(days) % 2 == 0, 3.0, -3.0).astype(np.float32)  # x20 and x0.05
    mean[:, layout.parameter_slices()[0, 0]] = theta
    forcing = stack_sites([synthetic_forcing(days, latitude=43.68)])
    base = np.asarray(emulator_model_params(emulator).parameters)
    data, _ = analysis_trajectories(mean, 0.1 * mean, layout, forcing, emulator, 0, days, segment, base)
    k = emulator_stepper(emulator).parameter_names.index("max_grazing_rate")
    low, high = parameter_input_range(emulator)
    assert base[k] * np.exp(3.0) > high[k] and base[k] * np.exp(-3.0) < low[k]
    values = data.forcing[:, :, parameter_columns(emulator.config.forcing_names)[k]]   # (traj, steps)
    expected = np.where(np.arange(segment) % 2 == 0, high[k], low[k])                  # starts are even
    assert_allclose(values, np.broadcast_to(expected, values.shape), rtol=1e-6)


def test_refit_calibrates_the_parameter_inputs_under_the_filters_factors(emulator):
    """Trajectories made by the demo emulator with a known growth rate times a factor that changes every step
    (the filter's estimates): calibrating with the factors kept finds that rate again, and fits the
    trajectories far better than replacing the columns, factors and all."""
    from emulators.network import rollout
    from emulators.training import TrajectoryData, calibrate_parameter_inputs, forcing_inputs, parameter_columns
    names = emulator_stepper(emulator).parameter_names
    k = names.index("max_growth_rate")
    columns = parameter_columns(emulator.config.forcing_names)
    defaults = np.asarray([getattr(ProcessParams(), n) for n in names], np.float32)
    truth = defaults.copy()
    truth[k] = 1.1
    days, length = 240, 30
    forcing = synthetic_forcing(days, key=jax.random.PRNGKey(3))
    factors = np.exp(0.2 * np.sin(np.arange(days) / 9.0)).astype(np.float32)
    features = np.array(forcing_inputs(emulator.config.forcing_names, forcing))      # (T, F)
    features[:, columns] = truth
    features[:, columns[k]] *= factors
    doy = jnp.asarray(forcing.day_of_year, jnp.float32)
    states = rollout(emulator.graphdef, emulator.weights, emulator.normalisation,
                     jnp.asarray(initial_state(2)), jnp.asarray(features), doy)
    states = np.concatenate([np.asarray(initial_state(2))[None], np.asarray(states)])
    told = features.copy()                                   # what the refit is given: its values x factors
    told[:, columns] = defaults
    told[:, columns[k]] *= factors
    cut = range(0, days - length + 1, length)
    data = TrajectoryData(states=np.stack([states[c:c + length + 1] for c in cut]).astype(np.float32),
                          forcing=np.stack([told[c:c + length] for c in cut]),
                          day_of_year=np.stack([np.asarray(doy)[c:c + length] for c in cut]),
                          site=np.zeros(len(cut), np.int32), group=np.arange(len(cut)),
                          state_names=emulator.config.state_names, forcing_names=emulator.config.forcing_names)
    kept, _, after = calibrate_parameter_inputs(emulator, data, None, defaults, defaults, steps=300,
                                                prior_weight=0.0, keep_factors=True)
    assert abs(kept[k] - 1.1) < 0.01  # the loss is the emulator's own: 1.1000003 when written
    replaced, _, after_replaced = calibrate_parameter_inputs(emulator, data, None, defaults, defaults, steps=300,
                                                             prior_weight=0.0)
    assert after < 0.5 * after_replaced


def test_summary_prints_each_estimated_parameter_as_a_factor():
    from twin.cli import _summary_lines
    entry = {"mean": 0.1, "q05": -0.05, "q95": 0.2, "last": 0.01}
    metrics = {"name": "x", "period": {"days": 10, "start": "2016-01-01"}, "model": "emulator",
               "estimated_parameters": {"max_growth_rate_log_factor@A/surface": entry}}
    # exp(0.1) = 1.105, exp(-0.05) = 0.951, exp(0.2) = 1.221, exp(0.01) = 1.010
    assert "estimated max_growth_rate at A: x1.105 the emulator's value on average (5-95 % over time x0.951 to " \
           "x1.221), last x1.010" in _summary_lines(metrics)
    entry.update(value={"mean": 1.27, "q05": 1.2, "q95": 1.3, "last": 1.25}, training_range=[0.5, 2.0],
                 cycles_at_range_limit=0.125)
    assert "last x1.010; max_growth_rate 1.27 on average (training range 0.5-2; members at a range limit in 12 % " \
           "of cycles)" in _summary_lines(metrics)[-1]


def test_values_in_use_follow_the_kept_refits():
    """The emulator's parameter inputs per cycle: the initial values, then each refit's from the cycle after
    the last it analysed; a refit that does not name an input leaves it as it was."""
    from twin.refit import RefitRecord, parameter_values_by_cycle

    def record(cycle, values):
        return RefitRecord(cycle, "", "", "", 0.0, 0.0, 0, True, "", 0.0, parameter_values=values)
    names = ("max_growth_rate", "max_grazing_rate")
    values = parameter_values_by_cycle([1.4, 1.0], names, [record(19, {"max_growth_rate": 1.2}),
                                                           record(9, {"max_growth_rate": 1.3, "max_grazing_rate": 0.9}),
                                                           record(29, {})], 30)
    assert_array_equal(values[:10], np.tile([1.4, 1.0], (10, 1)))
    assert_array_equal(values[10:20], np.tile([1.3, 0.9], (10, 1)))
    assert_array_equal(values[20:], np.tile([1.2, 0.9], (10, 1)))


def test_summary_gives_the_parameter_in_its_own_units_and_the_cycles_at_a_range_limit():
    """Across a change of the emulator's value the parameter reads on one scale (value x exp(factor)); a cycle
    whose 5 % or 95 % quantile lies beyond the training range counts as at a range limit (exact)."""
    from types import SimpleNamespace

    from twin.engine import WindowOutputs
    from twin.products import ParameterInputs, estimated_parameter_summary
    layout = StateLayout(("A",), 2, estimated=("max_growth_rate",))
    T, i = 100, layout.parameter_slices()[0, 0]
    mean = np.zeros((T, layout.dim), np.float32)
    mean[:50, i], mean[50:, i] = np.log(1.2 / 1.5), 0.0            # 1.2 in both halves: 1.5 x 0.8, then 1.2 x 1
    quant = np.repeat(mean[:, None, :], 3, axis=1)
    quant[:, 0, i] -= 0.1
    quant[:, 2, i] += 0.1
    quant[60:70, 2, i] = np.log(2.5 / 1.2)                          # 10 cycles past the top of a 0.5-2.0 range
    quant[80:85, 0, i] = np.log(0.4 / 1.2)                          # 5 below its bottom
    outputs = WindowOutputs(mean, mean, mean, mean, quant, None, None, None, None, None)
    config = SimpleNamespace(model=SimpleNamespace(estimate_parameters={
        "max_growth_rate": SimpleNamespace(sd=0.15, timescale_days=365.0)}))
    values = np.where(np.arange(T)[:, None] < 50, [[1.5, 1.0]], [[1.2, 1.0]])
    inputs = ParameterInputs(("max_growth_rate", "max_grazing_rate"), values, np.array([0.5, 0.5]),
                             np.array([2.0, 2.0]))
    entry = estimated_parameter_summary(config, layout, outputs, inputs)["max_growth_rate_log_factor@A/surface"]
    assert_allclose([entry["value"][k] for k in ("mean", "q05", "q95", "last")], 1.2, rtol=1e-6)
    assert entry["training_range"] == [0.5, 2.0]
    assert entry["cycles_at_range_limit"] == pytest.approx(15 / 70)   # after the 30-day burn-in
    assert "value" not in estimated_parameter_summary(config, layout, outputs)["max_growth_rate_log_factor@A/surface"]


def test_a_parameter_the_checkpoint_does_not_take_is_a_config_error():
    """The config alone cannot know a checkpoint's inputs: loading it checks them, naming the parameter and the
    inputs, before anything runs."""
    from twin.emulator_source import obtain_emulator
    from twin.errors import ConfigError
    config = _config("{estimate_parameters: {light_saturation: {sd: 0.1}}}",
                     emulator=f"checkpoint: {DEMO_EMULATOR}")
    with pytest.raises(ConfigError, match=r"light_saturation.*max_growth_rate, max_grazing_rate"):
        obtain_emulator(config, quiet=True)


def test_a_members_parameter_value_stays_in_the_emulators_training_range(emulator):
    """A factor of exp(5) (or exp(-5)) steps as the largest (smallest) value the network was trained on."""
    from emulators.training import parameter_columns
    stepper = emulator_stepper(emulator)
    own = emulator_model_params(emulator)
    k = stepper.parameter_names.index("max_grazing_rate")
    column = parameter_columns(emulator.config.forcing_names)[k]
    day = _one_day()
    x = jnp.asarray(initial_state(2))[None, None].repeat(2, axis=0)            # (2 members, 1 site, 16)
    factors = jnp.zeros((2, 1, len(stepper.parameter_names))).at[:, 0, k].set(jnp.array([5.0, -5.0]))
    clipped = np.asarray(stepper(x, day, None, parameter_log_factors=factors))
    for m, bound in enumerate((emulator.ranges.forcing_max, emulator.ranges.forcing_min)):
        at_bound = EmulatorModelParams(own.weights, own.parameters.at[k].set(float(np.asarray(bound)[column])))
        assert_allclose(clipped[m], np.asarray(stepper(x[m:m + 1], day, at_bound))[0], rtol=1e-6)

from pathlib import Path

import pytest

from twin.cli import main
from twin.config import TwinConfig, config_hash, load_config, parse_config
from twin.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_unknown_key_gets_path_and_hint():
    with pytest.raises(ConfigError, match=r"sites\.0\.latitud: unknown key \(did you mean 'latitude'\?\)"):
        parse_config({"sites": [{"name": "Point B", "latitud": 43.7, "longitude": 7.3}]})


def test_unknown_key_inside_a_dict_section_gets_hint():
    with pytest.raises(ConfigError, match=r"qc\.spike\.oxygen\.fail_treshold: unknown key \(did you mean "
                                          r"'fail_threshold'\?\)"):
        parse_config({"qc": {"spike": {"oxygen": {"suspect_threshold": 1, "fail_treshold": 2}}}})


def test_out_of_range_value_names_field_and_value():
    with pytest.raises(ConfigError, match=r"sites\.0\.latitude: .*less than or equal to 90.*\(got 95\)"):
        parse_config({"sites": [{"name": "x", "latitude": 95, "longitude": 0}]})


def test_bad_river_names_its_field():
    site = {"name": "x", "latitude": 43, "longitude": 7}
    with pytest.raises(ConfigError, match=r"sites\.0\.river\.mean_discharge_m3s: .*greater than 0.*\(got -5\)"):
        parse_config({"sites": [{**site, "river": {"mean_discharge_m3s": -5}}]})
    with pytest.raises(ConfigError, match=r"sites\.0\.river\.nitrat: unknown key \(did you mean 'nitrate'\?\)"):
        parse_config({"sites": [{**site, "river": {"mean_discharge_m3s": 5, "nitrat": 100}}]})
    with pytest.raises(ConfigError, match=r"sites\.0\.river\.seasonal_amplitude: .*less than 1"):
        parse_config({"sites": [{**site, "river": {"mean_discharge_m3s": 5, "seasonal_amplitude": 1.2}}]})
    with pytest.raises(ConfigError, match=r"sites\.0\.river: .*needs mean_discharge_m3s .* or discharge_from_salin"):
        parse_config({"sites": [{**site, "river": {"nitrate": 50}}]})
    with pytest.raises(ConfigError, match=r"sites\.0\.river: .*nutrients_from_data needs discharge_from_salinity"):
        parse_config({"sites": [{**site, "river": {"mean_discharge_m3s": 5, "nutrients_from_data": True}}]})
    with pytest.raises(ConfigError, match=r"sites\.0\.offshore_exchange_per_day\.surface: .*greater than 0"):
        parse_config({"sites": [{**site, "offshore_exchange_per_day": {"surface": 0}}]})


def test_wrong_type_and_unknown_variable():
    with pytest.raises(ConfigError) as info:
        parse_config({"seed": "abc", "qc": {"gross_range": {"nitrat": {"fail_span": [0, 1]}}}})
    text = str(info.value)
    assert "seed:" in text and "'abc'" in text
    assert "did you mean 'nitrate'" in text


def test_inconsistent_spans_rejected():
    with pytest.raises(ConfigError, match="suspect_span .* must lie inside fail_span"):
        parse_config({"qc": {"gross_range": {"nitrate": {"fail_span": [0, 10], "suspect_span": [-1, 5]}}}})


def test_config_is_frozen_and_hash_stable():
    cfg = parse_config({"name": "a", "sites": [{"name": "Point B", "latitude": 43.68, "longitude": 7.32}]})
    with pytest.raises(Exception):
        cfg.name = "b"
    assert config_hash(cfg) == config_hash(parse_config({"name": "a", "sites": [
        {"name": "Point B", "latitude": 43.68, "longitude": 7.32}]}))
    assert config_hash(cfg) != config_hash(TwinConfig())


def test_relative_paths_resolved_against_config_folder(tmp_path):
    (tmp_path / "c.yaml").write_text("sources:\n  - path: data/x.csv\n    format: somlit\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.sources[0].path == str((tmp_path / "data" / "x.csv").resolve())


def test_yaml_syntax_error_names_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: a\nsites: [\n")
    with pytest.raises(ConfigError, match=r"(?s)bad.yaml.*line \d+"):
        load_config(tmp_path / "bad.yaml")


def test_config_check_cli(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("name: demo\nsites:\n  - name: Point B\n    latitude: 43.68\n    longitude: 7.32\n")
    assert main(["config", "check", str(good)]) == 0
    assert "name: Point B" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("nmae: demo\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "did you mean 'name'" in capsys.readouterr().err


def test_truth_parameters_need_a_twin_experiment():
    with pytest.raises(ConfigError, match="process_params 'truth'"):
        parse_config({"model": {"kind": "process", "process_params": "truth"},
                      "sites": [{"name": "x", "latitude": 43, "longitude": 7}]})
    # with the emulator: the truth's values of the parameters it takes as inputs
    assert parse_config({"model": {"process_params": "truth"}, "experiment": {"site": "S"}}).model.kind == "emulator"
    config = load_config(CONFIGS / "demo-perfect-model.yaml")
    assert (config.model.kind, config.model.process_params) == ("process", "truth")


def test_perfect_model_twin_runs_with_the_truth_parameters():
    from types import SimpleNamespace

    from emulators.parameters import ProcessParams
    from twin.hindcast import model_process_params
    truth = ProcessParams()._replace(max_growth_rate=1.7)
    config = load_config(CONFIGS / "demo-perfect-model.yaml")
    assert model_process_params(config, SimpleNamespace(truth_params=truth)).max_growth_rate == 1.7
    default = load_config(CONFIGS / "demo.yaml")
    assert model_process_params(default, SimpleNamespace(truth_params=truth)) == ProcessParams()


def test_process_parameter_values_change_the_defaults_within_their_ranges():
    from types import SimpleNamespace

    from emulators.parameters import ProcessParams
    from twin.hindcast import model_process_params
    config = parse_config({"model": {"kind": "process", "process_params": {"half_sat_nitrate": 1.2}}})
    assert model_process_params(config, SimpleNamespace(truth_params=None)) == \
        ProcessParams()._replace(half_sat_nitrate=1.2)
    with pytest.raises(ConfigError, match=r"model\.process_params: unknown process parameter\(s\) \['half_sat_nit"):
        parse_config({"model": {"kind": "process", "process_params": {"half_sat_nitrat": 1.2}}})
    with pytest.raises(ConfigError, match=r"half_sat_nitrate: 5\.0 is outside its range \[0\.1, 2\.0\]"):
        parse_config({"model": {"kind": "process", "process_params": {"half_sat_nitrate": 5.0}}})
    with pytest.raises(ConfigError, match="process_params as values needs model.kind 'process'"):
        parse_config({"model": {"kind": "emulator", "process_params": {"half_sat_nitrate": 1.2}}})


def test_missing_emulator_checkpoint_is_a_clear_error_before_any_work(tmp_path, capsys):
    config = tmp_path / "twin.yaml"
    config.write_text("name: x\nsites:\n  - {name: A, latitude: 43, longitude: 7}\nsources:\n  - path: none.csv\n"
                      "emulator:\n  checkpoint: emulators/missing\n")
    assert main(["hindcast", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "emulator.checkpoint: no metadata.json or arrays.npz" in err and str(tmp_path / "emulators") in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_refit_and_calibration_options_name_their_field():
    with pytest.raises(ConfigError, match=r"refit\.fit\.0: .*'parameters' or 'weights'.*\(got 'biases'\)"):
        parse_config({"refit": {"fit": ["biases"]}})
    with pytest.raises(ConfigError, match=r"refit\.fit: .*at least 1 item"):
        parse_config({"refit": {"fit": []}})
    with pytest.raises(ConfigError, match=r"hindcast\.calibrate_chlorophyll: .*greater than or equal to 0.*\(got -1\)"):
        parse_config({"hindcast": {"calibrate_chlorophyll": -1}})
    assert parse_config({"refit": {"fit": ["weights"]}}).refit.fit == ("weights",)


def test_model_bias_options_name_their_field():
    with pytest.raises(ConfigError, match=r"model\.bias: unknown variable\(s\) \['oxygn'\]; valid: \['nitrate'"):
        parse_config({"model": {"bias": {"oxygn": {}}}})
    assert list(parse_config({"model": {"bias": {"chlorophyll": {}}}}).model.bias) == ["chlorophyll"]
    with pytest.raises(ConfigError, match=r"model\.bias\.oxygen\.sd_per_day: .*\[0, 1\]"):
        parse_config({"model": {"bias": {"oxygen": {"sd_per_day": 2}}}})
    with pytest.raises(ConfigError, match=r"model\.bias\.oxygen\.sd_per_day: unknown layer\(s\) \['middle'\]"):
        parse_config({"model": {"bias": {"oxygen": {"sd_per_day": {"middle": 0.1}}}}})
    with pytest.raises(ConfigError, match=r"model\.bias\.oxygen\.timescale_days: .*greater than or equal to 1"):
        parse_config({"model": {"bias": {"oxygen": {"timescale_days": 0.5}}}})
    bias = parse_config({"model": {"bias": {"oxygen": {"sd_per_day": {"surface": 0.01}}}}}).model.bias["oxygen"]
    assert (bias.sd("surface"), bias.sd("bottom")) == (0.01, 0.0)   # a layer not named has none


def test_sensor_offset_options_name_their_field():
    source = {"path": "buoy.csv", "format": "coasthf"}
    with pytest.raises(ConfigError, match=r"sources\.0: .*needs a 'name'"):
        parse_config({"sources": [{**source, "offsets": {"oxygen": {}}}]})
    with pytest.raises(ConfigError, match=r"sources\.0\.offsets: offsets of \['temperature'\]"):
        parse_config({"sources": [{**source, "name": "buoy", "offsets": {"temperature": {}}}]})
    with pytest.raises(ConfigError, match=r"sources\.0\.name: .*pattern"):
        parse_config({"sources": [{**source, "name": "my buoy"}]})
    with pytest.raises(ConfigError, match=r"duplicate source names \['buoy'\]"):
        parse_config({"sources": [{**source, "name": "buoy"}, {**source, "name": "buoy"}]})
    with pytest.raises(ConfigError, match=r"sources\.0\.offsets\.oxygen\.sd: .*greater than 0"):
        parse_config({"sources": [{**source, "name": "buoy", "offsets": {"oxygen": {"sd": 0}}}]})


def test_emulator_error_scale_per_tracer():
    with pytest.raises(ConfigError,
                       match=r"model\.emulator_error_scale: unknown key\(s\) \['oxygn'\]; valid: 'default'"):
        parse_config({"model": {"emulator_error_scale": {"oxygn": 2}}})
    with pytest.raises(ConfigError, match=r"model\.emulator_error_scale: oxygen: must be a number greater than 0"):
        parse_config({"model": {"emulator_error_scale": {"oxygen": -1}}})
    with pytest.raises(ConfigError, match=r"model\.emulator_error_scale: expected a number or a mapping"):
        parse_config({"model": {"emulator_error_scale": "x"}})
    model = parse_config({"model": {"emulator_error_scale": {"default": 2.0, "oxygen": 8}}}).model
    assert [model.error_scale(t) for t in ("oxygen", "nitrate")] == [8.0, 2.0]
    assert parse_config({"model": {"emulator_error_scale": {"oxygen": 3}}}).model.error_scale("nitrate") == 1.0
    assert parse_config({"model": {"emulator_error_scale": 1.5}}).model.error_scale("oxygen") == 1.5


def test_emulator_error_sd_is_scaled_per_tracer_in_every_layer():
    from types import SimpleNamespace

    import numpy as np

    from emulators.parameters import TRACERS
    from twin.forecast import emulator_log_error_sd
    log_sd = np.linspace(0.01, 0.02, 2 * len(TRACERS), dtype=np.float32)  # two layers of the tracers
    names = tuple(f"{t}/{layer}" for layer in ("surface", "bottom") for t in TRACERS)
    emulator = SimpleNamespace(model_error=SimpleNamespace(log_sd=log_sd), config=SimpleNamespace(state_names=names))
    model = parse_config({"model": {"emulator_error_scale": {"default": 2.0, "oxygen": 8.0}}}).model
    sd = emulator_log_error_sd(emulator, model)
    oxygen = [i for i in range(sd.size) if TRACERS[i % len(TRACERS)] == "oxygen"]
    assert len(oxygen) == 2
    expected = 2.0 * log_sd
    expected[oxygen] = 8.0 * log_sd[oxygen]
    np.testing.assert_array_equal(sd, expected)
    # a 'tracer/layer' value wins over its tracer's in that layer only
    model = parse_config({"model": {"emulator_error_scale": {"default": 2.0, "oxygen": 8.0,
                                                             "oxygen/bottom": 3.0}}}).model
    expected[oxygen[1]] = 3.0 * log_sd[oxygen[1]]
    np.testing.assert_array_equal(emulator_log_error_sd(emulator, model), expected)


def test_process_error_per_tracer_and_the_oxygen_rule():
    one = parse_config({"model": {"process_log_error_sd": 0.2}}).model
    assert [one.process_error_sd(t) for t in ("nitrate", "oxygen")] == [0.2, 0.2 / 10]
    each = parse_config({"model": {"process_log_error_sd": {"default": 0.2, "phytoplankton": 0.1}}}).model
    assert [each.process_error_sd(t) for t in ("nitrate", "phytoplankton", "oxygen")] == [0.2, 0.1, 0.2 / 10]
    assert parse_config({"model": {"process_log_error_sd": {"oxygen": 0.05}}}).model.process_error_sd("oxygen") == 0.05
    with pytest.raises(ConfigError, match=r"model\.process_log_error_sd: unknown key\(s\) \['phyto'\]"):
        parse_config({"model": {"process_log_error_sd": {"phyto": 0.1}}})


def test_process_error_per_layer_wins_over_the_tracer_and_reaches_the_layout_order():
    """'detritus/bottom' sets the bottom value only; the layer-less lookup keeps the tracer's; the array the
    hindcast builds has tracers fastest, then layers; unknown layers are refused with the key named."""
    import numpy as np

    from emulators.parameters import TRACERS
    from twin.hindcast import process_log_error_sd
    from twin.state_layout import StateLayout
    config = parse_config({"model": {"process_log_error_sd": {"default": 0.2, "detritus": 0.3,
                                                              "detritus/bottom": 0.5, "oxygen/surface": 0.01}}})
    model = config.model
    assert [model.process_error_sd("detritus", layer) for layer in ("surface", "bottom", None)] == [0.3, 0.5, 0.3]
    assert [model.process_error_sd("oxygen", layer) for layer in ("surface", "bottom")] == [0.01, 0.2 / 10]
    sd = process_log_error_sd(config, StateLayout(("A",), 2))
    n = len(TRACERS)
    d = TRACERS.index("detritus")
    assert sd.shape == (2 * n,) and sd[d] == np.float32(0.3) and sd[n + d] == np.float32(0.5)
    assert sd[TRACERS.index("nitrate")] == np.float32(0.2)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['detritus/middle'\]"):
        parse_config({"model": {"emulator_error_scale": {"detritus/middle": 2.0}}})


def test_variable_localization_names_state_variables_and_weights_in_0_1():
    import numpy as np

    from twin.state_layout import StateLayout
    with pytest.raises(ConfigError, match=r"filter\.variable_localization: unknown state variable\(s\) \['zoo'\]"):
        parse_config({"filter": {"variable_localization": {"zoo": 0.0}}})
    with pytest.raises(ConfigError, match=r"filter\.variable_localization\.detritus"):
        parse_config({"filter": {"variable_localization": {"detritus": 1.5}}})
    weights = parse_config({"filter": {"variable_localization": {"zooplankton": 0.0, "chlorophyll": 0.5}}}
                           ).filter.variable_localization
    layout = StateLayout(("A", "B"), 2, biased=("oxygen",))
    w = layout.update_weight(weights)
    names = layout.names()
    assert w.shape == (layout.dim,) and len(names) == layout.dim
    for name, value in zip(names, w):   # every site and layer; the bias elements keep theirs
        assert value == {"zooplankton": 0.0, "chlorophyll": 0.5}.get(name.split("@")[0], 1.0), name
    assert np.sum(w == 0.0) == 4 and np.sum(w == 0.5) == 4
    assert layout.update_weight({}) is None


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_")))
def test_every_shipped_config_validates(name):
    """Each top-level config loads (its data need not be here: paths are resolved, not opened)."""
    config = load_config(CONFIGS / name)
    assert config.name and config.filter.members >= 3
    if config.filter.method == "letkf":   # a radius between several sites, or a taper between variables
        assert (len(config.sites) >= 2 and config.filter.localization_radius_km > 0) or \
            config.filter.cross_variable_localization

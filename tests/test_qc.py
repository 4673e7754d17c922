import numpy as np

from twin import flags
from twin.config import parse_config
from twin.observations import make_observations
from twin.qc import apply_qc, plot_qc


def _buoy(values, step_minutes=20, variable="temperature", censored=None, start="2024-09-01"):
    n = len(values)
    times = np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(step_minutes, "m")
    qc = np.where(np.isfinite(values), flags.NOT_EVALUATED, flags.MISSING).astype(np.int8)
    return make_observations(time=times, site="6200443", variable=variable, value=values, qc=qc,
                             native_qc="0", source="buoy.csv", layer="surface", layer_code="LEVEL1",
                             censored=np.zeros(n, bool) if censored is None else censored)


def _smooth(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return 15.0 + 0.5 * np.sin(np.arange(n) / 30.0) + rng.normal(0, 0.01, n)


def test_spike_is_flagged_and_neighbours_pass():
    v = _smooth()
    v[100] += 5.0  # above the 3 degC fail threshold
    out = apply_qc(_buoy(v))
    assert out["qc_spike"].values[100] == flags.BAD
    assert out["qc"].values[100] == flags.BAD
    # The drop back after the spike is a 5 degC change in 20 min: rate of change marks it suspect.
    assert out["qc_rate_of_change"].values[101] == flags.SUSPECT
    others = np.delete(out["qc"].values, [100, 101])
    assert np.all(others == flags.GOOD), "tests ran and passed, so not-evaluated becomes good"


def test_gross_range_and_config_thresholds():
    v = _smooth()
    v[10] = 45.0
    out = apply_qc(_buoy(v))
    assert out["qc_gross_range"].values[10] == flags.BAD
    cfg = parse_config({"qc": {"gross_range": {"temperature": {"fail_span": [0, 50],
                                                               "suspect_span": [14.8, 15.2]}}}}).qc
    out2 = apply_qc(_buoy(_smooth()), cfg)
    outside = np.abs(_smooth() - 15.0) > 0.2
    np.testing.assert_array_equal(out2["qc_gross_range"].values == flags.SUSPECT, outside)


def test_a_gap_is_not_a_spike():
    v = np.concatenate([np.full(50, 15.0) + np.arange(50) * 1e-3, np.full(50, 19.0) + np.arange(50) * 1e-3])
    t = _buoy(v)
    times = t["time"].values.copy()
    times[50:] += np.timedelta64(10, "D")  # ten days without data, then a warmer water mass
    out = apply_qc(t.assign_coords(time=("obs", times)))
    assert not np.any(out["qc_spike"].values == flags.BAD)
    assert not np.any(out["qc_rate_of_change"].values == flags.SUSPECT)


def test_flat_line_detected():
    v = _smooth()
    v[50:100] = 15.123  # a stuck sensor for 50 x 20 min = 16.7 h
    out = apply_qc(_buoy(v))
    stuck = out["qc_flat_line"].values[50:100]
    assert np.sum(stuck >= flags.SUSPECT) >= 30


def test_censored_values_are_not_bad():
    v = np.array([0.02, 0.02, 0.02, 3.0, 2.5])
    t = make_observations(time=np.array(["2020-01-01", "2020-01-08", "2020-01-15", "2020-01-22",
                                         "2020-01-29"], "datetime64[ns]"),
                          site="Sola", variable="nitrate", value=v, qc=np.ones(5, np.int8),
                          native_qc=["0", "0", "0", "2", "2"], source="s.csv",
                          censored=[True, True, True, False, False])
    cfg = parse_config({"qc": {"gross_range": {"nitrate": {"fail_span": [0.1, 100]}}}}).qc
    out = apply_qc(t, cfg)
    np.testing.assert_array_equal(out["qc"].values, [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(out["qc_gross_range"].values[:3], [2, 2, 2])


def test_weekly_bottles_skip_high_frequency_tests_and_climatology_applies():
    v = np.array([14.0, 14.2, 30.0, 14.1, 14.3, 14.0])
    times = np.datetime64("2020-01-01", "ns") + np.arange(6) * np.timedelta64(7, "D")
    t = make_observations(time=times, site="Point B", variable="temperature", value=v,
                          qc=np.ones(6, np.int8), native_qc="2", source="h.csv")
    cfg = parse_config({"qc": {"climatology": {"temperature": [{"months": [12, 3], "span": [11, 17]}]}}}).qc
    out = apply_qc(t, cfg)
    assert np.all(out["qc_spike"].values == flags.NOT_EVALUATED)
    assert out["qc_climatology"].values[2] == flags.SUSPECT
    assert out["qc"].values[2] == flags.SUSPECT
    assert np.all(np.delete(out["qc"].values, 2) == flags.GOOD)


def test_native_bad_is_never_upgraded_and_missing_stays_missing():
    v = _smooth(20)
    t = _buoy(v)
    qc = t["qc"].values.copy()
    qc[3] = flags.BAD
    v2 = v.copy(); v2[5] = np.nan; qc[5] = flags.MISSING
    out = apply_qc(t.assign(qc=("obs", qc), value=("obs", v2)))
    assert out["qc"].values[3] == flags.BAD and out["qc_native"].values[3] == flags.BAD
    assert out["qc"].values[5] == flags.MISSING


def test_plots_written(tmp_path):
    v = _smooth(); v[100] += 5
    paths = plot_qc(apply_qc(_buoy(v)), tmp_path)
    assert [p.name for p in paths] == ["qc_6200443_temperature.png"]
    assert paths[0].stat().st_size > 5000


def _buoy_and_bottles(drift_per_day):
    rng = np.random.default_rng(0)
    hours = np.arange(0, 400 * 24)
    t_buoy = np.datetime64("2020-01-01", "ns") + hours * np.timedelta64(1, "h")
    true_b = 240 + 20 * np.sin(2 * np.pi * hours / 24 / 365)
    buoy = true_b + rng.normal(0, 2, hours.size) + drift_per_day * hours / 24
    days = np.arange(3, 400, 7)
    t_bot = np.datetime64("2020-01-01T09", "ns") + days * np.timedelta64(1, "D")
    bottle = 240 + 20 * np.sin(2 * np.pi * (days + 9 / 24) / 365) + rng.normal(0, 2, days.size)
    n1, n2 = hours.size, days.size
    return make_observations(
        time=np.concatenate([t_buoy, t_bot]), site="Point B", variable="oxygen", layer="surface",
        value=np.concatenate([buoy, bottle]), qc=np.ones(n1 + n2, np.int8), native_qc="1",
        source=["buoy.csv"] * n1 + ["bottle.csv"] * n2, error_sd=8.0)


def test_reference_drift_flags_a_drifting_sensor_once_drift_exceeds_its_error():
    out = apply_qc(_buoy_and_bottles(-12.0 / 365))
    drift_flag = out["qc_reference_drift"].values
    buoy = out["source"].values == "buoy.csv"
    days = (out["time"].values[buoy] - np.datetime64("2020-01-01", "ns")) / np.timedelta64(1, "D")
    flagged = drift_flag[buoy] >= flags.SUSPECT
    # drift reaches the 8 mmol m-3 error after 243 days: nothing flagged well before, all well after
    assert not flagged[days < 200].any() and flagged[days > 290].all()
    assert np.all(drift_flag[~buoy] == flags.NOT_EVALUATED), "the reference samples are not judged"
    assert np.all(out["qc"].values[buoy][days > 290] >= flags.SUSPECT)


def test_reference_drift_passes_a_sound_sensor():
    out = apply_qc(_buoy_and_bottles(0.0))
    buoy = out["source"].values == "buoy.csv"
    assert np.all(out["qc_reference_drift"].values[buoy] == flags.GOOD)

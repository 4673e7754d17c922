import numpy as np

from twin import dispositions as disp
from twin.cycle_obs import build_cycle_observations, cycle_of, row_dispositions
from twin.observations import make_observations
from twin.state_layout import StateLayout

DAY0 = np.datetime64("2020-01-01", "ns")


def test_layout_indices_are_unique_and_named():
    layout = StateLayout(("Point B", "Sola"), 2)
    names = layout.names()
    assert len(names) == layout.dim == 2 * (16 + 2) and len(set(names)) == layout.dim
    assert names[layout.index("nitrate", "Sola", "bottom")] == "nitrate@Sola/bottom"
    assert names[layout.observation_index("chlorophyll", "Point B", "surface")] == "chlorophyll@Point B/surface"
    assert layout.observation_index("temperature", "Point B", "surface") == -1
    assert layout.index("nitrate", "Frioul", "surface") == -1
    np.testing.assert_array_equal(np.sort(np.concatenate([layout.model_slices().ravel(),
                                                          layout.diagnostic_slices().ravel()])),
                                  np.arange(layout.dim))


def test_cycle_of_rounds_to_nearest_analysis_time():
    t = DAY0 + np.array([6, 13, 30, 35], "timedelta64[h]")
    np.testing.assert_array_equal(cycle_of(t, DAY0), [-1, 0, 0, 0])


def _table():
    hourly = DAY0 + np.timedelta64(2, "D") + np.arange(24) * np.timedelta64(1, "h") - np.timedelta64(12, "h")
    times = np.concatenate([hourly, DAY0 + np.array([2, 2, 2, 2, 2, 9, 400], "timedelta64[D]")])
    n = times.size
    variable = ["oxygen"] * 24 + ["nitrate", "nitrate", "temperature", "nitrate", "phosphate", "nitrate",
                                  "nitrate"]
    site = ["Point B"] * 24 + ["Point B", "Point B", "Point B", "Point B", "Frioul", "Point B", "Point B"]
    value = np.concatenate([np.full(24, 240.0) + np.arange(24), [1.0, 2.0, 14.0, 0.04, 0.1, 1.5, 1.0]])
    qc = np.array([1] * 24 + [1, 4, 1, 1, 1, 1, 1], np.int8)
    censored = np.array([False] * 24 + [False, False, False, True, False, False, False])
    source = ["buoy.csv"] * 24 + ["bottle.csv"] * 7
    return make_observations(time=times, site=site, variable=variable, value=value, qc=qc, native_qc="x",
                             source=source, layer="surface", error_sd=np.full(n, 8.0), censored=censored)


def test_superobs_dispositions_and_padding():
    layout = StateLayout(("Point B",), 2)
    table = _table()
    withheld = np.zeros(table.sizes["obs"], bool)
    withheld[29] = True  # the nitrate of day 9
    co = build_cycle_observations(table, layout, DAY0, 30, withheld=withheld)
    # day 2 (cycle 1): one oxygen super-obs from 24 hourly values; the good and the censored nitrate of the
    # same source, element and cycle make one super-obs.
    assert co.obs.value.shape[0] == 30
    oxy = co.group_state_index == layout.index("oxygen", "Point B", "surface")
    assert co.group_count[oxy].tolist() == [24]
    np.testing.assert_allclose(co.group_value[oxy], 240.0 + 11.5)
    np.testing.assert_allclose(co.group_error_sd[oxy], 8.0 * np.sqrt(0.49 + 0.51 / 24))
    no3 = co.group_state_index == layout.index("nitrate", "Point B", "surface")
    # nitrate 1.0 (good) and the censored 0.04 (as 0.02) average; the bad 2.0 is out
    np.testing.assert_allclose(co.group_value[no3], [(1.0 + 0.02) / 2])
    expected = np.array([-1] * 24 + [-1, disp.BAD_QC, disp.NOT_STATE_VARIABLE, -1, disp.OUTSIDE_DOMAIN,
                                     disp.WITHHELD, disp.OUTSIDE_PERIOD])
    np.testing.assert_array_equal(co.disposition, expected)
    assert co.obs.mask.sum() == 2 and co.obs.mask[1].sum() == 2
    slot = np.zeros(co.obs.mask.shape, np.int64)
    slot[1, 1] = disp.REJECTED_OUTLIER
    rows = row_dispositions(co, slot)
    assert (rows >= 0).all()
    assert set(rows[co.row_group >= 0]) <= {disp.ASSIMILATED, disp.REJECTED_OUTLIER}

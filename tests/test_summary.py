import json

import numpy as np

from twin.observations import make_observations
from twin.summary import summarise


def test_counts_spans_and_gaps(small_table):
    (s,) = summarise(small_table)
    assert (s["site"], s["depth"], s["variable"]) == ("Point B", "S", "nitrate")
    assert (s["count_good"], s["count_censored"], s["count_missing"], s["count_suspect"], s["count_bad"]) == \
        (1, 1, 1, 1, 0)
    assert s["first"] == "2020-01-01T00:00:00Z" and s["last"] == "2020-01-15T00:00:00Z"
    assert s["median_interval_days"] == 7.0 and s["longest_gap_days"] == 7.0
    json.dumps({"series": [s]})  # serialisable as printed by the CLI


def test_depth_label_falls_back_to_metres_and_single_value_has_no_interval():
    t = make_observations(time=np.array(["2021-05-01"], "datetime64[ns]"), site="X", variable="salinity",
                          value=[38.0], qc=np.array([1], np.int8), native_qc="1", source="f", depth=24.0)
    (s,) = summarise(t)
    assert s["depth"] == "24" and s["median_interval_days"] is None and s["longest_gap_days"] is None

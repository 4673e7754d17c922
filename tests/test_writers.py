import numpy as np
import pandas as pd

from twin import flags
from twin.readers import coasthf, somlit
from twin.writers import write_coasthf, write_somlit_native


def test_somlit_writer_round_trips_through_the_reader(tmp_path):
    samples = pd.DataFrame({
        "time": pd.to_datetime(["2020-03-02 08:00", "2020-03-02 08:00", "2020-03-09 08:00"]),
        "site_id": [12, 12, 12], "site": ["Point B"] * 3, "latitude": [43.6833] * 3,
        "longitude": [7.31667] * 3, "layer_code": ["S", "F", "S"], "depth": [1.0, 50.0, 1.0],
        "nitrate": [1.25, np.nan, 0.05], "nitrate_flag": [2, 9, 0],
        "oxygen": [250.0, 240.0, 251.0],
        "chlorophyll": [0.8, 0.2, 1.1], "chlorophyll_flag": [2, 3, 6],
    })
    path = write_somlit_native(tmp_path / "s.csv", samples)
    assert somlit.sniff(path)
    table = somlit.read(path)
    got = table.to_dataframe().reset_index()
    no3 = got[got["variable"] == "nitrate"]
    np.testing.assert_allclose(no3["value"].to_numpy()[[0, 2]], [1.25, 0.05], rtol=1e-4)
    np.testing.assert_array_equal(no3["qc"].to_numpy(), [flags.GOOD, flags.MISSING, flags.GOOD])
    np.testing.assert_array_equal(no3["censored"].to_numpy(), [False, False, True])
    o2 = got[got["variable"] == "oxygen"]["value"].to_numpy()
    np.testing.assert_allclose(o2, [250.0, 240.0, 251.0], rtol=1e-4)  # mL/L on disk, mmol m-3 back
    chl = got[got["variable"] == "chlorophyll"]
    np.testing.assert_array_equal(chl["qc"].to_numpy(), [flags.GOOD, flags.SUSPECT, flags.GOOD])
    assert set(got["layer"]) == {"surface", "bottom"}
    assert (got[got["variable"] == "silicate"]["qc"] == flags.MISSING).all()  # not written = missing


def test_coasthf_writer_round_trips_through_the_reader(tmp_path):
    times = pd.date_range("2024-09-01", periods=5, freq="h")
    temp = np.array([17.5, 17.6, np.nan, 17.4, 17.3])
    oxygen = np.array([240.0, 241.0, 242.0, 243.0, 244.0])
    path = write_coasthf(tmp_path / "b.csv", "SYNTH01", 43.68, 7.32, times, {
        "temperature": (temp, np.array([1, 1, 9, 1, 4])),
        "oxygen": (oxygen, np.array([1, 1, 1, 3, 1])),
    })
    assert coasthf.sniff(path)
    got = coasthf.read(path).to_dataframe().reset_index()
    t = got[got["variable"] == "temperature"]
    np.testing.assert_allclose(t["value"].to_numpy()[[0, 1, 3, 4]], temp[[0, 1, 3, 4]], rtol=1e-6)
    np.testing.assert_array_equal(t["qc"].to_numpy(), [1, 1, 9, 1, 4])
    o = got[got["variable"] == "oxygen"]
    np.testing.assert_allclose(o["value"].to_numpy(), oxygen, rtol=1e-5)
    assert (got["site"] == "SYNTH01").all() and (got["layer_code"] == "LEVEL1").all()

import numpy as np
import pytest

from twin import flags
from twin.ingest import read_paths
from twin.osse import ExperimentSpec, write_experiment


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    spec = ExperimentSpec(site="SYNTH-B", platform="SYNTH01", latitude=43.68, longitude=7.32,
                          start=np.datetime64("2016-01-01"), num_days=200, seed=3)
    directory = tmp_path_factory.mktemp("osse")
    truth, paths = write_experiment(directory, spec)
    return spec, truth, paths


def test_truth_is_finite_positive_and_laid_out(experiment):
    spec, truth, _ = experiment
    assert truth.states.shape == (spec.num_days + 1, truth.layout.site_dim)
    assert np.all(np.isfinite(truth.states)) and np.all(truth.states > 0)


def test_files_read_back_with_the_real_readers(experiment):
    spec, truth, paths = experiment
    table = read_paths([str(paths["somlit"]), str(paths["coasthf"])])
    bottles = table.isel(obs=np.flatnonzero(table["source"].values == str(paths["somlit"])))
    nitrate = (bottles["variable"].values == "nitrate") & (bottles["layer"].values == "bottom")
    # weekly samples, about 10 % missed: between 80 % and 100 % of the 29 possible weeks
    assert 0.75 * 29 <= nitrate.sum() <= 29
    # bottle nitrate at the bottom is the truth within 4 sigma of its error
    t = bottles["time"].values[nitrate]
    days = (t - truth.times[0]) / np.timedelta64(1, "D")
    idx = truth.layout.index("nitrate", spec.site, "bottom")
    true = np.interp(days, np.arange(truth.states.shape[0]), truth.states[:, idx])
    err = bottles["value"].values[nitrate] - true
    assert np.all(np.abs(err) < 4 * np.hypot(0.05, 0.05 * true))
    buoy = table.isel(obs=np.flatnonzero(table["source"].values == str(paths["coasthf"])))
    assert set(buoy["variable"].values) == {"temperature", "salinity", "oxygen", "fluorescence"}
    hours = np.unique(buoy["time"].values).size
    assert 0.6 * 24 * 199 < hours < 0.9 * 24 * 199  # gaps of several days
    censored = bottles["censored"].values
    assert np.all(bottles["qc"].values[censored] == flags.GOOD)

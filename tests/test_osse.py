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


def test_the_buoys_met_mast_reads_back_as_the_truths_daily_light_and_wind(tmp_path, experiment):
    """With ``buoy_meteorology`` the buoy's file also holds hourly PAR and wind at LEVEL-1 (layer "air"), whose
    daily means (``twin.forcing_builder``) are the truth's forcing: PAR within 4 sigma of the mean of 9 or more
    daylight hours of 8 % noise (4 sigma: 11 %), wind within 4 sigma of 18 or more hours of 1 m s-1 (0.95 m
    s-1). The water samples are the same draws as without the mast."""
    from emulators.solar import SEA_SURFACE_ALBEDO
    from twin.forcing_builder import daily_meteorology
    spec, truth, paths = experiment
    met_truth, met_paths = write_experiment(tmp_path, spec._replace(buoy_meteorology=True))
    table = read_paths([str(met_paths["coasthf"])])
    air = table["layer"].values == "air"
    assert set(table["variable"].values[air]) == {"par", "wind_speed"}
    water = read_paths([str(paths["coasthf"])])
    np.testing.assert_array_equal(table["value"].values[~air], water["value"].values)
    table = table.assign(site=("obs", np.full(table.sizes["obs"], spec.site, object)))
    day0 = np.datetime64(spec.start)
    par = daily_meteorology(table, spec.site, "par", day0, spec.num_days, sun_at=(spec.latitude, spec.longitude)) \
        * (1.0 - SEA_SURFACE_ALBEDO)
    wind = daily_meteorology(table, spec.site, "wind_speed", day0, spec.num_days)
    ok = np.isfinite(par)
    assert 0.5 * spec.num_days < ok.sum() < spec.num_days       # the buoy's outages leave days without a mean
    np.testing.assert_array_less(np.abs(par[ok] / np.asarray(met_truth.forcing.par)[ok] - 1.0), 0.11)
    windy = np.isfinite(wind)
    np.testing.assert_array_less(np.abs(wind[windy] - np.asarray(met_truth.forcing.wind_speed)[windy]), 0.95)

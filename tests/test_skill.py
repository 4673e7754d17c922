"""Scores of the withheld-value validation against Monte Carlo references."""
import numpy as np
import pytest

from twin.skill import gaussian_crps, lognormal_interval

Z90 = 1.6448536269514722


def test_lognormal_interval_holds_ninety_percent_of_its_lognormal_and_has_its_moments():
    """Samples of the lognormal with mean 0.3 and sd 0.45 (a summer nutrient forecast): 90 % fall inside
    (Monte Carlo, 4e5 samples: +-0.002), the normal interval of the same moments reaches below zero, and a
    mean <= 0 has no interval."""
    rng = np.random.default_rng(0)
    mean, sd = 0.3, 0.45
    s2 = np.log1p((sd / mean) ** 2)
    x = np.exp(np.log(mean) - 0.5 * s2 + np.sqrt(s2) * rng.standard_normal(400_000))
    assert abs(x.mean() - mean) < 0.005 and abs(x.std() - sd) < 0.01
    lo, hi = lognormal_interval(mean, sd, Z90)
    assert 0.0 < lo < hi
    assert abs(np.mean((x >= lo) & (x <= hi)) - 0.90) < 0.002
    assert mean - Z90 * sd < 0 and np.mean(np.abs(x - mean) <= Z90 * sd) > 0.93   # the normal one: too wide here
    lo, hi = lognormal_interval(np.array([0.0, -1.0]), np.array([1.0, 1.0]), Z90)
    assert np.all(np.isnan(lo)) and np.all(np.isnan(hi))


def test_gaussian_crps_matches_its_definition_by_monte_carlo():
    """CRPS(F, y) = E|X - y| - E|X - X'| / 2 with X, X' ~ F (Gneiting and Raftery 2007): the closed form agrees
    with 2e6 samples to 0.3 %."""
    rng = np.random.default_rng(1)
    x, x2 = rng.normal(1.0, 0.5, (2, 2_000_000))
    for y in (1.0, 1.7, -0.4):
        reference = np.mean(np.abs(x - y)) - 0.5 * np.mean(np.abs(x - x2))
        np.testing.assert_allclose(gaussian_crps(1.0, 0.5, y), reference, rtol=3e-3)


def test_analysis_at_observations_scores_each_element_on_its_observed_cycles_after_the_burn_in():
    """Element 0 observed on cycles 5 (burn-in: not counted), 40 and 50 (twice: counted once); element 2 on
    cycle 60; element 1 never: the RMSE over exactly those cycles, to float64 rounding."""
    from twin.skill import analysis_at_observations
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(100, 3))
    analysis = truth + rng.normal(size=(100, 3))
    cycles = np.array([5, 40, 50, 50, 60])
    index = np.array([0, 0, 0, 0, 2])
    out = analysis_at_observations(analysis, truth, cycles, index, burn_in=30)
    assert set(out) == {0, 2}
    expected = np.sqrt(np.mean((analysis[[40, 50], 0] - truth[[40, 50], 0]) ** 2))
    assert out[0]["n_at_observations"] == 2 and abs(out[0]["rmse_at_observations"] - expected) < 1e-12
    assert out[2]["n_at_observations"] == 1
    assert abs(out[2]["rmse_at_observations"] - abs(analysis[60, 2] - truth[60, 2])) < 1e-12


def test_truth_scores_split_the_rmse_into_bias_and_the_rest():
    """RMSE^2 = bias^2 + variance of the error: a constant offset is all bias, a zero-mean error none."""
    from twin.skill import truth_scores
    rng = np.random.default_rng(0)
    T = 400
    truth = rng.normal(size=(T, 2))
    wiggle = rng.normal(scale=0.3, size=T)
    analysis = np.stack([truth[:, 0] + 0.5, truth[:, 1] + wiggle - wiggle[20:].mean()], axis=1)
    scores = truth_scores(analysis, np.full((T, 2), 0.3), truth, burn_in=20)
    assert scores[0]["bias"] == pytest.approx(0.5, rel=1e-12) and scores[0]["rmse"] == pytest.approx(0.5, rel=1e-12)
    assert abs(scores[1]["bias"]) < 1e-12
    e = analysis[20:, 1] - truth[20:, 1]
    assert scores[1]["rmse"] ** 2 == pytest.approx(scores[1]["bias"] ** 2 + e.var(), rel=1e-12)

"""Adaptive sampling (twin.sampling): greedy plan against the exact Kalman posterior, ranking, files, and the
twin-experiment verification (plan beats random picks)."""
from __future__ import annotations

import numpy as np
import pytest

from twin.errors import InputError
from twin.sampling import (Candidate, candidates_from_specs, compare_plan_with_random, default_candidates,
                           expected_variance_reduction, format_plan, greedy_plan, parse_candidates,
                           parse_target, rank_candidates, target_column, trajectory_column, trajectory_matrix,
                           verify_against_random)
from twin.state_layout import OBSERVABLE, StateLayout
from twin.units import DEFAULT_ERROR_SD

# Round-off only: the greedy variance and the batch Kalman formula are the same algebra on the same
# sample covariance, so they agree to near machine precision (float64).
RTOL = 1e-10


def correlated_ensemble(seed: int, num_members: int = 60, num_columns: int = 12) -> np.ndarray:
    """(N, p) Gaussian ensemble with a random dense covariance."""
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(num_columns, num_columns)) / np.sqrt(num_columns)
    return rng.normal(size=(num_members, num_columns)) @ L.T + rng.normal(size=num_columns)


def kalman_posterior_variance(E: np.ndarray, target: int, columns, error_sd) -> float:
    """P - P H^T (H P H^T + R)^-1 H P for the target, P the sample covariance of E (reference)."""
    P = np.cov(E, rowvar=False, ddof=1)
    H = np.zeros((len(columns), E.shape[1]))
    H[np.arange(len(columns)), columns] = 1.0
    R = np.diag(np.asarray(error_sd, float) ** 2)
    post = P - P @ H.T @ np.linalg.solve(H @ P @ H.T + R, H @ P)
    return float(post[target, target])


def some_candidates(E: np.ndarray, seed: int = 1) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    return [Candidate(f"c{j}", j, float(rng.uniform(0.2, 1.0))) for j in range(1, E.shape[1])]


# ----------------------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_variance_equals_exact_kalman_posterior(seed):
    E = correlated_ensemble(seed)
    candidates = some_candidates(E, seed)
    plan = greedy_plan(E, 0, candidates, budget=5)
    assert plan.initial_variance == pytest.approx(np.var(E[:, 0], ddof=1), rel=RTOL)
    for k in range(1, 6):
        picked = [s.candidate for s in plan.steps[:k]]
        expected = kalman_posterior_variance(E, 0, [c.state_column for c in picked],
                                             [c.error_sd for c in picked])
        actual = plan.steps[k - 1].variance
        assert actual == pytest.approx(expected, rel=RTOL)
    # Each step's reduction is the drop in variance it causes.
    variances = [plan.initial_variance] + [s.variance for s in plan.steps]
    np.testing.assert_allclose([s.reduction for s in plan.steps], -np.diff(variances), rtol=1e-8)


def test_repeats_equal_kalman_with_repeated_rows():
    E = correlated_ensemble(3)
    candidates = [Candidate("direct", 0, 0.5), Candidate("weak", 5, 0.1)]
    plan = greedy_plan(E, 0, candidates, budget=4, allow_repeats=True)
    picked = [s.candidate for s in plan.steps]
    assert [c.label for c in picked].count("direct") >= 2  # replicates of the target are worth taking
    expected = kalman_posterior_variance(E, 0, [c.state_column for c in picked], [c.error_sd for c in picked])
    assert plan.steps[-1].variance == pytest.approx(expected, rel=RTOL)


def test_without_repeats_each_candidate_once():
    E = correlated_ensemble(4)
    candidates = some_candidates(E)
    plan = greedy_plan(E, 0, candidates, budget=len(candidates))
    assert sorted(s.index for s in plan.steps) == list(range(len(candidates)))
    with pytest.raises(ValueError, match="budget 12 exceeds the 11 candidates"):
        greedy_plan(E, 0, candidates, budget=12)


def test_single_reduction_is_covariance_formula():
    E = correlated_ensemble(5)
    c = Candidate("c3", 3, 0.4)
    P = np.cov(E, rowvar=False, ddof=1)
    expected = P[0, 3] ** 2 / (P[3, 3] + 0.4**2)
    assert expected_variance_reduction(E, 0, c) == pytest.approx(expected, rel=RTOL)
    assert greedy_plan(E, 0, [c], 1).steps[0].reduction == pytest.approx(expected, rel=RTOL)


def test_greedy_picks_the_direct_observation():
    # Target t, a direct measurement of it with a small error, and noisy proxies weakly correlated with it.
    rng = np.random.default_rng(6)
    t = rng.normal(size=200)
    proxies = 0.2 * t[:, None] + rng.normal(size=(200, 5))
    E = np.column_stack([t, proxies])
    candidates = [Candidate(f"proxy{j}", j, 0.1) for j in range(1, 6)] + [Candidate("direct", 0, 0.05)]
    plan = greedy_plan(E, 0, candidates, budget=2)
    assert plan.steps[0].candidate.label == "direct"
    assert plan.steps[0].variance < 0.01 * plan.initial_variance
    assert rank_candidates(E, 0, candidates)[0][0].label == "direct"


def test_plan_is_invariant_to_candidate_order():
    E = correlated_ensemble(7)
    candidates = some_candidates(E)
    plan = greedy_plan(E, 0, candidates, budget=4)
    shuffled = [candidates[k] for k in np.random.default_rng(0).permutation(len(candidates))]
    other = greedy_plan(E, 0, shuffled, budget=4)
    assert [s.candidate for s in other.steps] == [s.candidate for s in plan.steps]
    np.testing.assert_allclose([s.variance for s in other.steps], [s.variance for s in plan.steps], rtol=RTOL)


def test_exact_ties_broken_by_label():
    E = correlated_ensemble(8)
    twins = [Candidate("b", 2, 0.3), Candidate("a", 2, 0.3)]
    assert greedy_plan(E, 0, twins, 1).steps[0].candidate.label == "a"
    assert greedy_plan(E, 0, twins[::-1], 1).steps[0].candidate.label == "a"


def test_log_space_plan_equals_linear_plan_on_logs():
    E = np.exp(correlated_ensemble(9) * 0.3)  # positive, lognormal-ish
    candidates = some_candidates(E)
    plan = greedy_plan(E, 0, candidates, budget=3, log=True)
    assert plan.log
    # Reference: the linear plan on log E with lognormal-matched errors at each column's mean.
    means = E.mean(axis=0)
    log_candidates = [c._replace(error_sd=float(np.sqrt(np.log1p((c.error_sd / means[c.state_column]) ** 2))))
                      for c in candidates]
    reference = greedy_plan(np.log(E), 0, log_candidates, budget=3)
    assert [s.index for s in plan.steps] == [s.index for s in reference.steps]
    np.testing.assert_allclose([s.variance for s in plan.steps], [s.variance for s in reference.steps],
                               rtol=RTOL)
    assert plan.initial_variance == pytest.approx(np.var(np.log(E[:, 0]), ddof=1), rel=RTOL)


def test_log_leaves_non_positive_columns_linear():
    E = correlated_ensemble(10)  # has negative values: nothing is log-transformed
    candidates = some_candidates(E)
    assert not greedy_plan(E, 0, candidates, 2, log=True).log
    np.testing.assert_allclose([s.variance for s in greedy_plan(E, 0, candidates, 2, log=True).steps],
                               [s.variance for s in greedy_plan(E, 0, candidates, 2).steps], rtol=RTOL)


def test_bad_inputs_raise_clear_errors():
    E = correlated_ensemble(11)
    with pytest.raises(ValueError, match="must be 2-D"):
        greedy_plan(E[0], 0, [Candidate("a", 1, 0.1)], 1)
    with pytest.raises(ValueError, match="target_column 99 outside"):
        greedy_plan(E, 99, [Candidate("a", 1, 0.1)], 1)
    with pytest.raises(ValueError, match="candidate 'a': state_column 50"):
        greedy_plan(E, 0, [Candidate("a", 50, 0.1)], 1)
    with pytest.raises(ValueError, match="candidate 'a': error_sd must be finite and > 0"):
        greedy_plan(E, 0, [Candidate("a", 1, 0.0)], 1)
    with pytest.raises(ValueError, match="no candidate"):
        greedy_plan(E, 0, [], 1)
    with pytest.raises(ValueError, match="budget must be >= 0"):
        greedy_plan(E, 0, [Candidate("a", 1, 0.1)], -1)


def test_format_plan_lists_every_pick():
    E = np.exp(correlated_ensemble(12) * 0.2)
    plan = greedy_plan(E, 0, some_candidates(E), 3, log=True)
    text = format_plan(plan, "oxygen@Point B/bottom", "mmol m-3")
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert lines[0].startswith("target oxygen@Point B/bottom: prior log-space variance")
    assert all(s.candidate.label in text for s in plan.steps)


# ------------------------------------------------------------------------------- layout and candidates


LAYOUT = StateLayout(("Point B", "Bay"), 2)


def test_default_candidates_cover_every_observable_at_every_lead_day():
    candidates = default_candidates(LAYOUT, horizon=3)
    assert len(candidates) == len(OBSERVABLE) * 2 * 2 * 3
    c = next(c for c in candidates if c.label == "nitrate@Bay/bottom day+2")
    assert c.state_column == LAYOUT.dim + LAYOUT.index("nitrate", "Bay", "bottom")
    assert c.error_sd == DEFAULT_ERROR_SD["nitrate"]
    assert len({c.state_column for c in candidates}) == len(candidates)
    custom = default_candidates(LAYOUT, 1, variables=["oxygen"], error_sd={"oxygen": 2.0})
    assert [c.error_sd for c in custom] == [2.0] * 4


def test_trajectory_columns_match_the_flattened_matrix():
    X = np.random.default_rng(0).normal(size=(5, 4, LAYOUT.dim))
    E = trajectory_matrix(X)
    col = target_column(LAYOUT, "phytoplankton@Point B/bottom", horizon=4)
    np.testing.assert_array_equal(E[:, col], X[:, 3, LAYOUT.index("phytoplankton", "Point B", "bottom")])
    assert trajectory_column(7, 1, LAYOUT.dim) == 7


def test_target_errors_name_the_problem():
    assert parse_target("oxygen@Point B/bottom") == ("oxygen", "Point B", "bottom")
    with pytest.raises(ValueError, match="must read VARIABLE@SITE/LAYER"):
        parse_target("oxygen Point B")
    with pytest.raises(ValueError, match="unknown site 'Point C'.*did you mean 'Point B'"):
        target_column(LAYOUT, "oxygen@Point C/bottom", 3)
    with pytest.raises(ValueError, match="unknown variable 'oxigen'"):
        target_column(LAYOUT, "oxigen@Point B/bottom", 3)


def test_parse_csv_candidates(tmp_path):
    path = tmp_path / "cands.csv"
    path.write_text("# planned cruise\nvariable,site,layer,lead_day,error_sd\n"
                    "nitrate,Point B,bottom,3,0.2\noxygen, Bay,surface,1,\n")
    specs = parse_candidates(path)
    assert [(s.variable, s.site, s.layer, s.lead_day, s.error_sd, s.line) for s in specs] == [
        ("nitrate", "Point B", "bottom", 3, 0.2, 3), ("oxygen", "Bay", "surface", 1, None, 4)]
    candidates = candidates_from_specs(specs, LAYOUT, horizon=3)
    assert candidates[0] == Candidate("nitrate@Point B/bottom day+3",
                                      2 * LAYOUT.dim + LAYOUT.index("nitrate", "Point B", "bottom"), 0.2)
    assert candidates[1].error_sd == DEFAULT_ERROR_SD["oxygen"]


def test_parse_yaml_candidates(tmp_path):
    path = tmp_path / "cands.yaml"
    path.write_text("candidates:\n  - {variable: chlorophyll, site: Bay, layer: surface, lead_day: 2}\n"
                    "  - variable: silicate\n    site: Point B\n    layer: bottom\n    lead_day: 1\n"
                    "    error_sd: 0.5\n")
    specs = parse_candidates(path)
    assert [(s.variable, s.lead_day, s.error_sd, s.line) for s in specs] == [
        ("chlorophyll", 2, None, 2), ("silicate", 1, 0.5, 3)]


@pytest.mark.parametrize("body, match", [
    ("variable,site,layer\nnitrate,Bay,surface\n", r"line 1: header lacks column\(s\) \['lead_day'\]"),
    ("variable,site,layer,lead_day\nnitrate,Bay,surface,0\n", r"line 2, field 'lead_day': lead_day must be"),
    ("variable,site,layer,lead_day\nnitrate,Bay,surface,1.5\n", r"line 2, field 'lead_day'"),
    ("variable,site,layer,lead_day\nnitrate,Bay,surface,1\nnitrat,Bay,surface,1\n",
     r"line 3, field 'variable': unknown variable 'nitrat' \(did you mean 'nitrate'\?\)"),
    ("variable,site,layer,lead_day,error_sd\nnitrate,Bay,surface,1,-0.1\n", r"line 2, field 'error_sd'"),
    ("variable,site,layer,lead_day\nnitrate,Bay,surface\n", r"line 2: 3 values for 4 columns"),
    ("variable,site,layer,lead_day\n,Bay,surface,1\n", r"line 2, field 'variable': missing value"),
    ("variable,site,layer,lead_day\n", r"no candidates in file"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, body, match):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(InputError, match=match) as info:
        parse_candidates(path)
    assert str(path) in str(info.value)


def test_bad_yaml_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("- {variable: nitrate, site: Bay, layer: surface, lead_day: 1}\n"
                    "- {variable: nitrate, site: Bay, layer: surface, lead_dya: 1}\n")
    with pytest.raises(InputError,
                       match=r"bad.yml, line 2: unknown field 'lead_dya' \(did you mean 'lead_day'"):
        parse_candidates(path)
    path.write_text("- [nitrate, Bay]\n")
    with pytest.raises(InputError, match=r"line 1: each candidate must be a mapping"):
        parse_candidates(path)
    path.write_text("- {variable: nitrate\n")
    with pytest.raises(InputError, match=r"invalid YAML"):
        parse_candidates(path)
    with pytest.raises(InputError, match="cannot read candidates file"):
        parse_candidates(tmp_path / "missing.csv")


def test_unresolvable_rows_name_file_and_line(tmp_path):
    path = tmp_path / "cands.csv"
    path.write_text("variable,site,layer,lead_day\nnitrate,Bay,surface,1\ntemperature,Bay,surface,1\n")
    with pytest.raises(InputError, match=r"line 3: unknown variable 'temperature'"):
        candidates_from_specs(parse_candidates(path), LAYOUT, horizon=2)
    path.write_text("variable,site,layer,lead_day\nnitrate,Bay,surface,5\n")
    with pytest.raises(InputError, match=r"line 2, field 'lead_day': lead_day 5 is beyond the horizon of 2"):
        candidates_from_specs(parse_candidates(path), LAYOUT, horizon=2)


# ------------------------------------------------------------------------------------- twin experiment


def factor_toy(num_members: int = 200, seed: int = 0):
    """Known Gaussian: the target is the sum of 3 factors; candidates 1-3 see one factor each, 4-19 are
    weakly related to the target. Returns (covariance, prior ensemble, candidates)."""
    rng = np.random.default_rng(seed)
    num_other = 16
    p = 1 + 3 + num_other
    L = np.zeros((p, 3 + p))
    L[0, :3] = 1.0                                          # target = f1 + f2 + f3
    L[1:4, :3] = np.eye(3)                                  # informative: one factor each + noise
    L[4:, :3] = 0.1 * rng.normal(size=(num_other, 3))       # weak proxies
    L[np.arange(p), 3 + np.arange(p)] = 0.3                 # independent noise on every column
    cov = L @ L.T
    E = rng.multivariate_normal(np.zeros(p), cov, size=num_members)
    candidates = [Candidate(f"c{j}", j, 0.2) for j in range(1, p)]
    return cov, E, candidates


def test_plan_beats_random_in_the_twin_experiment():
    cov, E, candidates = factor_toy()
    num_trials = 100
    truths = np.random.default_rng(1).multivariate_normal(np.zeros(len(cov)), cov, size=num_trials)
    plan = greedy_plan(E, 0, candidates, budget=3)
    assert {s.candidate.label for s in plan.steps} == {"c1", "c2", "c3"}
    summary = compare_plan_with_random(truths, E, 0, candidates, budget=3, num_trials=num_trials, seed=2)
    assert summary.num_trials == num_trials
    assert summary.plan_mean < summary.random_mean
    # Mean gain beyond 3 standard errors of the paired difference: a real effect, not sampling luck.
    assert summary.mean_gain > 3 * summary.gain_se
    # The plan's error matches its expected sd: E|e| = sd sqrt(2 / pi) for a Gaussian error (loose: 100
    # trials give a ~10 % sampling error on the mean, plus the ensemble's sampling error in the covariance).
    expected = np.sqrt(plan.steps[-1].variance * 2 / np.pi)
    assert summary.plan_mean == pytest.approx(expected, rel=0.3)
    assert summary.plan_sd > 0 and summary.random_sd > 0


def test_plan_and_random_agree_when_every_candidate_is_used():
    # With every candidate assimilated (no repeats) the order differs but the serial EnSRF posterior mean
    # does not (linear case): both arms must give the same error.
    cov, E, candidates = factor_toy(seed=3)
    candidates = candidates[:5]
    truth = np.random.default_rng(4).multivariate_normal(np.zeros(len(cov)), cov)
    result = verify_against_random(truth, E, 0, candidates, budget=5, rng=np.random.default_rng(5))
    assert result.plan_error == pytest.approx(result.random_error, rel=1e-9, abs=1e-12)


def test_verification_in_log_space_runs_and_is_seeded():
    cov, E, candidates = factor_toy(seed=6)
    E = np.exp(0.3 * E)
    # One truth per trial: with a single truth, its unobservable part decides which arm "wins".
    truths = np.exp(0.3 * np.random.default_rng(7).multivariate_normal(np.zeros(len(cov)), cov, size=50))
    candidates = [c._replace(error_sd=0.05) for c in candidates]
    a = compare_plan_with_random(truths, E, 0, candidates, budget=3, num_trials=50, seed=8, log=True)
    b = compare_plan_with_random(truths, E, 0, candidates, budget=3, num_trials=50, seed=8, log=True)
    np.testing.assert_array_equal(a.plan_errors, b.plan_errors)
    assert np.all(np.isfinite(a.random_errors)) and a.plan_mean < a.random_mean


def test_verification_rejects_bad_shapes():
    _, E, candidates = factor_toy()
    with pytest.raises(ValueError, match="truth must have shape"):
        verify_against_random(np.zeros(3), E, 0, candidates, 2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_trials must be >= 2"):
        compare_plan_with_random(np.zeros(E.shape[1]), E, 0, candidates, 2, num_trials=1, seed=0)
    plan = greedy_plan(E, 0, candidates, 2)
    with pytest.raises(ValueError, match="plan was made for another list"):
        verify_against_random(np.zeros(E.shape[1]), E, 0, candidates[::-1], 2, rng=np.random.default_rng(0),
                              plan=plan)

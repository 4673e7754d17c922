"""Alerts: config section, exceedance probabilities against analytic references, verification scores."""
import io
import json
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.stats import norm

from twin.alerts import (alert_error_sd, alert_forecasts, brier_decomposition, brier_score, brier_skill_score,
                         evaluate_alerts, exceedance_probability, hit_and_false_alarm_rates,
                         reliability_diagram, reliability_figure, verification_pairs, verify_alert,
                         window_probability)
from twin.config import AlertConfig, parse_config
from twin.errors import ConfigError
from twin.units import DEFAULT_ERROR_SD

OXYGEN = {"variable": "oxygen", "site": "Point B", "layer": "bottom", "threshold": 63.0, "direction": "below",
          "horizon_days": 7, "probability": 0.3}


# ---- config ---------------------------------------------------------------------------------------------

def test_alert_config_parses_with_defaults_and_derived_name():
    cfg = parse_config({"alerts": [OXYGEN, {"variable": "chlorophyll", "site": "Point B", "threshold": 10,
                                            "direction": "above"}]})
    oxygen, chl = cfg.alerts
    assert oxygen == AlertConfig(**OXYGEN, name="bottom oxygen below 63.0 at Point B")
    assert chl.name == "surface chlorophyll above 10 at Point B"
    assert (chl.layer, chl.horizon_days, chl.probability, chl.error_sd) == ("surface", 7, 0.5, None)
    assert alert_error_sd(oxygen) == DEFAULT_ERROR_SD["oxygen"]
    assert alert_error_sd(AlertConfig(**{**OXYGEN, "error_sd": 0})) == 0.0
    # Not observed: no default observation error, the alert is on the state itself.
    assert alert_error_sd(AlertConfig(**{**OXYGEN, "variable": "detritus"})) == 0.0
    assert parse_config({}).alerts == ()


def test_alert_config_typo_gets_did_you_mean():
    with pytest.raises(ConfigError, match=r"alerts\.0\.horizon_dys: unknown key \(did you mean 'horizon_days'\?\)"):
        parse_config({"alerts": [{**OXYGEN, "horizon_dys": 3}]})


def test_alert_config_rejects_unknown_variable_and_bad_values():
    with pytest.raises(ConfigError, match=r"alerts\.0\.variable: alert variable 'oxigen' is not a state variable "
                                          r"of the twin \(did you mean 'oxygen'\?\)"):
        parse_config({"alerts": [{**OXYGEN, "variable": "oxigen"}]})
    # Canonical but not carried by the twin (forcing).
    with pytest.raises(ConfigError, match=r"alert variable 'temperature' is not a state variable"):
        parse_config({"alerts": [{**OXYGEN, "variable": "temperature"}]})
    with pytest.raises(ConfigError) as info:
        parse_config({"alerts": [{**OXYGEN, "direction": "under", "probability": 0, "horizon_days": 0}]})
    text = str(info.value)
    assert "alerts.0.direction" in text and "'under'" in text
    assert "alerts.0.probability" in text and "alerts.0.horizon_days" in text


# ---- exceedance probabilities ---------------------------------------------------------------------------

def test_exceedance_probability_matches_gaussian_ensemble():
    # Members ~ N(mu, s^2) dressed with N(0, e^2) observation error: P(below) = Phi((thr - mu) / sqrt(s^2 + e^2)).
    # The estimate is a mean of N values in [0, 1] (variance <= 1/4): tolerance 5 standard errors.
    num_members, s, e, thr = 100_000, 6.0, 8.0, 63.0
    mu = np.array([55.0, 63.0, 75.0])
    x = mu[:, None] + s * np.random.default_rng(0).standard_normal((3, num_members))
    tol = 5 * 0.5 / math.sqrt(num_members)
    expected = norm.cdf((thr - mu) / math.hypot(s, e))
    assert_allclose(exceedance_probability(x, thr, "below", e), expected, atol=tol)
    assert_allclose(exceedance_probability(x, thr, "above", e), 1 - expected, atol=tol)
    # Same members: "above" is the exact complement of "below" when there is observation error.
    assert_allclose(exceedance_probability(x, thr, "above", e) + exceedance_probability(x, thr, "below", e),
                    1.0, atol=1e-12)


def test_exceedance_without_error_is_member_fraction():
    x = np.round(np.random.default_rng(1).normal(10, 3, size=(4, 5, 17)), 1)
    x[0, 0, :3] = 10.0  # ties are not beyond the threshold
    assert_array_equal(exceedance_probability(x, 10.0, "below", 0.0), np.mean(x < 10.0, axis=-1))
    assert_array_equal(exceedance_probability(x, 10.0, "above", 0.0), np.mean(x > 10.0, axis=-1))
    x[1, 2, 0] = np.nan
    assert np.isnan(exceedance_probability(x, 10.0, "below", 0.0)[1, 2])
    with pytest.raises(ValueError, match="direction must be one of"):
        exceedance_probability(x, 10.0, "under", 0.0)
    with pytest.raises(ValueError, match="error_sd must be >= 0"):
        exceedance_probability(x, 10.0, "below", -1.0)


def test_window_probability():
    # Three members over 4 lead days; threshold 5 "above".
    x = np.array([[1.0, 2.0, 3.0], [1.0, 6.0, 3.0], [7.0, 2.0, 3.0], [1.0, 2.0, 9.0]])  # (L=4, N=3)
    # Without error: fraction of trajectories that cross within the horizon.
    assert window_probability(x, 5.0, "above", 0.0, horizon_days=1) == 0.0
    assert window_probability(x, 5.0, "above", 0.0, horizon_days=2) == pytest.approx(1 / 3)
    assert window_probability(x, 5.0, "above", 0.0, horizon_days=3) == pytest.approx(2 / 3)
    assert window_probability(x, 5.0, "above", 0.0) == pytest.approx(1.0)
    # With error: mean over members of the per-member maximum of the daily probabilities.
    sd = 2.0
    q = norm.sf((5.0 - x) / sd)
    assert window_probability(x, 5.0, "above", sd) == pytest.approx(np.mean(q.max(axis=0)), abs=1e-12)
    # One day: the plain exceedance probability.
    assert window_probability(x, 5.0, "above", sd, 1) == pytest.approx(exceedance_probability(x[0], 5.0, "above", sd))
    # Vectorised over leading axes.
    stacked = np.stack([x, x + 10])
    assert_allclose(window_probability(stacked, 5.0, "above", sd, 3),
                    [window_probability(x, 5.0, "above", sd, 3), window_probability(x + 10, 5.0, "above", sd, 3)])
    with pytest.raises(ValueError, match="horizon of 5 days needs that many lead days; the forecast has 4"):
        window_probability(x, 5.0, "above", 0.0, horizon_days=5)


def test_evaluate_alerts_records_and_raised():
    low = AlertConfig(**{**OXYGEN, "horizon_days": 2, "error_sd": 0.0})
    chl = AlertConfig(variable="chlorophyll", site="Point B", threshold=10, direction="above", horizon_days=3,
                      probability=0.9, error_sd=0.0)
    oxygen = np.array([[70.0, 70, 70, 70], [60, 70, 60, 70], [50, 50, 50, 50]])  # (L=3, N=4)
    chlorophyll = np.array([[1.0, 2, 3, 11], [1, 2, 3, 4], [1, 2, 12, 4]])
    forecast = {("oxygen", "Point B", "bottom"): oxygen, ("chlorophyll", "Point B", "surface"): chlorophyll}
    a, b = evaluate_alerts([low, chl], forecast, np.datetime64("2020-06-01"))
    assert (a.name, a.probability, a.raised, a.daily_probability) == (low.name, 0.5, True, (0.0, 0.5))
    assert (b.probability, b.raised, b.daily_probability) == (0.5, False, (0.25, 0.0, 0.25))
    record = json.loads(json.dumps(a.as_json(), allow_nan=False))
    assert record["issue_time"] == "2020-06-01T00:00:00" and record["raised"] is True
    with pytest.raises(ValueError, match=r"no forecast of oxygen at Point B/surface"):
        evaluate_alerts([AlertConfig(**{**OXYGEN, "layer": "surface"})], forecast, "2020-06-01")
    with pytest.raises(ValueError, match="horizon of 7 days but the forecast has 3 lead days"):
        evaluate_alerts([AlertConfig(**OXYGEN)], forecast, "2020-06-01")
    with pytest.raises(ValueError, match="duplicate alert names"):
        evaluate_alerts([low, low], forecast, "2020-06-01")


def test_alert_forecasts_picks_state_elements():
    from twin.state_layout import StateLayout
    layout = StateLayout(("Point B", "Villefranche"), num_layers=2)
    ens = np.random.default_rng(2).random((3, 5, layout.dim))
    alert = AlertConfig(**{**OXYGEN, "site": "Villefranche"})
    got = alert_forecasts([alert], ens, layout)
    assert_array_equal(got[("oxygen", "Villefranche", "bottom")], ens[:, :, layout.index("oxygen", "Villefranche",
                                                                                           "bottom")])
    with pytest.raises(ValueError, match="the twin carries no oxygen at Nowhere/bottom"):
        alert_forecasts([AlertConfig(**{**OXYGEN, "site": "Nowhere"})], ens, layout)


# ---- verification ---------------------------------------------------------------------------------------

def test_brier_decomposition_identity_exact_at_distinct_values():
    rng = np.random.default_rng(3)
    p = rng.integers(0, 11, size=500) / 10
    o = (rng.random(500) < p).astype(int)
    dec = brier_decomposition(p, o, bins=None)
    assert dec.brier == pytest.approx(brier_score(p, o), abs=1e-15)
    assert dec.brier == pytest.approx(dec.reliability - dec.resolution + dec.uncertainty, abs=1e-12)


def test_brier_decomposition_with_bins_up_to_within_bin_terms():
    # Continuous forecasts in 10 bins: BS = REL - RES + UNC + WBV - WBC exactly (Stephenson et al. 2008),
    # with the within-bin terms computed here independently.
    rng = np.random.default_rng(4)
    p = rng.random(2000)
    o = (rng.random(2000) < p).astype(float)
    dec = brier_decomposition(p, o, bins=10)
    k = np.minimum((p * 10).astype(int), 9)
    pk = np.array([p[k == j].mean() for j in range(10)])[k]
    ok = np.array([o[k == j].mean() for j in range(10)])[k]
    wbv = np.mean((p - pk) ** 2)
    wbc = 2 * np.mean((o - ok) * (p - pk))
    assert dec.brier == pytest.approx(dec.reliability - dec.resolution + dec.uncertainty + wbv - wbc, abs=1e-12)
    # The plain identity holds approximately. These forecasts are calibrated, so E[WBC] = 2 WBV and the residual
    # is about -WBV = -w^2/12 for bins of width w, give or take the sampling error of WBC, whose sd is at most
    # 2 sqrt(0.25 WBV / n): tolerance w^2/12 plus 5 of those.
    w, n = 0.1, p.size
    tol = w**2 / 12 + 5 * 2 * math.sqrt(0.25 * w**2 / 12 / n)
    assert abs(dec.brier - (dec.reliability - dec.resolution + dec.uncertainty)) < tol


def test_perfect_forecasts():
    o = np.array([0, 1, 1, 0, 0, 1, 0, 0], dtype=bool)
    p = o.astype(float)
    assert brier_score(p, o) == 0.0
    table = hit_and_false_alarm_rates(p, o, level=0.5)
    assert (table.hit_rate, table.false_alarm_rate, table.false_alarm_ratio) == (1.0, 0.0, 0.0)
    assert (table.hits, table.misses, table.false_alarms, table.correct_negatives) == (3, 0, 0, 5)
    assert brier_skill_score(p, o) == 1.0
    dec = brier_decomposition(p, o)
    assert dec.reliability == 0.0 and dec.resolution == pytest.approx(dec.uncertainty, abs=1e-15)


def test_contingency_rates_by_hand():
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.1])
    o = np.array([1, 1, 0, 1, 0, 0, 0])
    t = hit_and_false_alarm_rates(p, o, level=0.5)
    assert (t.hits, t.misses, t.false_alarms, t.correct_negatives) == (2, 1, 2, 2)
    assert (t.hit_rate, t.false_alarm_rate, t.false_alarm_ratio) == pytest.approx((2 / 3, 0.5, 0.5))
    assert math.isnan(hit_and_false_alarm_rates(p, np.zeros(7), 0.5).hit_rate)  # no events: undefined


def test_climatological_forecast_has_no_skill():
    rng = np.random.default_rng(5)
    n, rate = 10_000, 0.3
    o = (rng.random(n) < rate).astype(float)
    # The sample base rate: BSS = 0 exactly.
    assert brier_skill_score(np.full(n, o.mean()), o) == pytest.approx(0.0, abs=1e-12)
    # The true rate: BSS = -(rate - obar)^2 / (obar (1 - obar)), and |rate - obar| < 4 sqrt(rate (1 - rate) / n),
    # so |BSS| < 16 / n (times rate (1 - rate) / (obar (1 - obar)), near 1): tolerance 20 / n.
    assert abs(brier_skill_score(np.full(n, rate), o)) < 20 / n


def test_reliability_diagram_counts_and_frequencies():
    p = np.array([0.05, 0.05, 0.15, 0.95, 0.95, 0.95, 0.95])
    o = np.array([0, 1, 0, 1, 1, 1, 0])
    d = reliability_diagram(p, o, bins=10)
    assert_allclose(d.bin_centres, np.arange(10) / 10 + 0.05)
    assert_array_equal(d.counts, [2, 1, 0, 0, 0, 0, 0, 0, 0, 4])
    assert_allclose(d.observed_frequency[[0, 1, 9]], [0.5, 0.0, 0.75])
    assert np.isnan(d.observed_frequency[2]) and np.isnan(d.mean_forecast[2])


def _sparse_case():
    """Ten daily issues, horizon 3 days, bottom oxygen below 63; bottles at days 2.5, 3.5 (lost: NaN), 7, 9.5.

    Windows (t, t + 3]: t = 0, 1, 2 see 2.5 (50, event); t = 3 sees only the lost bottle (no pair);
    t = 4, 5, 6 see day 7 (80, no event); t = 7, 8, 9 see 9.5 (60, event; day 7 is outside (7, 10]).
    """
    alert = AlertConfig(**{**OXYGEN, "horizon_days": 3, "probability": 0.5})
    issue_days = np.arange(10.0)
    probabilities = np.array([0.9, 0.6, 0.2, 0.5, 0.1, 0.4, 0.0, 0.7, 0.8, 1.0])
    obs_days = np.array([9.5, 2.5, 7.0, 3.5])  # unordered on purpose
    obs_values = np.array([60.0, 50.0, 80.0, np.nan])
    return alert, issue_days, probabilities, obs_days, obs_values


def test_verification_pairs_sparse_observations():
    alert, issue_days, probabilities, obs_days, obs_values = _sparse_case()
    p, o, used = verification_pairs(issue_days, probabilities, obs_days, obs_values, 63.0, "below", 3)
    assert_array_equal(used, [1, 1, 1, 0, 1, 1, 1, 1, 1, 1])
    assert_array_equal(o, [1, 1, 1, 0, 0, 0, 1, 1, 1])
    assert_array_equal(p, probabilities[used])


def test_verify_alert_sparse_case_known_answer():
    alert, issue_days, probabilities, obs_days, obs_values = _sparse_case()
    day0 = np.datetime64("2021-08-01T00:00", "ns")
    to_time = lambda d: day0 + (d * 86400e9).astype("timedelta64[ns]")  # noqa: E731
    result = verify_alert(alert, to_time(issue_days), probabilities, to_time(obs_days), obs_values, bins=10)
    # Pairs (p, o): (.9,1) (.6,1) (.2,1) (.1,0) (.4,0) (0,0) (.7,1) (.8,1) (1,1).
    expected_brier = (0.01 + 0.16 + 0.64 + 0.01 + 0.16 + 0 + 0.09 + 0.04 + 0) / 9
    assert (result["n"], result["n_events"]) == (9, 6)
    assert result["base_rate"] == pytest.approx(2 / 3, abs=1e-15)
    assert result["brier"] == pytest.approx(expected_brier, abs=1e-15)
    assert result["uncertainty"] == pytest.approx(2 / 9, abs=1e-15)
    assert result["brier_skill_score"] == pytest.approx(1 - expected_brier / (2 / 9), abs=1e-12)
    # Warnings at p >= 0.5: five, all followed by an event; the event at p = 0.2 is missed.
    assert (result["hits"], result["misses"], result["false_alarms"], result["correct_negatives"]) == (5, 1, 0, 3)
    assert (result["hit_rate"], result["false_alarm_rate"], result["false_alarm_ratio"]) == \
        pytest.approx((5 / 6, 0.0, 0.0))
    assert sum(result["reliability_diagram"]["counts"]) == 9
    json.dumps(result, allow_nan=False)  # JSON-ready: no NaN, no numpy types
    # Times as numbers of days give the same answer.
    assert verify_alert(alert, issue_days, probabilities, obs_days, obs_values, bins=10) == result


def test_verify_alert_without_observations_is_empty_not_an_error():
    alert, issue_days, probabilities, *_ = _sparse_case()
    result = verify_alert(alert, issue_days, probabilities, np.array([]), np.array([]))
    assert result["n"] == 0 and result["brier"] is None and result["brier_skill_score"] is None
    json.dumps(result, allow_nan=False)
    with pytest.raises(ValueError, match="both be datetimes or both be numbers"):
        verify_alert(alert, issue_days, probabilities, np.array(["2020-01-01"], "datetime64[ns]"), [1.0])


def test_reliability_figure_renders():
    alert, issue_days, probabilities, obs_days, obs_values = _sparse_case()
    result = verify_alert(alert, issue_days, probabilities, obs_days, obs_values)
    fig = reliability_figure(result)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    assert buf.getvalue()[:4] == b"\x89PNG"
    reliability_figure(verify_alert(alert, issue_days, probabilities, np.array([]), np.array([])))

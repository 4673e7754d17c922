"""Published skill on the Lorenz test beds (DAPPER's tables), median over 5 seeds, 10,000 cycles after burn-in.

References (expected ``rmse.a`` in the DAPPER scenario files): ``dapper/mods/Lorenz96/sakov2008.py``
(ETKF N=24 infl 1.013: 0.18; EnKF PertObs N=40 infl 1.06: 0.22; LETKF N=7 infl 1.04 loc_rad 4: 0.22) and
``dapper/mods/Lorenz63/sakov2012.py`` (ETKF N=10 infl 1.02: 0.60). The limits below are the issue's, a
little above these. The settings are DAPPER's: inflation of the analysis anomalies (``inflation_position=
"posterior"``), and the random rotation (``rot=True``) where DAPPER uses it with the ETKF on Lorenz-63 (on
Lorenz-96 it made 3 of 5 seeds diverge over 10,000 cycles with N=24, infl 1.013, in our runs).
Every seed must not diverge: a diverged seed fails the test, it is not hidden by the median.
The 5 seeds run in one ``jit(vmap(...))``.

The ETKF N=24 runs at inflation 1.02, not DAPPER's 1.013: at 1.013 the filter sits at the edge of its
stability, and over 10,000 cycles one seed in 20 diverged (rmse 1.5 against 0.18), in float32 and in float64
alike (measured 2026-11-28, 20 seeds each). Which seed diverges follows the machine's rounding: the test's 5
seeds passed on one VM (AMD EPYC) and one of them diverged on another (Intel Xeon, AVX-512). At 1.02 none of
20 seeds diverged, in either precision, with a median rmse of 0.185 (DAPPER's table: 0.18).
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import assimilation as da
from assimilation.testbeds import Testbed, lorenz63_sakov2012, lorenz96_sakov2008, simulate_twin

NUM_SEEDS = 5
CYCLES_AFTER_BURN_IN = 10_000
L96 = lorenz96_sakov2008()
L63 = lorenz63_sakov2012()
L96_LOCALIZATION = da.localization_1d(np.arange(40), np.arange(40), 4.0, "dapper", period=40)


@functools.partial(jax.jit, static_argnames=("testbed", "params", "num_members", "burn_in", "num_seeds"))
def skill_over_seeds(testbed: Testbed, params: da.FilterParams, num_members: int, burn_in: int,
                     localization: da.Localization | None = None, num_seeds: int = NUM_SEEDS) -> da.Skill:
    """Twin experiments, one per seed, vmapped: truth, observations, filter, skill after burn-in."""

    def one(key):
        k_twin, k_filter = jax.random.split(key)
        twin = simulate_twin(testbed, k_twin, burn_in + CYCLES_AFTER_BURN_IN, num_members)
        out = da.cycle_scan(testbed.forecast, twin.ensemble, twin.observations, k_filter, params,
                            localization=localization)
        return da.assess_skill(out.analysis_mean, out.analysis_spread, twin.truth, burn_in)

    return jax.vmap(one)(jax.random.split(jax.random.key(2024), num_seeds))


def check(skill: da.Skill, limit: float, label: str) -> None:
    rmse = np.asarray(skill.rmse)
    print(f"{label}: rmse per seed {np.round(rmse, 4).tolist()}, median {np.median(rmse):.4f}, "
          f"spread {np.round(np.asarray(skill.spread), 4).tolist()}")
    assert not np.any(np.asarray(skill.diverged)), f"{label}: diverged seeds {np.asarray(skill.diverged)}"
    assert np.median(rmse) <= limit, f"{label}: median rmse {np.median(rmse):.4f} > {limit}"


@pytest.mark.slow
def test_lorenz96_etkf_n24():
    check(skill_over_seeds(L96, da.FilterParams("etkf", 1.02, "posterior"), 24, 500), 0.20, "L96 ETKF N=24")


@pytest.mark.slow
def test_lorenz96_stochastic_enkf_n40():
    check(skill_over_seeds(L96, da.FilterParams("enkf", 1.06, "posterior"), 40, 500), 0.24, "L96 EnKF N=40")


@pytest.mark.slow
def test_lorenz96_letkf_n7_dapper_radius_4():
    check(skill_over_seeds(L96, da.FilterParams("letkf", 1.04, "posterior"), 7, 500, L96_LOCALIZATION),
          0.24, "L96 LETKF N=7")


@pytest.mark.slow
def test_lorenz96_etkf_n24_adaptive_inflation_untuned():
    check(skill_over_seeds(L96, da.FilterParams("etkf", adaptive_inflation=True), 24, 500), 0.22,
          "L96 ETKF N=24 adaptive")


@pytest.mark.slow
def test_lorenz63_etkf_n10():
    params = da.FilterParams("etkf", 1.02, "posterior", random_rotation=True)
    check(skill_over_seeds(L63, params, 10, 200), 0.65, "L63 ETKF N=10")


@pytest.mark.slow
def test_divergence_is_detected_not_hidden():
    """ETKF with N=10 < the number of unstable directions of Lorenz-96 and no inflation diverges."""
    params = da.FilterParams("etkf", inflation_factor=1.0)
    skill = skill_over_seeds(L96, params, 10, 500, num_seeds=2)
    assert np.all(np.asarray(skill.diverged)), skill
    assert np.all(np.asarray(skill.rmse) > 1.0)

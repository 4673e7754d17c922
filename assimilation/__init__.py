"""Ensemble Kalman filters as pure JAX functions (no biogeochemistry, no I/O).

Shapes: ``N`` members, ``n`` = state dimension (the flattened state), ``m`` observation slots per cycle
(padded, so shapes are static), ``T`` cycles.

Data (pytrees, :mod:`assimilation.types`)::

    Ensemble(members (N, n))
    Observations(value (m,), error_sd (m,), state_index (m,) int, mask (m,) bool, qc_ok (m,) bool)
    FilterParams(method="etkf"|"enkf"|"letkf"|"ensrf", inflation_factor, rtps_alpha, adaptive_inflation,
                 outlier_threshold, ...)            # frozen dataclass, static under jit
    Localization(obs_slot (D, L), taper (D, L), domain_of_state (n,))
    InflationState(mean, sd), Diagnostics(...), Skill(rmse, spread, ratio, diverged)

One analysis, or a window of cycles compiled as one ``lax.scan``::

    result = analysis(ensemble, obs, key, params, inflation_state=None, localization=None,
                      log_mask=None, obs_operator=None)      # -> AnalysisResult(ensemble, inflation_state,
                                                              #    diagnostics, disposition (m,))
    out = run_cycles(forecast, ensemble, obs_stacked, key, params, forcing=None, inflation_state=None,
                     localization=None, log_mask=None, obs_operator=None)
    # forecast(members (N, n), forcing_t, key) -> (N, n); obs_stacked: Observations with a (T,) axis;
    # out: CycleResult(ensemble, inflation_state, analysis_mean (T, n), analysis_spread (T, n),
    #                  diagnostics (T,), disposition (T, m))

The observation operator is ``x[state_index]`` on the flattened physical state, or ``obs_operator(x (n,),
obs) -> (m,)`` (a JAX function, vmapped over members); ``state_index`` still names the observation's
location and whether it is log-transformed (``log_mask[state_index]``). Every observation slot gets a
disposition code (:mod:`assimilation.dispositions`): ASSIMILATED 0, MISSING 1, BAD_QC 2, OUTSIDE_DOMAIN 3,
INVALID_FOR_TRANSFORM 4, REJECTED_OUTLIER 5. A cycle with no assimilated observation is a forecast only.

Inflation (``inflation_factor``, ``adaptive_inflation``, ``rtps_alpha``) multiplies prior anomalies, or with
``inflation_position="posterior"`` the analysis anomalies as DAPPER's ``infl``; ``random_rotation=True`` is
DAPPER's ``rot=True``. Localization radius conventions: ours is the
Gaspari-Cohn half-width (taper 0 beyond 2 radius); ``"dapper"`` is DAPPER's ``loc_rad`` (c = 1.82 loc_rad,
taper about exp(-1/2) at loc_rad); see :mod:`assimilation.localization`.

References: Evensen 2009 (EnKF); Hunt, Kostelich and Szunyogh 2007 (LETKF); Sakov and Oke 2008 (ETKF,
Lorenz-96 set-up); Whitaker and Hamill 2002 (serial EnSRF) and 2012 (RTPS); Anderson 2009 (adaptive
inflation); Gaspari and Cohn 1999 (taper).
"""
from assimilation import dispositions
from assimilation.analysis import (
    ANALYSIS_KERNELS,
    AnalysisResult,
    ObsOperator,
    analysis,
    degrees_of_freedom_for_signal,
    enkf_update,
    ensrf_update,
    etkf_update,
    get_analysis_kernel,
    letkf_update,
    predict_observations,
)
from assimilation.cycling import (
    CycleResult,
    ForecastFn,
    cycle_scan,
    make_observations,
    run_cycles,
    stack_observations,
    standard_normal,
)
from assimilation.dispositions import (
    ASSIMILATED,
    BAD_QC,
    DISPOSITION_NAMES,
    INVALID_FOR_TRANSFORM,
    MISSING,
    NUM_DISPOSITIONS,
    OUTSIDE_DOMAIN,
    REJECTED_OUTLIER,
)
from assimilation.inflation import (
    adaptive_inflation_update,
    damp_inflation,
    inflate,
    random_rotation,
    relax_to_prior_spread,
)
from assimilation.localization import gaspari_cohn, half_width, localization_1d, localization_from_distances
from assimilation.skill import Skill, assess_skill
from assimilation.transforms import from_transformed, lognormal_obs, to_transformed
from assimilation.types import (
    ANALYSIS_METHODS,
    INFLATION_POSITIONS,
    RADIUS_CONVENTIONS,
    AnalysisMethod,
    Diagnostics,
    Ensemble,
    FilterParams,
    InflationPosition,
    InflationState,
    Localization,
    Observations,
    RadiusConvention,
    initial_inflation_state,
)

__all__ = [
    "ANALYSIS_KERNELS", "ANALYSIS_METHODS", "ASSIMILATED", "AnalysisMethod", "AnalysisResult", "BAD_QC",
    "CycleResult", "DISPOSITION_NAMES", "Diagnostics", "Ensemble", "FilterParams", "ForecastFn",
    "INFLATION_POSITIONS", "INVALID_FOR_TRANSFORM", "InflationPosition", "InflationState", "Localization",
    "MISSING", "NUM_DISPOSITIONS", "OUTSIDE_DOMAIN",
    "ObsOperator", "Observations", "RADIUS_CONVENTIONS", "REJECTED_OUTLIER", "RadiusConvention", "Skill",
    "adaptive_inflation_update", "analysis", "assess_skill", "cycle_scan", "damp_inflation",
    "degrees_of_freedom_for_signal", "dispositions",
    "enkf_update", "ensrf_update", "etkf_update", "from_transformed", "gaspari_cohn", "get_analysis_kernel",
    "half_width", "inflate", "initial_inflation_state", "letkf_update", "localization_1d",
    "localization_from_distances", "lognormal_obs", "make_observations", "predict_observations", "random_rotation",
    "relax_to_prior_spread", "run_cycles", "stack_observations", "standard_normal", "to_transformed",
]

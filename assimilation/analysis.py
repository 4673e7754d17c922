"""Analysis kernels (stochastic EnKF, ETKF, LETKF, serial EnSRF) and the full analysis step.

Every kernel has the same signature and works in standardized observation space, where an observation
slot with ``obs_scale`` 0 has no effect (masked, rejected, or outside a local domain):

    kernel(members (N, n), predicted (N, m), obs_value (m,), obs_scale (m,), key, localization)
        -> (analysis members (N, n), degrees of freedom for signal ())

with ``obs_scale = sqrt(R^-1)`` per observation (diagonal R, 0 for unused slots). Legend inside kernels:
``A`` state anomalies (N, n), ``Y`` standardized predicted-observation anomalies (N, m), ``dy``
standardized innovation of the mean (m,), ``N1 = N - 1``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from assimilation import dispositions as dsp
from assimilation.inflation import (
    adaptive_inflation_update,
    damp_inflation,
    inflate,
    random_rotation,
    relax_to_prior_spread,
)
from assimilation.transforms import from_transformed, lognormal_obs, to_transformed
from assimilation.types import (
    ANALYSIS_METHODS,
    AnalysisMethod,
    Diagnostics,
    Ensemble,
    FilterParams,
    InflationState,
    Localization,
    Observations,
    initial_inflation_state,
)

_OPENBLAS_THREADED_TRSM = 1024  # elements of the right-hand side from which OpenBLAS threads a trsm
_MIN_RHS_BLOCK = 8  # past k = 128 the solves are large enough to be worth the threads
# Observation slots of the ETKF's compact path: a coastal cycle pads its slots to the busiest day (weekly
# bottles), while most days hold only the buoy's few super-observations.
_COMPACT_SLOTS = 8

ObsOperator = Callable[[Array, Observations], Array]
"""Optional forward operator: (n,) physical state, the cycle's Observations -> (m,) predicted values."""


def _standardize(predicted: Array, obs_value: Array, obs_scale: Array) -> tuple[Array, Array]:
    used = obs_scale > 0
    mean = predicted.mean(axis=0)
    Y = jnp.where(used, (predicted - mean) * obs_scale, 0.0)
    dy = jnp.where(used, (obs_value - mean) * obs_scale, 0.0)
    return Y, dy


def _gram(Y: Array) -> Array:
    """Y Y^T (N, N). The barrier keeps Y in (N, m) row-major order: otherwise XLA lays out Y as the (m, N)
    gather of the predicted observations it came from, and a Gram product contracting the leading axis falls
    to XLA's slow generic dot on CPU (measured: 10 us of a 80 us ETKF cycle on Lorenz-96, N=24)."""
    Y = jax.lax.optimization_barrier(Y)
    return Y @ Y.T


def _solve_lower(L: Array, B: Array, transpose: bool = False) -> Array:
    """L^-1 B (or L^-T B) for lower-triangular L (k, k) and B (k, c), in blocks of columns small enough
    that LAPACK's trsm (OpenBLAS) does not start threads: it threads a solve of 1024 or more elements, and
    at these sizes the threads cost more than the solve, or far more on busy cores (Lorenz-96 EnKF, N=40,
    2 busy cores: 16 ms per cycle instead of 0.2 ms). The blocks go to one batched call."""
    k, c = B.shape
    width = max(_MIN_RHS_BLOCK, (_OPENBLAS_THREADED_TRSM - 1) // k)
    if width >= c:
        return jax.scipy.linalg.solve_triangular(L, B, lower=True, trans="T" if transpose else 0)
    num_blocks = -(-c // width)
    padded = jnp.pad(B, ((0, 0), (0, num_blocks * width - c)))
    blocks = padded.reshape(k, num_blocks, width).transpose(1, 0, 2)               # (blocks, k, width)
    # L broadcast too: with L unbatched, the batching rule folds the blocks back into one wide solve.
    Ls = jnp.broadcast_to(L, (num_blocks, k, k))
    X = jax.scipy.linalg.solve_triangular(Ls, blocks, lower=True, trans="T" if transpose else 0)
    return X.transpose(1, 0, 2).reshape(k, num_blocks * width)[:, :c]


def _etkf_transform(Y: Array, dy: Array) -> tuple[Array, Array]:
    """Ensemble-space transform W (N, N) with analysis = mean + W @ A (Hunt et al. 2007, eqs. 21-24),
    and trace(HK) = sum_i s_i / (s_i + N1) over the eigenvalues s_i of Y Y^T.

    With fewer observation slots than members (m < N, the usual coastal cycle) the same W comes from the
    eigendecomposition of the m x m matrix Y^T Y instead of the N x N one (cheaper, same numbers).
    """
    num_members, num_obs = Y.shape
    if num_obs < num_members:
        return _etkf_transform_obs_space(Y, dy)
    n1 = num_members - 1
    G = _gram(Y) + n1 * jnp.eye(num_members, dtype=Y.dtype)
    eigval, V = jnp.linalg.eigh(G)
    T = (V * jnp.sqrt(n1 / eigval)) @ V.T  # symmetric square root: T 1 = 1, so the mean is preserved
    w = V @ ((V.T @ (Y @ dy)) / eigval)
    return w[None, :] + T, _dofs_from_eigenvalues(eigval, n1)


def _etkf_transform_obs_space(Y: Array, dy: Array) -> tuple[Array, Array]:
    """:func:`_etkf_transform` through Y^T Y = U diag(s) U^T (m x m). With G = Y Y^T + N1 I:
    sqrt(N1) G^(-1/2) = I + Y U diag(g(s)) U^T Y^T, g(s) = (sqrt(N1 / (N1 + s)) - 1) / s, written as
    -1 / ((N1 + s)(1 + sqrt(N1 / (N1 + s)))) so that s = 0 (an empty slot) is exact; and
    G^-1 Y dy = Y U diag(1 / (N1 + s)) U^T dy."""
    num_members = Y.shape[0]
    n1 = num_members - 1
    # Both products contract a row-major axis (see _gram): Y^T Y written as a product over Y's leading axis, and
    # Y U with Y gathered from its slots, each fell to XLA's generic dot on CPU (13 us of a 56 us analysis).
    Y = jax.lax.optimization_barrier(Y)
    s, U = jnp.linalg.eigh(_gram(Y.T))
    s = jnp.maximum(s, 0.0)  # round-off below zero on empty slots
    root = jnp.sqrt(n1 / (n1 + s))
    g = -1.0 / ((n1 + s) * (1.0 + root))
    YU = Y @ U                                                       # (N, m)
    T = jnp.eye(num_members, dtype=Y.dtype) + (YU * g) @ YU.T
    w = YU @ ((U.T @ dy) / (n1 + s))
    return w[None, :] + T, jnp.sum(s / (n1 + s))


def _etkf_transform_active_slots(Y: Array, dy: Array) -> tuple[Array, Array]:
    """:func:`_etkf_transform`, through the slots in use only when they are at most ``_COMPACT_SLOTS``.

    An unused slot (zero R^-1/2: zero column of Y, zero dy) adds nothing to Y^T Y but an eigenvalue of 0, so
    leaving it out gives the same W. With 28 slots of which 4 are in use (a buoy day), LAPACK's eigh of the
    28 x 28 matrix took about 60 us of a 230 us cycle. ``lax.cond`` runs one branch per call (not under vmap,
    where both run: the LETKF keeps the plain transform).
    """
    num_members, num_obs = Y.shape
    if num_obs <= _COMPACT_SLOTS or num_obs >= num_members:
        return _etkf_transform(Y, dy)
    active = jnp.any(Y != 0, axis=0) | (dy != 0)
    count = jnp.sum(active)

    def compact(Y, dy):
        (slots,) = jnp.nonzero(active, size=_COMPACT_SLOTS, fill_value=0)
        valid = jnp.arange(_COMPACT_SLOTS) < count  # the fill repeats slot 0: zeroed, so it adds nothing
        return _etkf_transform_obs_space(Y[:, slots] * valid, dy[slots] * valid)

    return jax.lax.cond(count <= _COMPACT_SLOTS, compact, _etkf_transform_obs_space, Y, dy)


def _dofs_from_eigenvalues(eigval: Array, n1: int) -> Array:
    return jnp.sum((eigval - n1) / eigval)


def degrees_of_freedom_for_signal(Y: Array) -> Array:
    """trace(HK) from standardized predicted-observation anomalies Y (N, m) (Cardinali et al. 2004)."""
    n1 = Y.shape[0] - 1
    return _dofs_from_eigenvalues(jnp.linalg.eigvalsh(Y @ Y.T + n1 * jnp.eye(Y.shape[0], dtype=Y.dtype)), n1)


def etkf_update(members: Array, predicted: Array, obs_value: Array, obs_scale: Array, key: Array | None = None,
                localization: Localization | None = None) -> tuple[Array, Array]:
    """ETKF analysis, symmetric square root (Hunt et al. 2007; Sakov and Oke 2008), mean-preserving.

    Args:
        members: (N, n) prior ensemble (analysis space).
        predicted: (N, m) predicted observations H(x_i) (analysis space).
        obs_value: (m,) observations (analysis space).
        obs_scale: (m,) sqrt(R^-1) per observation, 0 for unused slots.
        key: unused (deterministic filter).
        localization: unused (global analysis).

    Returns:
        (N, n) analysis ensemble, () degrees of freedom for signal.
    """
    Y, dy = _standardize(predicted, obs_value, obs_scale)
    mean = members.mean(axis=0)
    W, dofs = _etkf_transform_active_slots(Y, dy)
    return mean + W @ (members - mean), dofs


def letkf_update(members: Array, predicted: Array, obs_value: Array, obs_scale: Array, key: Array | None = None,
                 localization: Localization | None = None) -> tuple[Array, Array]:
    """LETKF: one ETKF transform per local domain, R^-1 tapered (Hunt et al. 2007, section 2.3).

    Args:
        members: (N, n) prior ensemble (analysis space).
        predicted: (N, m) predicted observations.
        obs_value: (m,) observations.
        obs_scale: (m,) sqrt(R^-1), 0 for unused slots.
        key: unused (deterministic filter).
        localization: the local observation sets and tapers (required); ``localization_from_distances``
            with an infinite radius gives the ETKF.

    Returns:
        (N, n) analysis ensemble, () global (untapered) degrees of freedom for signal.
    """
    if localization is None:
        raise ValueError("letkf needs a Localization (localization_1d or localization_from_distances; "
                         "radius=inf for none)")
    Y, dy = _standardize(predicted, obs_value, obs_scale)
    sqrt_taper = jnp.sqrt(localization.taper)                       # (D, L)
    Y_local = jnp.swapaxes(Y[:, localization.obs_slot], 0, 1) * sqrt_taper[:, None, :]  # (D, N, L)
    dy_local = dy[localization.obs_slot] * sqrt_taper               # (D, L)
    W, _ = jax.vmap(_etkf_transform)(Y_local, dy_local)             # (D, N, N)
    mean = members.mean(axis=0)
    W_state = W[localization.domain_of_state]                      # (n, N, N)
    return mean + jnp.einsum("eik,ke->ie", W_state, members - mean), degrees_of_freedom_for_signal(Y)


def enkf_update(members: Array, predicted: Array, obs_value: Array, obs_scale: Array, key: Array | None = None,
                localization: Localization | None = None, perturbations: Array | None = None
                ) -> tuple[Array, Array]:
    """Stochastic EnKF with perturbed observations (Burgers et al. 1998; Evensen 2009, ch. 9).

    The perturbations are centred over members (as DAPPER's ``mean0``), so the analysis mean equals the
    Kalman mean of the sample prior. x_i += A^T G^-1 Y s_i with G = Y Y^T + N1 I and s_i the
    standardized perturbed innovation of member i, solved in ensemble or observation space, the smaller.

    Args:
        members: (N, n) prior ensemble.
        predicted: (N, m) predicted observations.
        obs_value: (m,) observations.
        obs_scale: (m,) sqrt(R^-1), 0 for unused slots.
        key: PRNG key for the observation perturbations (required unless ``perturbations`` is given).
        localization: unused.
        perturbations: (N, m) standard normal draws to use instead of drawing from ``key`` (the cycling
            driver draws a whole window's at once: drawing them cycle by cycle dominated the EnKF's cost).

    Returns:
        (N, n) analysis ensemble, () degrees of freedom for signal.
    """
    if key is None and perturbations is None:
        raise ValueError("enkf needs a PRNG key (or perturbations) for the observation perturbations")
    Y, dy = _standardize(predicted, obs_value, obs_scale)
    num_members = members.shape[0]
    n1 = num_members - 1
    eps = jax.random.normal(key, Y.shape, Y.dtype) if perturbations is None else perturbations.astype(Y.dtype)
    eps = (eps - eps.mean(axis=0)) * (obs_scale > 0)
    D = dy[None, :] - Y + eps                                       # (N, m) standardized innovations
    # W = D Y^T G^-1 = D (Y^T Y + N1 I_m)^-1 Y^T, through the Cholesky factor L of whichever of the two is
    # smaller: both are N1 I plus a Gram matrix, eigenvalues >= N1, so the factorisation is well conditioned,
    # and it costs a tenth of an eigendecomposition (N = 40 on CPU: 10 us against 170 us).
    # trace(HK) = trace(Y^T G^-1 Y) = ||L^-1 Y||_F^2.
    if num_members <= Y.shape[1]:
        L = jnp.linalg.cholesky(_gram(Y) + n1 * jnp.eye(num_members, dtype=Y.dtype))
        Z = _solve_lower(L, Y)                                      # L^-1 Y (N, m)
        # (G^-1 Y D^T)^T, materialised row-major (the barrier): as a transposed view, W @ A falls to XLA's slow
        # generic dot on CPU, as in _gram.
        W = jax.lax.optimization_barrier(_solve_lower(L, Z @ D.T, transpose=True).T)
    else:
        L = jnp.linalg.cholesky(_gram(Y.T) + n1 * jnp.eye(Y.shape[1], dtype=Y.dtype))
        Z = _solve_lower(L, Y.T)                                    # L^-1 Y^T (m, N)
        W = D @ _solve_lower(L, Z, transpose=True)                  # D G_m^-1 Y^T
    mean = members.mean(axis=0)
    return members + W @ (members - mean), jnp.sum(Z * Z)


def ensrf_update(members: Array, predicted: Array, obs_value: Array, obs_scale: Array, key: Array | None = None,
                 localization: Localization | None = None) -> tuple[Array, Array]:
    """Serial EnSRF: one observation at a time, no m x m matrix (Whitaker and Hamill 2002, eqs. 10-13).

    Each scalar update changes the mean with the Kalman gain and the anomalies with the reduced gain
    alpha K, alpha = 1 / (1 + sqrt(R / (HPH^T + R))); the predicted observations of the later observations
    are updated with them (exact for a linear operator). Equals the Kalman analysis for diagonal R.

    Args:
        members: (N, n) prior ensemble.
        predicted: (N, m) predicted observations.
        obs_value: (m,) observations.
        obs_scale: (m,) sqrt(R^-1), 0 for unused slots (which leave everything unchanged).
        key: unused.
        localization: unused (global).

    Returns:
        (N, n) analysis ensemble, () degrees of freedom for signal.
    """
    Y, dy = _standardize(predicted, obs_value, obs_scale)
    n1 = members.shape[0] - 1
    mean = members.mean(axis=0)

    def step(carry, j):
        mean, A, dy, Y = carry
        yj = Y[:, j]
        total = yj @ yj / n1 + 1.0                                  # HPH^T + R, standardized
        kx = (A.T @ yj) / (n1 * total)
        ky = (Y.T @ yj) / (n1 * total)
        alpha = 1.0 / (1.0 + jnp.sqrt(1.0 / total))
        dj = dy[j]
        return (mean + kx * dj, A - alpha * jnp.outer(yj, kx), dy - ky * dj, Y - alpha * jnp.outer(yj, ky)), None

    (mean, A, _, _), _ = jax.lax.scan(step, (mean, members - mean, dy, Y), jnp.arange(Y.shape[1]))
    return mean + A, degrees_of_freedom_for_signal(Y)


ANALYSIS_KERNELS: dict[str, Callable[..., tuple[Array, Array]]] = {
    "etkf": etkf_update,
    "enkf": enkf_update,
    "letkf": letkf_update,
    "ensrf": ensrf_update,
}
assert set(ANALYSIS_KERNELS) == set(ANALYSIS_METHODS)


def get_analysis_kernel(method: AnalysisMethod) -> Callable[..., tuple[Array, Array]]:
    """The analysis kernel registered under ``method``.

    Raises:
        ValueError: unknown name, with the list of valid ones.
    """
    try:
        return ANALYSIS_KERNELS[method]
    except KeyError:
        raise ValueError(f"unknown analysis method {method!r}; valid methods: {ANALYSIS_METHODS}") from None


class AnalysisResult(NamedTuple):
    """Output of :func:`analysis`.

    Attributes:
        ensemble: the analysis ensemble (physical units; log-transformed elements > 0).
        inflation_state: adaptive inflation state after this cycle (unchanged if not adaptive).
        diagnostics: the cycle's :class:`Diagnostics`.
        disposition: (m,) int32 disposition code of each observation slot (see ``dispositions``).
    """

    ensemble: Ensemble
    inflation_state: InflationState
    diagnostics: Diagnostics
    disposition: Array


def predict_observations(members: Array, observations: Observations,
                         obs_operator: ObsOperator | None = None) -> Array:
    """Predicted observations H(x_i) in physical units.

    Args:
        members: (N, n) physical states.
        observations: the cycle's observations (``state_index`` used by the default point operator).
        obs_operator: optional JAX function (n,), Observations -> (m,); applied to each member with vmap.

    Returns:
        (N, m) predicted observations (out-of-range indices are clipped; their slots are flagged).
    """
    if obs_operator is not None:
        return jax.vmap(lambda x: obs_operator(x, observations))(members)
    index = jnp.clip(observations.state_index, 0, members.shape[1] - 1)
    return members[:, index]


def analysis(ensemble: Ensemble, observations: Observations, key: Array, params: FilterParams = FilterParams(),
             inflation_state: InflationState | None = None, localization: Localization | None = None,
             log_mask: Array | None = None, obs_operator: ObsOperator | None = None,
             obs_perturbations: Array | None = None, inflation_mask: Array | None = None,
             update_weight: Array | None = None) -> AnalysisResult:
    """One analysis: checks, transforms, inflation, the ``params.method`` kernel, RTPS, diagnostics.

    Order: dispositions of empty/bad/out-of-domain slots; log transform of the state and of the observations
    of log-transformed elements (lognormal moments); gross-error check against the prior inflated by the
    current factor; adaptive inflation update (Anderson 2009) from the accepted innovations; prior
    inflation; analysis; posterior inflation (``inflation_position="posterior"``); RTPS; optional random
    rotation; back-transform. A cycle with no accepted observation returns the prior
    unchanged (a forecast only).

    Args:
        ensemble: prior ensemble, members (N, n) in physical units.
        observations: the cycle's observations, m slots.
        key: PRNG key (used by the stochastic EnKF).
        params: filter settings (static).
        inflation_state: adaptive inflation state (default: ``initial_inflation_state()``).
        localization: local observation sets (LETKF only).
        log_mask: (n,) bool, elements analysed in log space, or None.
        obs_operator: optional forward operator; default ``x[state_index]``.
        obs_perturbations: (N, m) standard normal draws for the stochastic EnKF (default: drawn from ``key``).
        inflation_mask: (n,) bool, elements that multiplicative inflation (prior or posterior, fixed or
            adaptive) acts on; None: all. Augmented parameters whose spread their own model sets (an AR(1)
            bias) are left out: inflated every cycle they are not observed, their spread would grow without
            bound (Ruiz et al. 2013 treat parameter spread apart for the same reason).
        update_weight: (n,) weights in [0, 1], or None (all 1): variable localization. Element i of every
            member moves by ``w_i`` times its analysis increment from its (uninflated) forecast, in the
            analysis space. Without inflation, for an element no observation sees, this is the Kalman gain
            with that element's covariances tapered by ``w_i`` (Kang et al. 2011, JGR 116, D09110, who cut
            the covariances between variables not physically related); ``w_i = 0`` leaves the forecast as it
            is, inflation included (else an element no observation corrects grows by the factor each cycle).

    Returns:
        :class:`AnalysisResult`.
    """
    kernel = get_analysis_kernel(params.method)
    if inflation_state is None:
        inflation_state = initial_inflation_state()
    E = ensemble.members
    num_members, state_dim = E.shape
    obs = observations
    dtype = E.dtype

    index_ok = (obs.state_index >= 0) & (obs.state_index < state_dim)
    safe_index = jnp.clip(obs.state_index, 0, state_dim - 1)
    obs_log = jnp.zeros(obs.value.shape, bool) if log_mask is None else log_mask[safe_index]
    present = obs.mask & jnp.isfinite(obs.value) & jnp.isfinite(obs.error_sd) & (obs.error_sd > 0)
    y_log, r_log = lognormal_obs(obs.value, obs.error_sd)
    y_t = jnp.where(obs_log, y_log, obs.value).astype(dtype)
    r_t = jnp.where(obs_log, r_log, obs.error_sd).astype(dtype)

    def predict_transformed(physical):
        h = predict_observations(physical, obs, obs_operator)
        return jnp.where(obs_log, jnp.log(jnp.maximum(h, params.log_floor)), h)

    Z = to_transformed(E, log_mask, params.log_floor)
    HZ0 = predict_transformed(E)
    operator_ok = index_ok & jnp.all(jnp.isfinite(HZ0), axis=0)
    disposition = jnp.where(
        ~present, dsp.MISSING,
        jnp.where(~obs.qc_ok, dsp.BAD_QC,
                  jnp.where(~operator_ok, dsp.OUTSIDE_DOMAIN,
                            jnp.where(obs_log & (obs.value <= 0), dsp.INVALID_FOR_TRANSFORM, dsp.ASSIMILATED))))
    candidate = disposition == dsp.ASSIMILATED
    y_safe = jnp.where(candidate, y_t, 0.0)
    r_safe = jnp.where(candidate, r_t, 1.0)
    mean0 = jnp.where(candidate, HZ0, 0.0).mean(axis=0)
    var0 = jnp.where(candidate, HZ0, 0.0).var(axis=0, ddof=1)
    innovation0 = y_safe - mean0

    posterior_factor = 1.0
    prior_factor = params.inflation_factor
    if params.inflation_position == "posterior" and not params.adaptive_inflation:
        posterior_factor, prior_factor = params.inflation_factor, 1.0
    static_unit_inflation = (not params.adaptive_inflation) and prior_factor == 1.0
    if params.adaptive_inflation:
        inflation_state = damp_inflation(inflation_state, params.adaptive_damping)
        check_factor = jnp.sqrt(inflation_state.mean)
    else:
        check_factor = jnp.asarray(prior_factor, dtype)
    outlier = candidate & (jnp.abs(innovation0) > params.outlier_threshold
                           * jnp.sqrt(check_factor**2 * var0 + r_safe**2))
    disposition = jnp.where(outlier, dsp.REJECTED_OUTLIER, disposition).astype(jnp.int32)
    active = disposition == dsp.ASSIMILATED
    any_active = jnp.any(active)

    if params.adaptive_inflation:
        inflation_state = adaptive_inflation_update(inflation_state, var0, r_safe**2, innovation0, active,
                                                    params.adaptive_sd_lower_bound, params.adaptive_bounds)
        factor = jnp.sqrt(inflation_state.mean).astype(dtype)
    else:
        factor = jnp.asarray(prior_factor, dtype)
    if static_unit_inflation:
        Zf, HZ = Z, HZ0
    else:
        Zf = inflate(Z, factor) if inflation_mask is None else jnp.where(inflation_mask, inflate(Z, factor), Z)
        HZ = predict_transformed(from_transformed(Zf, log_mask)) if log_mask is not None or obs_operator \
            is not None or inflation_mask is not None else inflate(HZ0, factor)
    HZ = jnp.where(active, HZ, 0.0)

    obs_scale = jnp.where(active, 1.0 / r_safe, 0.0)
    if params.method == "enkf" and obs_perturbations is not None:
        Za, dofs = kernel(Zf, HZ, y_safe, obs_scale, key, localization, perturbations=obs_perturbations)
    else:
        Za, dofs = kernel(Zf, HZ, y_safe, obs_scale, key, localization)
    if posterior_factor != 1.0:
        Za = inflate(Za, posterior_factor) if inflation_mask is None else \
            jnp.where(inflation_mask, inflate(Za, posterior_factor), Za)
    if params.rtps_alpha > 0:
        Za = relax_to_prior_spread(Zf, Za, params.rtps_alpha)
    if params.random_rotation:
        Za = random_rotation(Za, jax.random.fold_in(key, 1))
    if update_weight is not None:
        Za = Z + jnp.asarray(update_weight, dtype) * (Za - Z)
    Ea = jnp.where(any_active, from_transformed(Za, log_mask), E)

    # Diagnostics, in the analysis space, innovations of the (inflated) prior.
    num_active = jnp.sum(active)
    denom = jnp.maximum(num_active, 1)
    d = jnp.where(active, y_safe - HZ.mean(axis=0), 0.0)
    d_mean = jnp.sum(d) / denom
    d_var = jnp.sum(jnp.where(active, (d - d_mean) ** 2, 0.0)) / denom
    var_f = HZ.var(axis=0, ddof=1)
    normalized = jnp.sum(jnp.where(active, d**2 / (var_f + r_safe**2), 0.0)) / denom
    Za_used = jnp.where(any_active, Za, Zf)
    diagnostics = Diagnostics(
        innovation_mean=d_mean,
        innovation_variance=d_var,
        normalized_innovation=normalized,
        prior_spread=jnp.sqrt(jnp.mean(Zf.var(axis=0, ddof=1))),
        analysis_spread=jnp.sqrt(jnp.mean(Za_used.var(axis=0, ddof=1))),
        dofs=dofs,
        counts=jnp.bincount(disposition, length=dsp.NUM_DISPOSITIONS).astype(jnp.int32),
        inflation=jnp.where(any_active, factor * posterior_factor, 1.0).astype(dtype),
        diverged=~jnp.all(jnp.isfinite(Ea)) | (normalized > params.divergence_limit),
    )
    return AnalysisResult(Ensemble(Ea), inflation_state, diagnostics, disposition)

"""Hindcast speed benchmark: the twin's cycle (jit + lax.scan) against a plain NumPy loop of the same cycle.

A synthetic hindcast with no data files: two sites, two layers (state of 36: 16 tracers and 2 chlorophylls
per site), ``--years`` of daily cycles with ``--members`` members, the demo emulator checkpoint
(``configs/emulators/demo``, one site: the twin steps every site with site index 0) and the demo filter's
settings (``configs/demo.yaml``: prior inflation 1.05, gross-error check at 4 sd, its variable localization,
every element analysed in log space as ``twin.hindcast.run_windows`` does) with the ETKF: the demo's LETKF
is there for its cross-variable taper around its Chl:N error element, which this state does not carry (as
in sessions 1-12, when the demo ran the ETKF). Forcing is ``emulators.forcing.synthetic_forcing`` per site.

Observations (28 slots a cycle): weekly bottles (nitrate, ammonium, phosphate, silicate, chlorophyll,
oxygen at surface and bottom of both sites, both sites sampled the same day) and the hourly buoy at each
site's surface (oxygen and chlorophyll; temperature is forcing, not state), given directly as the daily
super-observations that ``twin.cycle_obs`` would average 24 hourly values into (error
``e sqrt(r^2 + (1 - r^2) / 24)``, r = 0.7), with a tenth of the buoy days missing. Values are a stochastic
free run of the same emulator (a member drawn like the initial ensemble) times log-normal noise with the
observation's error sd, so every value is positive and the filter has a truth to track.

The twin side is ``twin.engine.run_window`` over windows of ``hindcast.window_days`` (365) with the keys and
arguments of ``twin.hindcast.run_windows`` (no refit, no alerts: the demo has neither), timed warm;
``compile_seconds`` is the first call of a window minus a warm call of the same window. The NumPy side
(float32, as the twin) runs one cycle per Python iteration: the emulator's MLP from the checkpoint's arrays
with the normalisation and clipped log increment of ``emulators.network.predict_step``, the multiplicative
model error, the chlorophyll diagnostic, and ``assimilation.analysis`` for these settings (dispositions,
lognormal observation moments, gross-error check, inflation, ETKF, diagnostics), recording what the engine
records (means, sds, quantiles, observation-space means). Its model-error normals are drawn beforehand from
the twin's own cycle keys and its forcing features extracted beforehand, both outside its timing (which only
favours NumPy).

Equivalence: both run the first ``--check-days`` cycles from the same ensemble; the largest relative
difference of the analysis means must stay below ``CHECK_RTOL`` and every observation must get the same
disposition. The check is on a short span: float32 rounding (summation orders, two LAPACK eigensolver calls)
is 1e-5 to 4e-5 over 20-120 cycles, but nothing bounds its growth through a nonlinear cycle over 25 years.

Each side is timed ``--repeats`` times (default 3), the two sides in turn, and its fastest run counts. Prints both
times, the ratio and peak memory (``resource.getrusage`` ru_maxrss); the last line is JSON.

On a few cores, run it with ``OPENBLAS_NUM_THREADS=1``: jaxlib's LAPACK (``eigh``) goes through OpenBLAS, whose
threads fight XLA's inside the scan (64 members, 2 shared cores: 3 to 8.5 ms a cycle instead of 1.1 ms, and the
NumPy loop's eigh slows too). The JSON records the setting.

Usage: OPENBLAS_NUM_THREADS=1 python bench/hindcast.py [--years 25] [--members 64] [--numpy-years Y]
                                                       [--check-days 60] [--repeats 3] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import twin  # noqa: E402,F401  (first: its settings for XLA and OpenBLAS precede JAX's and NumPy's start)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from assimilation import Diagnostics, FilterParams, Observations, initial_inflation_state, standard_normal  # noqa: E402
from assimilation import dispositions as dsp  # noqa: E402
from emulators.checkpoint import load_checkpoint  # noqa: E402
from emulators.forcing import synthetic_forcing  # noqa: E402
from emulators.network import DAYS_PER_YEAR, Emulator  # noqa: E402
from emulators.parameters import NUM_TRACERS, TRACERS, ProcessParams, default_site  # noqa: E402
from emulators.process_model import initial_state  # noqa: E402
from emulators.training import forcing_inputs  # noqa: E402
from twin.config import TwinConfig, load_config  # noqa: E402
from twin.engine import QUANTILES, EngineState, WindowOutputs, cycle_keys, free_forecast, run_window  # noqa: E402
from twin.forecast import (emulator_log_error_sd, emulator_stepper, initial_ensemble, make_forecast,  # noqa: E402
                           stack_sites)
from twin.hindcast import filter_arrays, filter_params  # noqa: E402
from twin.osse import BOTTLE_ERROR, BOTTLE_RELATIVE_ERROR, BUOY_ERROR  # noqa: E402
from twin.state_layout import StateLayout  # noqa: E402

SITES = (("SYNTH-A", 43.24), ("SYNTH-B", 43.68))
BOTTLE_VARIABLES = ("nitrate", "ammonium", "phosphate", "silicate", "chlorophyll", "oxygen")
BUOY_VARIABLES = ("oxygen", "chlorophyll")
BOTTLE_INTERVAL_DAYS = 7
BUOY_HOURS = 24
BUOY_MISSING_FRACTION = 0.1
# float32 rounding gives 1e-5 to 4e-5 (seeds 0-4, 8 to 64 members, 20 to 120 cycles); a 1 % change of the
# model-error noise or sd, or an inflation of 1.049 for 1.05, gives ~2e-3.
CHECK_RTOL = 2e-4
_NO3, _NH4, _PO4, _SIO4, _PHY = (TRACERS.index(t) for t in ("nitrate", "ammonium", "phosphate", "silicate",
                                                           "phytoplankton"))


def _log(message: str) -> None:
    print(f"[bench/hindcast] {message}", file=sys.stderr, flush=True)


class Problem(NamedTuple):
    """A synthetic two-site hindcast (T days, N members, n state elements, m observation slots)."""
    config: TwinConfig
    layout: StateLayout
    emulator: Emulator
    log_error_sd: np.ndarray      # (16,) daily multiplicative model error of the emulator
    forcing: Any                  # Forcing with (T, S, ...) fields
    sites: Any                    # Site with a leading (S,) axis
    forecast: Any                 # twin forecast function
    members0: jax.Array           # (N, n) initial ensemble
    observations: Observations    # numpy arrays (T, m)
    key: jax.Array


def build_problem(num_days: int, num_members: int, seed: int = 0) -> Problem:
    """Forcing, emulator, initial ensemble and observations of a two-site, two-layer hindcast."""
    config = load_config(REPO / "configs" / "demo.yaml")
    config = config.model_copy(update={"filter": config.filter.model_copy(
        update={"method": "etkf", "cross_variable_localization": {}})})
    emulator = load_checkpoint(REPO / "configs" / "emulators" / "demo")
    layout = StateLayout(tuple(name for name, _ in SITES), 2)
    forcing = stack_sites([synthetic_forcing(num_days, latitude=lat, key=jax.random.PRNGKey(100 + s))
                           for s, (_, lat) in enumerate(SITES)])
    sites = stack_sites([default_site(2, lat) for _, lat in SITES])
    log_error_sd = emulator_log_error_sd(emulator, config.model)
    forecast = make_forecast(emulator_stepper(emulator), layout, sites, log_error_sd)
    key = jax.random.PRNGKey(seed)
    site_state = np.tile(np.asarray(initial_state(2))[None], (len(SITES), 1))
    members0 = initial_ensemble(jax.random.fold_in(key, 0), layout, num_members, site_state,
                                config.filter.initial_spread)
    truth0 = initial_ensemble(jax.random.fold_in(key, 10**6), layout, 1, site_state, config.filter.initial_spread)
    truth = np.asarray(free_forecast(forecast, truth0, forcing, jax.random.fold_in(key, 10**6 + 1), num_days))[:, 0]
    observations = synthetic_observations(truth, layout, config.filter.representativeness_fraction,
                                          np.random.default_rng(seed))
    return Problem(config, layout, emulator, log_error_sd, forcing, sites, forecast, members0, observations, key)


def synthetic_observations(truth: np.ndarray, layout: StateLayout, r: float, rng: np.random.Generator
                           ) -> Observations:
    """Weekly bottles and daily buoy super-observations of ``truth`` (T, n); arrays (T, m), m = 28.

    ``r`` is the representativeness fraction of the observation error (``filter.representativeness_fraction``).
    """
    num_days = truth.shape[0]
    index, bottle, sd_abs, sd_rel = [], [], [], []
    for site in layout.sites:
        for layer in layout.layers:
            for v in BOTTLE_VARIABLES:
                index.append(layout.observation_index(v, site, layer))
                bottle.append(True)
                sd_abs.append(BOTTLE_ERROR[v])
                sd_rel.append(BOTTLE_RELATIVE_ERROR.get(v, 0.0))
        for v in BUOY_VARIABLES:
            index.append(layout.observation_index(v, site, "surface"))
            bottle.append(False)
            # The super-observation keeps the representativeness share r of the error whole (twin.cycle_obs).
            sd_abs.append(BUOY_ERROR["fluorescence" if v == "chlorophyll" else v]
                          * np.sqrt(r**2 + (1.0 - r**2) / BUOY_HOURS))
            sd_rel.append(0.0)
    index, bottle = np.asarray(index, np.int32), np.asarray(bottle)
    true = truth[:, index]
    error_sd = np.hypot(np.asarray(sd_abs), np.asarray(sd_rel) * true)
    # Log-normal with mean ``true`` and sd ``error_sd``: the filter's own observation model, positive values.
    s2 = np.log1p((error_sd / true) ** 2)
    value = true * np.exp(np.sqrt(s2) * rng.standard_normal(true.shape) - 0.5 * s2)
    bottle_day = (np.arange(num_days) % BOTTLE_INTERVAL_DAYS == BOTTLE_INTERVAL_DAYS - 1)[:, None]
    mask = np.where(bottle, bottle_day, rng.random(true.shape) >= BUOY_MISSING_FRACTION)
    return Observations(value=np.where(mask, value, np.nan).astype(np.float32),
                        error_sd=error_sd.astype(np.float32),
                        state_index=np.broadcast_to(index, true.shape).copy(), mask=mask, qc_ok=mask.copy())


def window_bounds(num_days: int, window_days: int) -> list[tuple[int, int]]:
    return [(start, min(start + window_days, num_days)) for start in range(0, num_days, window_days)]


# ------------------------------------------------------------------------------------------------ the twin

def run_twin(problem: Problem, num_days: int) -> tuple[WindowOutputs, list[float]]:
    """The first ``num_days`` cycles window by window, as ``twin.hindcast.run_windows`` does (no refit, no
    alerts): the run's cycle key, each window's first cycle number, the weights passed as data.

    Returns the outputs (numpy, (T, ...)) and the seconds of each window.
    """
    state = EngineState(problem.members0, initial_inflation_state())
    params = filter_params(problem.config)
    log_mask = jnp.ones(problem.layout.dim, bool)
    filter_args = filter_arrays(problem.config, problem.layout)
    parts, seconds = [], []
    for start, stop in window_bounds(num_days, problem.config.hindcast.window_days):
        t0 = time.perf_counter()
        obs_w = jax.tree.map(lambda a: jnp.asarray(a[start:stop]), problem.observations)
        forcing_w = jax.tree.map(lambda a: a[start:stop], problem.forcing)
        state, out = run_window(problem.forecast, state, obs_w, forcing_w, cycle_key(problem), params, log_mask,
                                start, problem.emulator.weights, **filter_args)
        parts.append(jax.device_get(out))
        seconds.append(time.perf_counter() - t0)
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts), seconds


def cycle_key(problem: Problem) -> jax.Array:
    """The run's cycle key, as ``twin.hindcast.run_windows`` derives it."""
    return jax.random.fold_in(problem.key, 1)


def forecast_noise(problem: Problem, num_days: int) -> np.ndarray:
    """The standard normals of the twin's model error, (T, N, S, 16): ``run_window`` gives cycle i the key
    ``twin.engine.cycle_keys``, splits it into (forecast, analysis), and ``make_forecast`` draws from the first."""
    shape = (problem.members0.shape[0], len(problem.layout.sites), problem.layout.model_dim)
    draw = jax.vmap(lambda k: standard_normal(jax.random.split(k)[0], shape, jnp.float32))
    # A window at a time, as the engine draws them: all 25 years at once added ~140 MB to the peak memory.
    return np.concatenate([np.asarray(draw(cycle_keys(cycle_key(problem), start, stop - start)))
                           for start, stop in window_bounds(num_days, problem.config.hindcast.window_days)])


# ------------------------------------------------------------------------------------------- the NumPy loop

class NumpyModel(NamedTuple):
    """What the NumPy cycle needs, as float32 numpy arrays."""
    hidden: list[tuple[np.ndarray, np.ndarray]]   # (kernel, bias) of each tanh layer
    output: tuple[np.ndarray, np.ndarray]
    norm: Any                                      # emulators.normalisation.Normalisation of numpy arrays
    log_error_sd: np.ndarray                       # (16,)
    model_idx: np.ndarray                          # (S, 16)
    diag_idx: np.ndarray                           # (S, L)
    layer_thickness: np.ndarray                    # (S, L)
    params: FilterParams
    update_weight: np.ndarray | None               # (n,) variable localization (filter.variable_localization)


def numpy_model(problem: Problem) -> NumpyModel:
    params = filter_params(problem.config)
    if params.method != "etkf" or params.adaptive_inflation or params.rtps_alpha > 0 or params.random_rotation \
            or params.inflation_position != "prior":
        raise ValueError(f"the NumPy reference does the demo filter only (ETKF, fixed prior inflation), "
                         f"not {params}")
    config = problem.emulator.config
    if config.num_sites != 1 or config.activation != "tanh":
        raise ValueError(f"the NumPy reference has no site embedding and uses tanh; the emulator has "
                         f"num_sites={config.num_sites}, activation={config.activation!r}")
    net = problem.emulator.module()
    return NumpyModel(
        hidden=[(np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])) for layer in net.hidden],
        output=(np.asarray(net.output.kernel[...]), np.asarray(net.output.bias[...])),
        norm=jax.tree.map(np.asarray, problem.emulator.normalisation),
        log_error_sd=np.asarray(problem.log_error_sd, np.float32),
        model_idx=problem.layout.model_slices(), diag_idx=problem.layout.diagnostic_slices(),
        layer_thickness=np.asarray(problem.sites.layer_thickness), params=params,
        update_weight=problem.layout.update_weight(problem.config.filter.variable_localization))


def numpy_emulator_step(model: NumpyModel, x: np.ndarray, features: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """``emulators.network.predict_step``: x (N, S, d), features (S, F), doy (S,) -> (N, S, d)."""
    norm = model.norm
    y = np.log(np.maximum(x, norm.log_floor))
    angle = 2.0 * np.pi * doy / DAYS_PER_YEAR
    site_inputs = np.concatenate([(features - norm.forcing_mean) / norm.forcing_sd,
                                  np.stack([np.sin(angle), np.cos(angle)], axis=-1)], axis=-1)
    h = np.concatenate([(y - norm.state_mean) / norm.state_sd,
                        np.broadcast_to(site_inputs, x.shape[:-1] + site_inputs.shape[-1:])], axis=-1)
    for kernel, bias in model.hidden:
        h = np.tanh(h @ kernel + bias)
    u = h @ model.output[0] + model.output[1]
    return np.exp(np.clip(y + u * norm.increment_sd + norm.increment_mean, np.log(norm.log_floor),
                          norm.log_state_max))


def numpy_chlorophyll(x: np.ndarray, temperature: np.ndarray, par: np.ndarray, thickness: np.ndarray,
                      p: ProcessParams = ProcessParams()) -> np.ndarray:
    """``emulators.process_model.chlorophyll``: x (N, S, L*8), temperature (S, L), par (S,) -> (N, S, L)."""
    c = np.maximum(x.reshape(x.shape[:-1] + (-1, NUM_TRACERS)), 0.0)
    optical = (p.background_attenuation + p.phyto_attenuation * c[..., _PHY]) * thickness
    transmitted = np.exp(-optical)
    above = np.concatenate([np.ones_like(transmitted[..., :1]), np.cumprod(transmitted, axis=-1)[..., :-1]], -1)
    light = par[:, None] * above * (-np.expm1(-optical) / optical)
    f_nh4 = c[..., _NH4] / (p.half_sat_ammonium + c[..., _NH4])
    f_no3 = c[..., _NO3] / (p.half_sat_nitrate + c[..., _NO3]) * (1.0 - f_nh4)
    f_p = c[..., _PO4] / (p.half_sat_phosphate + c[..., _PO4])
    f_si = c[..., _SIO4] / (p.half_sat_silicate + c[..., _SIO4])
    f_nut = np.minimum(f_nh4 + f_no3, np.minimum(f_p, f_si))
    chl_to_carbon = 0.003 + 0.0154 * np.exp(0.050 * temperature) * np.exp(-0.059 * (light * 0.0864)) * f_nut
    return c[..., _PHY] * chl_to_carbon * (12.0 * 106.0 / 16.0)


def numpy_analysis(model: NumpyModel, E: np.ndarray, obs: Observations):
    """``assimilation.analysis`` with the demo settings and every element in log space, for one cycle.

    E (N, n) prior; obs fields (m,). Returns (analysis (N, n), Diagnostics of scalars, disposition (m,)).
    Legend as in ``assimilation.analysis``: Z log state, HZ predicted observations, Y, dy standardized.
    """
    p = model.params
    num_members, n = E.shape
    n1 = num_members - 1
    idx = np.clip(obs.state_index, 0, n - 1)
    present = obs.mask & np.isfinite(obs.value) & np.isfinite(obs.error_sd) & (obs.error_sd > 0)
    positive = obs.value > 0
    safe = np.where(positive, obs.value, 1.0)
    var = np.log1p((obs.error_sd / safe) ** 2)
    y_log, r_log = np.where(positive, np.log(safe) - 0.5 * var, np.nan), np.sqrt(var)

    Z = np.log(np.maximum(E, p.log_floor))
    HZ0 = Z[:, idx]
    operator_ok = (obs.state_index >= 0) & (obs.state_index < n) & np.all(np.isfinite(HZ0), axis=0)
    disposition = np.select([~present, ~obs.qc_ok, ~operator_ok, obs.value <= 0],
                            [dsp.MISSING, dsp.BAD_QC, dsp.OUTSIDE_DOMAIN, dsp.INVALID_FOR_TRANSFORM],
                            dsp.ASSIMILATED)
    candidate = disposition == dsp.ASSIMILATED
    y = np.where(candidate, y_log, 0.0).astype(np.float32)
    r = np.where(candidate, r_log, 1.0).astype(np.float32)
    H0 = np.where(candidate, HZ0, 0.0)
    factor = np.float32(p.inflation_factor)
    outlier = candidate & (np.abs(y - H0.mean(axis=0))
                           > p.outlier_threshold * np.sqrt(factor**2 * H0.var(axis=0, ddof=1) + r**2))
    disposition = np.where(outlier, dsp.REJECTED_OUTLIER, disposition).astype(np.int32)
    active = disposition == dsp.ASSIMILATED
    any_active = active.any()

    z_mean = Z.mean(axis=0)
    Zf = z_mean + factor * (Z - z_mean)
    HZ = np.where(active, np.log(np.maximum(np.exp(Zf)[:, idx], p.log_floor)), 0.0)
    scale = np.where(active, 1.0 / r, 0.0)
    hz_mean = HZ.mean(axis=0)
    Y = np.where(active, (HZ - hz_mean) * scale, 0.0)
    dy = np.where(active, (y - hz_mean) * scale, 0.0)
    eigval, V = np.linalg.eigh(Y @ Y.T + n1 * np.eye(num_members, dtype=np.float32))
    W = V @ ((V.T @ (Y @ dy)) / eigval) + (V * np.sqrt(n1 / eigval)) @ V.T   # Hunt et al. 2007, eqs. 21-24
    zf_mean = Zf.mean(axis=0)
    Za = zf_mean + W @ (Zf - zf_mean)
    if model.update_weight is not None:
        Za = Z + model.update_weight * (Za - Z)
    Ea = np.exp(Za) if any_active else E

    denom = max(int(active.sum()), 1)
    d = np.where(active, y - hz_mean, 0.0)
    d_mean = d.sum() / denom
    normalized = np.where(active, d**2 / (HZ.var(axis=0, ddof=1) + r**2), 0.0).sum() / denom
    diagnostics = Diagnostics(
        innovation_mean=d_mean,
        innovation_variance=np.where(active, (d - d_mean) ** 2, 0.0).sum() / denom,
        normalized_innovation=normalized,
        prior_spread=np.sqrt(Zf.var(axis=0, ddof=1).mean()),
        analysis_spread=np.sqrt((Za if any_active else Zf).var(axis=0, ddof=1).mean()),
        dofs=np.sum((eigval - n1) / eigval),
        counts=np.bincount(disposition, minlength=dsp.NUM_DISPOSITIONS),
        inflation=factor if any_active else np.float32(1.0),
        diverged=not np.all(np.isfinite(Ea)) or normalized > p.divergence_limit)
    return Ea, diagnostics, disposition


def numpy_outputs(num_days: int, n: int, m: int) -> WindowOutputs:
    """Empty per-cycle records, shaped as the engine's."""
    f32 = lambda *shape: np.zeros((num_days, *shape), np.float32)  # noqa: E731
    return WindowOutputs(
        forecast_mean=f32(n), forecast_sd=f32(n), analysis_mean=f32(n), analysis_sd=f32(n),
        analysis_quantiles=f32(len(QUANTILES), n), obs_forecast=f32(m), obs_forecast_sd=f32(m),
        obs_analysis=f32(m),
        diagnostics=Diagnostics(f32(), f32(), f32(), f32(), f32(), f32(),
                                np.zeros((num_days, dsp.NUM_DISPOSITIONS), np.int32), f32(),
                                np.zeros(num_days, bool)),
        disposition=np.zeros((num_days, m), np.int32))


def run_numpy(model: NumpyModel, members: np.ndarray, observations: Observations, features: np.ndarray,
              doy: np.ndarray, temperature: np.ndarray, par: np.ndarray, noise: np.ndarray) -> WindowOutputs:
    """The cycle, one day per iteration: forecast (emulator, model error, chlorophyll), analysis, records.

    members (N, n); observations (T, m) fields; features (T, S, F); doy, par (T, S); temperature (T, S, L);
    noise (T, N, S, 16) standard normals of the model error.
    """
    num_days, m = observations.value.shape
    out = numpy_outputs(num_days, members.shape[1], m)
    sd = model.log_error_sd
    q = np.asarray(QUANTILES)
    for t in range(num_days):
        x = numpy_emulator_step(model, members[:, model.model_idx], features[t], doy[t])
        x = x * np.exp(sd * noise[t] - 0.5 * sd**2)
        prior = members.copy()
        prior[:, model.model_idx] = x
        prior[:, model.diag_idx] = numpy_chlorophyll(x, temperature[t], par[t], model.layer_thickness)
        obs_t = Observations(*(a[t] for a in observations))
        members, diagnostics, disposition = numpy_analysis(model, prior, obs_t)
        idx = np.clip(obs_t.state_index, 0, prior.shape[1] - 1)
        out.forecast_mean[t], out.forecast_sd[t] = prior.mean(0), prior.std(0, ddof=1)
        out.analysis_mean[t], out.analysis_sd[t] = members.mean(0), members.std(0, ddof=1)
        out.analysis_quantiles[t] = np.quantile(members, q, axis=0)
        out.obs_forecast[t], out.obs_forecast_sd[t] = prior[:, idx].mean(0), prior[:, idx].std(0, ddof=1)
        out.obs_analysis[t] = members[:, idx].mean(0)
        for record, value in zip(out.diagnostics, diagnostics):
            record[t] = value
        out.disposition[t] = disposition
    return out


def numpy_inputs(problem: Problem, num_days: int) -> dict[str, Any]:
    """The NumPy loop's arguments for the first ``num_days`` cycles (prepared outside its timing)."""
    forcing = jax.tree.map(lambda a: a[:num_days], problem.forcing)
    return dict(members=np.asarray(problem.members0),
                observations=Observations(*(a[:num_days] for a in problem.observations)),
                features=np.asarray(forcing_inputs(problem.emulator.config.forcing_names, forcing)),
                doy=np.asarray(forcing.day_of_year), temperature=np.asarray(forcing.temperature),
                par=np.asarray(forcing.par), noise=forecast_noise(problem, num_days))


def check_equivalence(problem: Problem, num_days: int) -> dict[str, float]:
    """Both implementations over the first ``num_days`` cycles; the largest differences of their records."""
    twin_out, _ = run_twin(problem, num_days)
    ref = run_numpy(numpy_model(problem), **numpy_inputs(problem, num_days))
    rel = np.abs(ref.analysis_mean - twin_out.analysis_mean) / np.abs(twin_out.analysis_mean)
    return {"max_abs_diff": float(np.max(np.abs(ref.analysis_mean - twin_out.analysis_mean))),
            "max_rel_diff": float(np.max(rel)),
            "disposition_mismatches": int(np.sum(ref.disposition != twin_out.disposition)),
            "assimilated": int(np.sum(twin_out.disposition == dsp.ASSIMILATED))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=25)
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--numpy-years", type=int, default=None,
                        help="years the NumPy loop is timed on (default: --years); its time is scaled to --years")
    parser.add_argument("--check-days", type=int, default=60, help="cycles of the equivalence check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side; the fastest counts")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 year, 16 members, 20 check days")
    args = parser.parse_args()
    if args.quick:
        args.years, args.members, args.check_days, args.numpy_years, args.repeats = 1, 16, 20, None, 1
    numpy_years = min(args.numpy_years or args.years, args.years)
    num_days = 365 * args.years

    _log(f"building {args.years} years x {len(SITES)} sites, {args.members} members (forcing, truth, observations)")
    problem = build_problem(num_days, args.members, args.seed)

    _log(f"equivalence check over {args.check_days} cycles")
    check = check_equivalence(problem, args.check_days)
    _log(f"  max relative difference of the analysis means {check['max_rel_diff']:.2e} (tolerance {CHECK_RTOL}), "
         f"{check['disposition_mismatches']} disposition mismatches")
    if not (check["max_rel_diff"] < CHECK_RTOL and check["disposition_mismatches"] == 0):
        sys.exit(f"bench/hindcast.py: the NumPy loop and the twin disagree: {check}")

    first_window = problem.config.hindcast.window_days
    _log("twin: first window (compiles)")
    _, first = run_twin(problem, min(first_window, num_days))
    # Each side runs --repeats times and its fastest run counts (as timeit does), the two sides in turn: on a
    # shared 2-core VM the same warm 365-cycle window takes 150 to 280 us a cycle from one minute to the next, and
    # timing all of one side first could give one side the fast spell and the other the slow one.
    numpy_days = 365 * numpy_years
    model = numpy_model(problem)
    inputs = numpy_inputs(problem, numpy_days)
    twin_runs, numpy_runs = [], []
    for r in range(args.repeats):
        _log(f"twin: {num_days} cycles, warm (run {r + 1} of {args.repeats})")
        twin_out, window_seconds = run_twin(problem, num_days)
        twin_runs.append(window_seconds)
        _log(f"NumPy loop: {numpy_days} cycles (run {r + 1} of {args.repeats})")
        start = time.perf_counter()
        run_numpy(model, **inputs)
        numpy_runs.append(time.perf_counter() - start)
    window_seconds = min(twin_runs, key=sum)
    seconds_twin = sum(window_seconds)
    compile_seconds = first[0] - min(runs[0] for runs in twin_runs)
    finite = bool(np.all(np.isfinite(twin_out.analysis_mean)))
    seconds_numpy_measured = min(numpy_runs)
    seconds_numpy = seconds_numpy_measured * num_days / numpy_days

    result = {
        "years": args.years,
        "days": num_days,
        "members": args.members,
        "sites": len(SITES),
        "layers": problem.layout.num_layers,
        "state_dim": problem.layout.dim,
        "obs_slots": int(problem.observations.value.shape[1]),
        "window_days": first_window,
        "repeats": args.repeats,
        "seconds_twin_runs": [round(sum(w), 3) for w in twin_runs],
        "seconds_numpy_runs": [round(t, 3) for t in numpy_runs],
        "seconds_twin": round(seconds_twin, 3),
        "seconds_numpy": round(seconds_numpy, 3),
        "numpy_years_timed": numpy_years,
        "seconds_numpy_measured": round(seconds_numpy_measured, 3),
        "compile_seconds": round(compile_seconds, 3),
        "ratio": round(seconds_numpy / seconds_twin, 2),
        "us_per_cycle_twin": round(1e6 * seconds_twin / num_days, 1),
        "us_per_cycle_numpy": round(1e6 * seconds_numpy_measured / numpy_days, 1),
        "check_days": args.check_days,
        "max_abs_diff": check["max_abs_diff"],
        "max_rel_diff": check["max_rel_diff"],
        "check_rtol": CHECK_RTOL,
        "disposition_mismatches": check["disposition_mismatches"],
        "analysis_finite": finite,
        "devices": [str(d) for d in jax.devices()],
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    scaled = "" if numpy_years == args.years else f" (timed on {numpy_years} years, scaled)"
    print(f"twin:  {seconds_twin:.2f} s for {num_days} cycles ({result['us_per_cycle_twin']} us/cycle), "
          f"compile {compile_seconds:.2f} s apart")
    print(f"numpy: {seconds_numpy:.2f} s{scaled} ({result['us_per_cycle_numpy']} us/cycle)")
    print(f"ratio numpy/twin: {result['ratio']}x; peak RSS {result['peak_rss_mb']} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

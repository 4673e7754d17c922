"""Forecast functions for the filter: the twin's ensemble one day ahead, with the emulator or the process model.

``make_forecast`` returns ``forecast(members (N, n), forcing_t, key) -> (N, n)`` as the cycle engine
expects (``assimilation.cycling.ForecastFn``). ``forcing_t`` is an ``emulators.forcing.Forcing`` whose
fields carry a leading site axis (S, ...). For every site the model part of the state moves one day; the
model error is multiplicative log-normal noise (concentrations are positive and their errors scale with
them), mean-preserving; the diagnostic chlorophyll is then recomputed from the new state.

Model bias (``model.bias``): random model error forgets, but a model can be wrong the same way for weeks (a
surface layer that returns to oxygen saturation in days while the sea stays supersaturated for a season).
For each biased tracer the state carries ``b``, the log-rate per day of that persistent error: the day's
model value is multiplied by ``exp(b)``, and ``b`` itself follows an AR(1) with a stationary sd and a
timescale (``b' = a b + sqrt(1 - a^2) sd eps``, ``a = exp(-1 / timescale)``). The filter estimates ``b``
from the ensemble covariance of ``b`` with the tracer it drives, as any other element (augmented-state bias
estimation: Dee and da Silva 1998; Baek et al. 2006, Tellus 58A), so an anomaly the observations show is
carried forward for about the timescale instead of being forgotten with the model's own relaxation.
``chlorophyll`` can be biased too (the model's Chl:N ratio errs): its ``b`` is a level, the log of that
ratio's error, and the day's chlorophyll is the diagnostic of the new state times ``exp(b')``, ``b'`` the bias
after its AR(1) step (the diagnostic is recomputed daily, so nothing accumulates).

Sensor offsets (``sources[].offsets``): an instrument can drift or be miscalibrated (an oxygen optode on a
buoy). For each such sensor and variable the state carries its offset ``c`` (the log of its reading over the
sea's value, an AR(1) like the biases, its sd and timescale those of the drift) and the variable as the
sensor reads it, ``x exp(c)``, recomputed after every forecast as the chlorophyll diagnostic is. That
sensor's observations see the reading; the other sources' see the sea. With the analysis in log space the
reading is linear in ``c``, and the filter separates the drift from the sea's change where another source
(bottles) sees the same variable.

Estimated parameters (``model.estimate_parameters``): the model's rates can be wrong for a whole run (the
sea's light attenuation, which the emulator does not take, shifts the effective growth rate). For each
parameter the emulator takes as an input, each site's state carries ``t``, the log of a factor on the
emulator's value, an AR(1) like the biases; each member steps with the value times ``exp(t)`` (within the
training range of that input), so the ensemble carries the covariance between ``t`` and the state the filter
needs to estimate it (joint state-parameter estimation: Anderson 2001; Simon and Bertino 2012).
"""
from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from assimilation import standard_normal
from emulators.forcing import DAYS_PER_YEAR, Forcing
from emulators.parameters import ProcessParams, Site
from emulators.process_model import chlorophyll
from emulators.process_model import step as process_step
from twin.state_layout import StateLayout

ModelKind = Literal["emulator", "process"]
# (N, S, d) states, forcing with a site axis, model parameters (None: the stepper's own) -> (N, S, d)
Stepper = Callable[[jax.Array, Forcing, Any], jax.Array]


def configured_process_params(model_config) -> ProcessParams:
    """The process model's parameters a config's ``model`` section sets: the defaults with the values of
    ``model.process_params`` (none for 'default' and 'truth')."""
    return ProcessParams()._replace(**model_config.process_param_values())


def process_stepper(params: ProcessParams, sites: Site, substeps: int = 12, offshore_seasonal=None) -> Stepper:
    """The process model (``emulators.process_model.step``) for every member and site; ``model_params``
    (a ProcessParams), when given, replaces ``params``. ``offshore_seasonal`` (S, L * NUM_TRACERS, 2), or None:
    each day the offshore water is multiplied by :func:`annual_factor` (:func:`offshore_seasonal`)."""
    season = None if offshore_seasonal is None else jnp.asarray(offshore_seasonal, jnp.float32)

    def one(x, f, site, p, harmonic):
        if harmonic is not None:
            site = site._replace(offshore_state=site.offshore_state * annual_factor(harmonic, f.day_of_year))
        return process_step(x, f, p, site, substeps=substeps)
    per_site = jax.vmap(one, in_axes=(0, 0, 0, None, None if season is None else 0))
    members = jax.vmap(per_site, in_axes=(0, None, None, None, None))  # members share forcing and sites
    return lambda x, forcing_t, model_params=None: members(x, forcing_t, sites,
                                                           params if model_params is None else model_params, season)


def offshore_seasonal(site_configs, layout: StateLayout) -> np.ndarray | None:
    """(S, L * NUM_TRACERS, 2) the configured ``sites[].offshore_seasonal`` harmonics in the process model's
    state order ((0, 0) where not given); None when no site gives one."""
    from emulators.parameters import TRACERS
    by_name = {site.name: site for site in site_configs}
    chosen = [by_name[name].offshore_seasonal if name in by_name else {} for name in layout.sites]
    if not any(chosen):
        return None
    return np.asarray([[harmonic.get(f"{tracer}/{layer}", (0.0, 0.0)) for layer in layout.layers
                        for tracer in TRACERS] for harmonic in chosen], np.float32)


class EmulatorModelParams(NamedTuple):
    """What a refit changes, passed to the compiled cycle as data (a change does not recompile it): the
    network's weights and the values of its parameter inputs, ``(P,)`` in the order of its ``param/`` forcing
    features (:func:`parameter_input_names`)."""
    weights: Any
    parameters: jax.Array


def parameter_input_names(emulator) -> tuple[str, ...]:
    """The process parameters the emulator takes as inputs (its ``param/`` forcing features), in order."""
    from emulators.training import PARAM_PREFIX, parameter_columns
    names = emulator.config.forcing_names
    return tuple(names[i][len(PARAM_PREFIX):] for i in parameter_columns(names))


def parameter_input_range(emulator) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (P,): the range of each of the emulator's parameter inputs in its training, within
    which a member's value (the input times exp(its estimated factor)) is kept: outside it the emulator would
    extrapolate silently (an sd of 2 drove grazing to 0.09 on a 0.5-2.0 range)."""
    from emulators.training import parameter_columns
    columns = parameter_columns(emulator.config.forcing_names)
    return (np.asarray(emulator.ranges.forcing_min, np.float32)[columns],
            np.asarray(emulator.ranges.forcing_max, np.float32)[columns])


def emulator_model_params(emulator, params: ProcessParams | None = None) -> EmulatorModelParams:
    """The emulator's weights and parameter-input values: ``params``' when given (a perfect-model twin),
    else the values a refit calibrated (``emulator.parameter_values``), else the process model's defaults."""
    names = parameter_input_names(emulator)
    if params is None:
        defaults = ProcessParams()
        values = [emulator.parameter_values.get(n, getattr(defaults, n)) for n in names]
    else:
        values = [getattr(params, n) for n in names]
    return EmulatorModelParams(emulator.weights, jnp.asarray(values, jnp.float32).reshape(len(names)))


def emulator_stepper(emulator, params: ProcessParams | None = None) -> Stepper:
    """The neural emulator (``emulators.network.predict_step``) for every member and site.

    ``model_params``: None (the emulator's own, see :func:`emulator_model_params` for its parameter inputs),
    network weights (a refit's; parameter inputs as for None) or :class:`EmulatorModelParams` (both).
    ``parameter_log_factors``: None, or (N, S, P) logs of factors on the parameter inputs (in the order of
    ``stepper.parameter_names``), per member and site: the filter's estimated parameters; each value is kept
    within the emulator's training range of that input.
    """
    from emulators.network import predict_step
    from emulators.training import forcing_inputs, parameter_columns
    names = emulator.config.forcing_names
    columns = parameter_columns(names)
    own = emulator_model_params(emulator, params)
    low, high = (jnp.asarray(a) for a in parameter_input_range(emulator))

    def stepper(x, forcing_t, model_params=None, parameter_log_factors=None):
        if not isinstance(model_params, EmulatorModelParams):
            model_params = own._replace(weights=own.weights if model_params is None else model_params)
        features = forcing_inputs(names, forcing_t)[None]  # (1, S, F); the parameter columns are set next
        if columns.size:
            values = model_params.parameters
            if parameter_log_factors is not None:  # (N, S, P): each member's own values
                values = jnp.clip(values * jnp.exp(parameter_log_factors), low, high)
                features = jnp.broadcast_to(features, values.shape[:2] + features.shape[2:])
            features = features.at[..., columns].set(values)
        doy = forcing_t.day_of_year                   # (S,)
        return predict_step(emulator.graphdef, model_params.weights, emulator.normalisation, x,
                            features, doy[None], 0)
    stepper.parameter_names = parameter_input_names(emulator)
    return stepper


class ModelBias(NamedTuple):
    """The AR(1) of each model-bias element, in the order of ``StateLayout.bias_slices`` (per site)."""
    sd: np.ndarray               # (B,) stationary sd of the log-rate per day (chlorophyll: of the log factor)
    timescale_days: np.ndarray   # (B,) e-folding time of the AR(1)
    noise: bool = True           # False: no AR(1) innovation (the deterministic forecasts of refits)

    @property
    def persistence(self) -> np.ndarray:
        return np.exp(-1.0 / np.asarray(self.timescale_days, np.float64)).astype(np.float32)

    @property
    def innovation_sd(self) -> np.ndarray:
        """sd of the daily innovation that keeps the stationary sd: sqrt(1 - a^2) sd (0 without noise)."""
        a = self.persistence.astype(np.float64)
        return (np.sqrt(1.0 - a**2) * np.asarray(self.sd, np.float64) * self.noise).astype(np.float32)


def emulator_log_error_sd(emulator, model_config) -> np.ndarray:
    """The emulator's one-day model error (log sd per state element of a site, named 'tracer/layer' in
    ``emulator.config.state_names``), scaled per tracer and layer by ``model.emulator_error_scale``."""
    sd = np.asarray(emulator.model_error.log_sd, np.float32)
    scale = np.array([model_config.error_scale(*name.split("/")) for name in emulator.config.state_names],
                     np.float32)
    return sd * scale


def sensor_offsets(sources, layout: StateLayout) -> ModelBias | None:
    """The AR(1) of the layout's sensor offsets from the configured ``sources[].offsets`` (their ``name`` is
    the sensor), in the order of ``StateLayout.sensor_offset_slices``; None when there is none."""
    if not layout.sensors:
        return None
    by_name = {s.name: s for s in sources if s.offsets}
    per = []
    for sensor, variable in layout.sensors:
        if sensor not in by_name or variable not in by_name[sensor].offsets:
            raise ValueError(f"the state layout carries an offset of {variable} for sensor {sensor!r}, which "
                             f"no source configures")
        per += [by_name[sensor].offsets[variable]] * layout.num_layers
    return ModelBias(np.array([o.sd for o in per], np.float32), np.array([o.timescale_days for o in per], np.float32))


def model_bias(bias_config, layout: StateLayout) -> ModelBias | None:
    """The configured ``model.bias`` ({variable: BiasConfig}) for ``layout`` (whose ``biased`` must list the
    same variables, in order); None when none is biased."""
    if not layout.biased:
        return None
    if tuple(bias_config) != layout.biased:
        raise ValueError(f"model.bias names {list(bias_config)} but the state layout carries biases of "
                         f"{list(layout.biased)}")
    per = [(bias_config[t], layer) for t in layout.biased for layer in layout.layers]
    return ModelBias(np.array([b.sd(layer) for b, layer in per], np.float32),
                     np.array([b.timescale_days for b, _ in per], np.float32))


def estimated_parameters(parameter_config, layout: StateLayout) -> ModelBias | None:
    """The AR(1) of the layout's parameter factors from ``model.estimate_parameters`` ({name:
    EstimatedParameterConfig}, the layout's ``estimated`` in the same order); None when none is estimated."""
    if not layout.estimated:
        return None
    if tuple(parameter_config) != layout.estimated:
        raise ValueError(f"model.estimate_parameters names {list(parameter_config)} but the state layout carries "
                         f"factors of {list(layout.estimated)}")
    per = [parameter_config[p] for p in layout.estimated]
    return ModelBias(np.array([c.sd for c in per], np.float32), np.array([c.timescale_days for c in per], np.float32))


def estimated_input_positions(layout: StateLayout, inputs) -> np.ndarray:
    """Position of each of the layout's estimated parameters among a model's parameter inputs (``inputs``,
    e.g. :func:`parameter_input_names`); an error naming those the model does not take."""
    missing = [p for p in layout.estimated if p not in inputs]
    if missing:
        raise ValueError(f"the filter estimates {missing}, which the emulator does not take as inputs (its "
                         f"parameter inputs: {list(inputs)}; its pretraining's varied_params)")
    return np.array([list(inputs).index(p) for p in layout.estimated], np.int64)


def state_ar1(config, layout: StateLayout, noise: bool = True) -> dict:
    """The AR(1)s of the layout's model biases, sensor offsets and parameter factors from ``config``, as the
    keyword arguments ``bias``, ``offsets`` and ``parameters`` of :func:`make_forecast` and
    :func:`initial_ensemble`; ``noise=False``: without their innovations, for forecasts with zero model
    error."""
    out = {"bias": model_bias(config.model.bias, layout), "offsets": sensor_offsets(config.sources, layout),
           "parameters": estimated_parameters(config.model.estimate_parameters, layout)}
    return {k: (v if v is None or noise else v._replace(noise=False)) for k, v in out.items()}


def make_forecast(stepper: Stepper, layout: StateLayout, sites: Site, log_error_sd,
                  chlorophyll_params: ProcessParams = ProcessParams(), chlorophyll_scale=None,
                  bias: ModelBias | None = None, offsets: ModelBias | None = None,
                  parameters: ModelBias | None = None, parameters_act: bool = True):
    """The filter's forecast function.

    Args:
        stepper: one day of the model for (N, S, d) states.
        layout: the twin's state layout.
        sites: ``emulators.parameters.Site`` with a leading site axis (for the chlorophyll diagnostic).
        log_error_sd: (d,) sd of the multiplicative model error per model-state element and day.
        chlorophyll_params: the process parameters of the chlorophyll diagnostic.
        chlorophyll_scale: (S, L) factor on the diagnostic per site and layer (default 1).
        bias: the AR(1) of the layout's model-bias elements (required when it has some).
        offsets: the AR(1) of the layout's sensor offsets (required when it has some).
        parameters: the AR(1) of the layout's parameter factors (required when it has some). Each member steps
            with the stepper's parameter inputs times exp(its factors): the stepper must take them
            (``parameter_log_factors``, ``stepper.parameter_names``: the emulator's).
        parameters_act: False: the factors are carried (AR(1)) but the stepper does not take them (the
            process-model baseline of a twin whose emulator's parameters are estimated).
    """
    model_idx = np.asarray(layout.model_slices())  # NumPy constants of the traced function
    diag_idx = np.asarray(layout.diagnostic_slices())
    bias_idx = np.asarray(layout.bias_slices())
    if bias_idx.size and bias is None:
        raise ValueError(f"the state layout carries model biases of {list(layout.biased)}: pass their AR(1)")
    if bias_idx.size:
        targets = layout.bias_targets()
        # A tracer's bias is a rate on the model state; chlorophyll's a level on the diagnostic.
        on_tracer = np.flatnonzero(targets < layout.model_dim)
        on_chl = np.flatnonzero(targets >= layout.model_dim)
        tracer_targets, chl_targets = targets[on_tracer], targets[on_chl] - layout.model_dim
        persistence = jnp.asarray(bias.persistence)
        innovation_sd = jnp.asarray(bias.innovation_sd)
    scale = np.ones((len(layout.sites), layout.num_layers), np.float32) if chlorophyll_scale is None \
        else np.asarray(chlorophyll_scale, np.float32).reshape(len(layout.sites), layout.num_layers, -1)
    scale = scale[..., 0] if scale.ndim == 3 and scale.shape[-1] == 1 else scale   # (S, L) or (S, L, 3)
    sd = jnp.asarray(log_error_sd, jnp.float32)
    chl = jax.vmap(jax.vmap(lambda x, f, s: chlorophyll(x, f, chlorophyll_params, s), in_axes=(0, 0, 0)),
                   in_axes=(0, None, None))

    offset_idx = np.asarray(layout.sensor_offset_slices())
    if offset_idx.size and offsets is None:
        raise ValueError(f"the state layout carries sensor offsets {list(layout.sensors)}: pass their AR(1)")
    if offset_idx.size:
        seen_idx = np.asarray(layout.sensor_seen_slices())
        made_of = np.asarray(layout.model_slices())[:, :1] + layout.sensor_targets()[None, :]  # (S, K)
        offset_persistence = jnp.asarray(offsets.persistence)
        offset_innovation_sd = jnp.asarray(offsets.innovation_sd)
    param_idx = np.asarray(layout.parameter_slices())
    if param_idx.size and parameters is None:
        raise ValueError(f"the state layout carries parameter factors of {list(layout.estimated)}: pass their AR(1)")
    if param_idx.size:
        param_persistence = jnp.asarray(parameters.persistence)
        param_innovation_sd = jnp.asarray(parameters.innovation_sd)
    if param_idx.size and parameters_act:
        inputs = getattr(stepper, "parameter_names", None)
        if inputs is None:
            raise ValueError(f"the state layout carries parameter factors of {list(layout.estimated)}, but this "
                             f"model takes no parameter inputs (only the emulator does)")
        positions = estimated_input_positions(layout, inputs)
    d = model_idx.shape[1]
    nb = bias_idx.shape[1]
    npar = param_idx.shape[1]
    no = offset_idx.shape[1]

    def draw_noise(members, key):
        # One draw for the model error and the AR(1)s. Two normals per threefry hash
        # (assimilation.standard_normal): 7 against 13 us a hindcast cycle.
        shape = (members.shape[0], model_idx.shape[0], d + nb + no + npar)
        return standard_normal(key, shape, members.dtype)

    def forecast_with_noise(members, forcing_t, noise, model_params=None):
        x = members[:, model_idx]
        if npar and parameters_act:
            theta = members[:, param_idx]                              # (N, S, P estimated)
            factors = jnp.zeros(theta.shape[:2] + (len(inputs),), theta.dtype).at[..., positions].set(theta)
            x_next = stepper(x, forcing_t, model_params, parameter_log_factors=factors)  # others: exp(0)
        else:
            x_next = stepper(x, forcing_t, model_params)
        x_next = x_next * jnp.exp(sd * noise[..., :d] - 0.5 * sd**2)
        if bias_idx.size:
            b = members[:, bias_idx]                               # (N, S, B)
            if on_tracer.size:
                x_next = x_next.at[:, :, tracer_targets].multiply(jnp.exp(b[..., on_tracer]))
            b_next = persistence * b + innovation_sd * noise[..., d:d + nb]
            members = members.at[:, bias_idx].set(b_next)
        out = members.at[:, model_idx].set(x_next)
        chl_next = chl(x_next, forcing_t, sites)
        if chlorophyll_scale is not None:
            chl_next = chl_next * chlorophyll_factor(jnp.asarray(scale), forcing_t.day_of_year)
        if bias_idx.size and on_chl.size:
            # The day's Chl:N error goes with the day's chlorophyll, so that the filter sees their covariance.
            chl_next = chl_next.at[..., chl_targets].multiply(jnp.exp(b_next[..., on_chl]))
        out = out.at[:, diag_idx].set(chl_next)
        if offset_idx.size:
            c_next = offset_persistence * members[:, offset_idx] + offset_innovation_sd * noise[..., d + nb:d + nb + no]
            out = out.at[:, offset_idx].set(c_next).at[:, seen_idx].set(out[:, made_of] * jnp.exp(c_next))
        if npar:
            theta_next = param_persistence * members[:, param_idx] + param_innovation_sd * noise[..., d + nb + no:]
            out = out.at[:, param_idx].set(theta_next)
        return out

    def forecast(members, forcing_t, key, model_params=None):
        return forecast_with_noise(members, forcing_t, draw_noise(members, key), model_params)

    # The cycle engine draws a window's model errors in one batched call before its scan (the same draws:
    # on CPU, threefry inside the scan cost 55 us of a 400 us cycle, batched 17 us).
    forecast.draw_noise = draw_noise
    forecast.with_noise = forecast_with_noise
    return forecast


def site_struct(site_config, num_layers: int) -> Site:
    """The process model's description of a configured station: a 10 m surface layer over the rest of the
    water column (the SOMLIT sampling depths), and the generic shelf's offshore water and exchange except where
    the site gives its own (``offshore_water``, which ``twin.hindcast.resolve_boundaries`` fills from the data;
    ``offshore_exchange_per_day``)."""
    from emulators.parameters import LAYERS, TRACERS, default_site
    thickness = (10.0, max(site_config.bottom_depth_m - 10.0, 1.0)) if num_layers == 2 else (10.0,)
    site = default_site(num_layers, site_config.latitude, thickness)
    # One rate per layer for every configured site, so that a network's sites stack.
    exchange = [site_config.offshore_exchange_per_day.get(layer, float(site.offshore_exchange_rate))
                for layer in LAYERS[:num_layers]]
    site = site._replace(offshore_exchange_rate=jnp.asarray(exchange, jnp.float32))
    if not site_config.offshore_water:
        return site
    offshore = np.asarray(site.offshore_state, np.float32).copy()
    for key, value in site_config.offshore_water.items():
        tracer, layer = key.split("/")
        li = LAYERS.index(layer)
        if li < num_layers:
            offshore[li * len(TRACERS) + TRACERS.index(tracer)] = value
    return site._replace(offshore_state=jnp.asarray(offshore))


def chlorophyll_scales(site_configs, layout: StateLayout):
    """The factors on the chlorophyll diagnostic per site and layer, in the layout's order: (S, L) from the
    configured ``sites[].chlorophyll_scale`` (1 where not given), or (S, L, 3) (scale, a, b) when a site gives
    ``chlorophyll_seasonal`` (:func:`chlorophyll_factor`); None when no site gives either (no product traced)."""
    by_name = {site.name: site for site in site_configs}
    sites = [by_name.get(name) for name in layout.sites]
    scale = [site.chlorophyll_scale if site is not None else {} for site in sites]
    seasonal = [site.chlorophyll_seasonal if site is not None else {} for site in sites]
    if not any(scale) and not any(seasonal):
        return None
    out = np.asarray([[scale_s.get(layer, 1.0) for layer in layout.layers] for scale_s in scale], np.float32)
    if not any(seasonal):
        return out
    harmonic = np.asarray([[season.get(layer, (0.0, 0.0)) for layer in layout.layers] for season in seasonal],
                          np.float32)
    return np.concatenate([out[..., None], harmonic], axis=-1)


def annual_factor(harmonic: jax.Array, day_of_year: jax.Array) -> jax.Array:
    """exp(a cos(w d) + b sin(w d)), w = 2 pi / 365.25, for ``harmonic`` (..., 2) holding (a, b) and
    ``day_of_year`` d (zero-based) broadcasting against ``harmonic[..., 0]``."""
    angle = (2.0 * np.pi / DAYS_PER_YEAR) * day_of_year
    return jnp.exp(harmonic[..., 0] * jnp.cos(angle) + harmonic[..., 1] * jnp.sin(angle))


def chlorophyll_factor(scale: jax.Array, day_of_year: jax.Array) -> jax.Array:
    """The factor on the chlorophyll diagnostic on a day: ``scale`` (S, L), or (S, L, 3) holding (c, a, b) for
    c :func:`annual_factor` ((a, b), d); ``day_of_year`` (S,) zero-based. Returns (S, L)."""
    if scale.ndim == 2:
        return scale
    return scale[..., 0] * annual_factor(scale[..., 1:], day_of_year[:, None])


def stack_sites(items):
    """Stack per-site pytrees (Forcing with a time axis, or Site) along a site axis.

    A time-series Forcing (T, ...) per site becomes (T, S, ...): the cycle engine scans over time and the
    forecast sees (S, ...). A Site becomes (S, ...).
    """
    first = items[0]
    if isinstance(first, Forcing):
        return jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *items)
    return jax.tree.map(lambda *xs: jax.device_put(np.stack([np.asarray(x) for x in xs], axis=0)), *items)


def members_around(mean: np.ndarray, sd: np.ndarray, layout: StateLayout, noise: np.ndarray) -> np.ndarray:
    """Members (N, n) with mean ``mean`` and sd ``sd`` (n,) from standard normal ``noise`` (N, n): log-normal
    for the concentrations, normal for the model biases, sensor offsets and parameter factors (any sign)."""
    mean, sd, noise = (np.asarray(a, np.float64) for a in (mean, sd, noise))
    rel = np.log1p((sd / np.maximum(mean, 1e-6)) ** 2) ** 0.5
    out = np.where(layout.log_mask(), mean[None] * np.exp(rel * noise - 0.5 * rel**2), mean + sd * noise)
    return out.astype(np.float32)


def initial_ensemble(key: jax.Array, layout: StateLayout, num_members: int, site_state: np.ndarray,
                     spread: float = 0.3, bias: ModelBias | None = None,
                     offsets: ModelBias | None = None, parameters: ModelBias | None = None) -> jax.Array:
    """Members around ``site_state`` (S, d): log-normal perturbations (oxygen a tenth as wide), the
    diagnostic entries (and sensor readings) left at zero until the first forecast fills them, and the model
    biases, sensor offsets and parameter factors drawn from their AR(1)'s stationary distribution around zero
    (``bias``, ``offsets`` and ``parameters``, required when the layout has them)."""
    from emulators.parameters import TRACERS
    site_state = np.asarray(site_state, np.float32)
    d = layout.model_dim
    rel = np.full(d, spread, np.float32)
    rel[[i for i in range(d) if TRACERS[i % len(TRACERS)] == "oxygen"]] = spread / 10
    noise = jax.random.normal(key, (num_members,) + site_state.shape)
    x = jnp.asarray(site_state)[None] * jnp.exp(rel * noise - 0.5 * rel**2)
    members = jnp.zeros((num_members, layout.dim), jnp.float32)
    members = members.at[:, jnp.asarray(layout.model_slices())].set(x)
    blocks = ((1, layout.bias_slices(), bias, f"model biases of {list(layout.biased)}"),
              (2, layout.sensor_offset_slices(), offsets, f"sensor offsets {list(layout.sensors)}"),
              (3, layout.parameter_slices(), parameters, f"parameter factors of {list(layout.estimated)}"))
    for stream, idx, ar1, what in blocks:  # stream: the fold of ``key`` each block's draws come from
        if idx.size == 0:
            continue
        if ar1 is None:
            raise ValueError(f"the state layout carries {what}: pass their AR(1)")
        draw = jax.random.normal(jax.random.fold_in(key, stream), (num_members,) + idx.shape)
        members = members.at[:, jnp.asarray(idx)].set(jnp.asarray(ar1.sd) * draw)
    return members

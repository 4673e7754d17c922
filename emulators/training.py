"""Training of the emulator on multi-step rollouts, its model-error estimate, and its evaluation.

Training (DESIGN section 5): optax AdamW with a warm-up and cosine decay of the learning rate, on windows of
trajectories unrolled with the emulator itself (``lax.scan``) for a horizon that grows by stages (a
curriculum: 1 step, then a few, then many), so that long free runs stay stable. The loss is the squared error
of the unrolled log state, in units of the one-step increment's sd, divided by the step index (errors of an
unrolled run grow with it), weighted per sample (the refit's confidence weights, Brajard et al. 2020).
Whole trajectories (members) are held out for validation; the weights with the best validation loss are
kept, and training stops early when it no longer improves.

Training data come from process-model ensembles (:class:`EnsembleSpec`, :func:`make_training_data`):
members with perturbed initial states and forcing (weather, temperature shift, cloudiness, stratification),
optionally parameters drawn in their ranges and given to the emulator as inputs. :func:`evaluate` scores the
emulator on forcing years not seen in training and checks a 20-year free run.

References:
    Brajard, Carrassi, Bocquet and Bertino 2020, J. Comput. Sci. 44, 101171 (emulators trained on analyses).
    Keisler 2022, arXiv:2202.07575 (multi-step rollout loss for stable learned simulators).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import time as time_module
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from emulators import process_model
from emulators.checkpoint import make_lineage_entry
from emulators.forcing import FORCING_FIELDS, RIVER_WATER, Forcing, synthetic_forcing
from emulators.network import (
    Activation,
    Emulator,
    ModelError,
    NetworkConfig,
    build_network,
    log_step,
)
from emulators.normalisation import (
    DEFAULT_LOG_FLOOR,
    TrainingRanges,
    fit_normalisation,
    fit_ranges,
    to_log_state,
)
from emulators.parameters import LAYERS, NUM_TRACERS, ProcessParams, default_params, default_site, sample_params
from emulators.process_model import DEFAULT_SUBSTEPS, initial_state

__all__ = [
    "EnsembleSpec",
    "TrainConfig",
    "TrajectoryData",
    "estimate_model_error",
    "evaluate",
    "forcing_feature_names",
    "forcing_inputs",
    "free_run_skill",
    "long_run_check",
    "make_training_data",
    "run_process_ensemble",
    "split_by_group",
    "train",
    "train_demo_emulator",
]


@dataclasses.dataclass(frozen=True, eq=False)
class TrajectoryData:
    """Trajectories to train or evaluate on (numpy arrays, at the edge of the jitted kernels).

    Attributes:
        states: (num_traj, num_steps + 1, num_state), mmol m-3.
        forcing: (num_traj, num_steps, num_forcing), forcing features over each step.
        day_of_year: (num_traj, num_steps), day of year at the start of each step (0 = 1 January).
        site: (num_traj,) int, site index of each trajectory.
        group: (num_traj,) int, the member (or any unit) a trajectory belongs to; validation holds out whole
            groups.
        state_names: (num_state,) names.
        forcing_names: (num_forcing,) names.
        description: what the data are, for the lineage.
    """

    states: np.ndarray
    forcing: np.ndarray
    day_of_year: np.ndarray
    site: np.ndarray
    group: np.ndarray
    state_names: tuple[str, ...]
    forcing_names: tuple[str, ...]
    description: str = ""

    def __post_init__(self):
        num_traj, num_steps_plus_1, num_state = np.shape(self.states)
        num_steps = num_steps_plus_1 - 1
        expected = {
            "forcing": (num_traj, num_steps, len(self.forcing_names)),
            "day_of_year": (num_traj, num_steps),
            "site": (num_traj,),
            "group": (num_traj,),
        }
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"TrajectoryData.{name} has shape {np.shape(getattr(self, name))}, expected {shape}")
        if len(self.state_names) != num_state:
            raise ValueError(f"{len(self.state_names)} state_names for {num_state} state variables")
        if num_steps < 1:
            raise ValueError("trajectories need at least one step")

    @property
    def num_traj(self) -> int:
        return int(np.shape(self.states)[0])

    @property
    def num_steps(self) -> int:
        return int(np.shape(self.states)[1]) - 1

    def take(self, index: np.ndarray) -> TrajectoryData:
        """The trajectories at ``index``."""
        return dataclasses.replace(
            self,
            states=self.states[index],
            forcing=self.forcing[index],
            day_of_year=self.day_of_year[index],
            site=self.site[index],
            group=self.group[index],
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; its repr is the record.

    Attributes:
        hidden_sizes, activation, site_features: the network (see :class:`NetworkConfig`).
        seed: seed of the initial weights, the validation split and the batches.
        learning_rate: peak learning rate of AdamW.
        warmup_steps: linear warm-up of the learning rate.
        final_learning_rate_fraction: the cosine decay ends at this fraction of the peak.
        weight_decay: AdamW decoupled weight decay.
        gradient_clip: global gradient-norm clip.
        batch_size: windows per optimizer step.
        rollout_schedule: (horizon, optimizer steps) stages of the curriculum, in order.
        steps_per_eval: optimizer steps between validations (and progress-bar updates).
        validation_fraction: fraction of groups (members) held out for validation.
        validation_horizon: horizon of the validation rollout loss; the last stage's horizon when None.
        patience: validations without improvement before stopping early (within the last stage).
        log_floor: concentration floor before the log, mmol m-3.
    """

    hidden_sizes: tuple[int, ...] = (96, 96)
    activation: Activation = "tanh"
    site_features: int = 4
    seed: int = 0
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    final_learning_rate_fraction: float = 0.02
    weight_decay: float = 1e-5
    gradient_clip: float = 1.0
    batch_size: int = 128
    rollout_schedule: tuple[tuple[int, int], ...] = ((1, 800), (4, 800), (16, 1200), (48, 800))
    steps_per_eval: int = 200
    validation_fraction: float = 0.2
    validation_horizon: int | None = None
    patience: int = 5
    log_floor: float = DEFAULT_LOG_FLOOR

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(
            self, "rollout_schedule", tuple((int(h), int(n)) for h, n in self.rollout_schedule)
        )
        if not self.rollout_schedule or any(h < 1 or n < 1 for h, n in self.rollout_schedule):
            raise ValueError(
                f"rollout_schedule must be non-empty (horizon >= 1, steps >= 1) pairs, got {self.rollout_schedule}"
            )
        for name in ("learning_rate", "batch_size", "steps_per_eval", "patience", "log_floor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.validation_horizon is not None and self.validation_horizon < 1:
            raise ValueError(f"validation_horizon must be >= 1, got {self.validation_horizon}")

    @property
    def total_steps(self) -> int:
        return sum(n for _, n in self.rollout_schedule)

    @property
    def eval_horizon(self) -> int:
        return self.validation_horizon or self.rollout_schedule[-1][0]


def split_by_group(data: TrajectoryData, validation_fraction: float, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation trajectories, holding out whole groups (members).

    At least one group goes to each side; with a single group the split falls back to trajectories.
    """
    groups = np.unique(data.group)
    if groups.size >= 2:
        order = np.asarray(jax.random.permutation(key, groups.size))
        num_val = min(max(1, round(validation_fraction * groups.size)), groups.size - 1)
        val_groups = groups[order[:num_val]]
        is_val = np.isin(data.group, val_groups)
    else:
        if data.num_traj < 2:
            raise ValueError("validation needs at least two trajectories or two groups")
        order = np.asarray(jax.random.permutation(key, data.num_traj))
        num_val = min(max(1, round(validation_fraction * data.num_traj)), data.num_traj - 1)
        is_val = np.zeros(data.num_traj, dtype=bool)
        is_val[order[:num_val]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# --- the rollout loss -----------------------------------------------------------------------------------


def _device_arrays(data: TrajectoryData, log_floor: float, sample_weights: np.ndarray | None) -> dict[str, jax.Array]:
    log_states = to_log_state(jnp.asarray(data.states, jnp.float32), log_floor)
    if sample_weights is None:
        weights = jnp.ones(log_states.shape[:2] + (1,), jnp.float32)
    else:
        weights = np.asarray(sample_weights, np.float32)
        if weights.ndim == 2:
            weights = weights[..., None]
        if weights.shape[:2] != log_states.shape[:2] or weights.shape[2] not in (1, log_states.shape[2]):
            raise ValueError(
                f"sample_weights must be (num_traj, num_steps + 1) or (num_traj, num_steps + 1, num_state) = "
                f"{log_states.shape}, got {np.shape(sample_weights)}"
            )
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("sample_weights must be finite and >= 0")
        weights = jnp.asarray(weights)
    return {
        "log_states": log_states,
        "forcing": jnp.asarray(data.forcing, jnp.float32),
        "day_of_year": jnp.asarray(data.day_of_year, jnp.float32),
        "site": jnp.asarray(data.site, jnp.int32),
        "weights": weights,
    }


def _window(arrays, traj, start, horizon):
    """Window of ``horizon`` steps of trajectory ``traj`` from ``start`` (one sample; vmapped)."""
    def cut(a, length):
        a = a[traj]
        return jax.lax.dynamic_slice_in_dim(a, start, length, axis=0)

    return (
        cut(arrays["log_states"], horizon + 1),
        cut(arrays["forcing"], horizon),
        cut(arrays["day_of_year"], horizon),
        arrays["site"][traj],
        cut(arrays["weights"], horizon + 1),
    )


def _window_loss(graphdef, weights, normalisation, window):
    """Weighted squared error of an unrolled window, in increment-sd units, divided by the step index."""
    log_states, forcing, day_of_year, site, sample_weights = window

    def _step(log_state, inputs):
        forcing_t, day_t = inputs
        next_log_state = log_step(graphdef, weights, normalisation, log_state, forcing_t, day_t, site)
        return next_log_state, next_log_state

    _, predicted = jax.lax.scan(_step, log_states[0], (forcing, day_of_year))
    error = (predicted - log_states[1:]) / normalisation.increment_sd
    step_index = jnp.arange(1, forcing.shape[0] + 1, dtype=jnp.float32)[:, None]
    w = jnp.broadcast_to(sample_weights[1:], error.shape)
    return jnp.sum(w * error**2 / step_index), jnp.sum(w)


def _batch_loss(graphdef, weights, normalisation, windows):
    total, weight = jax.vmap(_window_loss, in_axes=(None, None, None, 0))(graphdef, weights, normalisation, windows)
    return jnp.sum(total) / jnp.maximum(jnp.sum(weight), 1e-12)


def _sample_windows(key, arrays, train_index, horizon, batch_size):
    num_steps = arrays["forcing"].shape[1]
    key_traj, key_start = jax.random.split(key)
    traj = train_index[jax.random.randint(key_traj, (batch_size,), 0, train_index.shape[0])]
    start = jax.random.randint(key_start, (batch_size,), 0, num_steps - horizon + 1)
    return jax.vmap(_window, in_axes=(None, 0, 0, None))(arrays, traj, start, horizon)


def _validation_windows(arrays, val_index, horizon, max_windows=2048):
    """Fixed, evenly spaced validation windows (the same at every validation)."""
    num_steps = arrays["forcing"].shape[1]
    starts = np.arange(0, num_steps - horizon + 1, max(1, horizon // 2))
    traj, start = np.meshgrid(np.asarray(val_index), starts, indexing="ij")
    traj, start = traj.ravel(), start.ravel()
    if traj.size > max_windows:
        keep = np.linspace(0, traj.size - 1, max_windows).round().astype(int)
        traj, start = traj[keep], start[keep]
    return jax.vmap(_window, in_axes=(None, 0, 0, None))(arrays, jnp.asarray(traj), jnp.asarray(start), horizon)


def _make_chunk(graphdef, tx, horizon, batch_size, num_steps):
    """``num_steps`` optimizer steps at one horizon, fused under one jit with ``lax.scan``."""

    @jax.jit
    def chunk(weights, opt_state, normalisation, arrays, train_index, key):
        def body(carry, step_key):
            weights, opt_state = carry
            windows = _sample_windows(step_key, arrays, train_index, horizon, batch_size)
            loss, grads = jax.value_and_grad(
                lambda w: _batch_loss(graphdef, w, normalisation, windows)
            )(weights)
            updates, opt_state = tx.update(grads, opt_state, weights)
            return (optax.apply_updates(weights, updates), opt_state), loss

        (weights, opt_state), losses = jax.lax.scan(body, (weights, opt_state), jax.random.split(key, num_steps))
        return weights, opt_state, jnp.mean(losses)

    return chunk


# --- training ------------------------------------------------------------------------------------------


def _merged_ranges(a: TrainingRanges, b: TrainingRanges) -> TrainingRanges:
    return TrainingRanges(
        state_min=jnp.minimum(a.state_min, b.state_min),
        state_max=jnp.maximum(a.state_max, b.state_max),
        forcing_min=jnp.minimum(a.forcing_min, b.forcing_min),
        forcing_max=jnp.maximum(a.forcing_max, b.forcing_max),
    )


def train(
    config: TrainConfig,
    data: TrajectoryData,
    key: jax.Array,
    *,
    initial: Emulator | None = None,
    sample_weights: np.ndarray | None = None,
    config_hash: str = "",
    progress: bool = True,
) -> tuple[Emulator, dict[str, Any]]:
    """Trains an emulator on trajectories (pretraining), or fine-tunes ``initial`` on new ones (refit).

    Args:
        config: training settings.
        data: trajectories; the forcing features and state variables must match ``initial``'s if given.
        key: PRNG key (validation split and batches).
        initial: an emulator to start from (a refit): its architecture and normalisation are kept, its
            training ranges widened to the new data's, its lineage extended.
        sample_weights: (num_traj, num_steps + 1) or (num_traj, num_steps + 1, num_state) weights of the
            target states (e.g. the analyses' confidence); uniform when None.
        config_hash: hash of the configuration, stored with the emulator.
        progress: show a tqdm progress bar.

    Returns:
        The emulator with the best validation loss (its model error estimated on the validation
        trajectories), and the history: ``step``, ``horizon``, ``train_loss``, ``val_loss`` per validation,
        ``best_val_loss``, ``initial_val_loss``, ``stopped_early``, ``seconds``.
    """
    started = time_module.perf_counter()
    max_horizon = max(max(h for h, _ in config.rollout_schedule), config.eval_horizon)
    if max_horizon > data.num_steps:
        raise ValueError(f"rollout horizon {max_horizon} exceeds the trajectories' {data.num_steps} steps")
    key_split, key_train = jax.random.split(key)
    train_index, val_index = split_by_group(data, config.validation_fraction, key_split)

    if initial is None:
        net_config = NetworkConfig(
            state_names=data.state_names,
            forcing_names=data.forcing_names,
            num_sites=int(np.max(data.site)) + 1,
            site_features=config.site_features,
            hidden_sizes=config.hidden_sizes,
            activation=config.activation,
            seed=config.seed,
        )
        graphdef, weights = nnx.split(build_network(net_config))
        train_part = data.take(train_index)
        normalisation = fit_normalisation(train_part.states, train_part.forcing, log_floor=config.log_floor)
        ranges = fit_ranges(train_part.states, train_part.forcing)
        lineage: tuple[dict[str, Any], ...] = ()
        kind = "pretrain"
    else:
        net_config = initial.config
        if tuple(data.state_names) != net_config.state_names or tuple(data.forcing_names) != net_config.forcing_names:
            raise ValueError(
                "refit data must have the initial emulator's variables: state "
                f"{net_config.state_names} vs {tuple(data.state_names)}, forcing {net_config.forcing_names} vs "
                f"{tuple(data.forcing_names)}"
            )
        if int(np.max(data.site)) >= net_config.num_sites:
            raise ValueError(f"site index {int(np.max(data.site))} >= num_sites={net_config.num_sites} of the emulator")
        graphdef, weights = initial.graphdef, initial.weights
        normalisation = initial.normalisation
        ranges = _merged_ranges(initial.ranges, fit_ranges(data.states, data.forcing))
        lineage = tuple(initial.lineage)
        kind = "refit"

    arrays = _device_arrays(data, float(normalisation.log_floor), sample_weights)
    val_windows = _validation_windows(arrays, val_index, config.eval_horizon)
    val_loss_fn = jax.jit(lambda w: _batch_loss(graphdef, w, normalisation, val_windows))

    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=min(config.warmup_steps, config.total_steps // 2),
        decay_steps=config.total_steps,
        end_value=config.learning_rate * config.final_learning_rate_fraction,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(config.gradient_clip),
        optax.adamw(schedule, weight_decay=config.weight_decay),
    )
    opt_state = tx.init(weights)
    train_index_device = jnp.asarray(train_index, jnp.int32)

    initial_val = float(val_loss_fn(weights))
    best_val, best_weights, since_best = initial_val, weights, 0
    history: dict[str, Any] = {"step": [], "horizon": [], "train_loss": [], "val_loss": []}
    step, stopped_early = 0, False
    bar = tqdm(total=config.total_steps, desc=f"emulator {kind}", disable=not progress, unit="step")
    for stage, (horizon, stage_steps) in enumerate(config.rollout_schedule):
        last_stage = stage == len(config.rollout_schedule) - 1
        chunks = [config.steps_per_eval] * (stage_steps // config.steps_per_eval)
        if stage_steps % config.steps_per_eval:
            chunks.append(stage_steps % config.steps_per_eval)
        compiled = {}
        for chunk_steps in chunks:
            if chunk_steps not in compiled:
                compiled[chunk_steps] = _make_chunk(graphdef, tx, horizon, config.batch_size, chunk_steps)
            key_train, key_chunk = jax.random.split(key_train)
            weights, opt_state, train_loss = compiled[chunk_steps](
                weights, opt_state, normalisation, arrays, train_index_device, key_chunk
            )
            step += chunk_steps
            val = float(val_loss_fn(weights))
            history["step"].append(step)
            history["horizon"].append(horizon)
            history["train_loss"].append(float(train_loss))
            history["val_loss"].append(val)
            bar.update(chunk_steps)
            bar.set_postfix(horizon=horizon, train=f"{float(train_loss):.3g}", val=f"{val:.3g}")
            if not np.isfinite(val):
                raise FloatingPointError(
                    f"validation loss is {val} at step {step} (horizon {horizon}); lower learning_rate "
                    f"(now {config.learning_rate}) or gradient_clip (now {config.gradient_clip})"
                )
            if val < best_val:
                best_val, best_weights, since_best = val, weights, 0
            else:
                since_best += 1
            if last_stage and since_best >= config.patience:
                stopped_early = True
                break
    bar.close()

    model_error = estimate_model_error(graphdef, best_weights, normalisation, data.take(val_index))
    emulator = Emulator(
        config=net_config,
        graphdef=graphdef,
        weights=best_weights,
        normalisation=normalisation,
        ranges=ranges,
        model_error=model_error,
        config_hash=config_hash,
        lineage=lineage
        + (
            make_lineage_entry(
                kind,
                data.description or f"{data.num_traj} trajectories of {data.num_steps} steps",
                skill_before={"val_loss": initial_val},
                skill_after={"val_loss": best_val},
                kept=True,
                time=datetime.datetime.now(datetime.UTC),
            ),
        ),
    )
    history.update(
        best_val_loss=best_val,
        initial_val_loss=initial_val,
        stopped_early=stopped_early,
        seconds=time_module.perf_counter() - started,
        num_train_traj=int(train_index.size),
        num_val_traj=int(val_index.size),
    )
    return emulator, history


def calibrate_parameter_inputs(
    emulator: Emulator,
    data: TrajectoryData,
    sample_weights: np.ndarray | None,
    initial: np.ndarray,
    reference: np.ndarray,
    *,
    steps: int = 300,
    learning_rate: float = 0.03,
    horizons: Sequence[int] = (1, 4),
    prior_weight: float = 0.01,
    keep_factors: bool = False,
) -> tuple[np.ndarray, float, float]:
    """Values of the emulator's ``param/`` inputs that best fit ``data``, its weights fixed (a refit with four
    degrees of freedom instead of thousands: it cannot overfit a few months of analyses).

    Minimises the rollout loss of :func:`train` over evenly spaced windows of each horizon in ``horizons``,
    plus ``prior_weight * sum(log(values / reference) ** 2)``, with Adam in log space; values stay within the
    emulator's training ranges (outside them the network was never taught).

    Args:
        data: trajectories (their ``param/`` forcing columns are replaced by the values tried).
        keep_factors: the trajectories' ``param/`` columns hold ``initial`` times a factor per step (the
            values a filter estimated with the state): the values tried replace ``initial`` and keep the factors.
        sample_weights: as in :func:`train`.
        initial, reference: (P,) starting values and prior centre, in the order of the ``param/`` features.

    Returns:
        (values (P,), loss at ``initial``, loss at the values).
    """
    columns = parameter_columns(emulator.config.forcing_names)
    if columns.size == 0:
        raise ValueError("the emulator takes no parameter inputs (no param/ forcing features) to calibrate")
    if np.shape(initial) != (columns.size,) or np.shape(reference) != (columns.size,):
        raise ValueError(f"initial and reference must have shape ({columns.size},), got "
                         f"{np.shape(initial)} and {np.shape(reference)}")
    max_horizon = max(horizons)
    if max_horizon > data.num_steps:
        raise ValueError(f"calibration horizon {max_horizon} exceeds the trajectories' {data.num_steps} steps")
    arrays = _device_arrays(data, float(emulator.normalisation.log_floor), sample_weights)
    everything = np.arange(data.num_traj)
    windows = [_validation_windows(arrays, everything, h) for h in horizons]
    reference_log = jnp.log(jnp.asarray(reference, jnp.float32))
    initial_values = jnp.asarray(initial, jnp.float32)
    low = jnp.log(jnp.asarray(emulator.ranges.forcing_min)[columns])
    high = jnp.log(jnp.asarray(emulator.ranges.forcing_max)[columns])

    def loss(log_values):
        values = jnp.exp(log_values)
        total = prior_weight * jnp.sum((log_values - reference_log) ** 2)
        for log_states, forcing, *rest in windows:
            tried = forcing[..., columns] * (values / initial_values) if keep_factors else values
            forcing = forcing.at[..., columns].set(tried)  # (scatter-multiply has no gradient rule)
            total = total + _batch_loss(emulator.graphdef, emulator.weights, emulator.normalisation,
                                        (log_states, forcing, *rest))
        return total

    tx = optax.adam(learning_rate)

    @jax.jit
    def fit(log_values):
        def body(carry, _):
            log_values, opt_state = carry
            grads = jax.grad(loss)(log_values)
            updates, opt_state = tx.update(grads, opt_state, log_values)
            return (jnp.clip(optax.apply_updates(log_values, updates), low, high), opt_state), None
        (fitted, _), _ = jax.lax.scan(body, (log_values, tx.init(log_values)), None, length=steps)
        return fitted, loss(log_values), loss(fitted)

    start = jnp.clip(jnp.log(jnp.asarray(initial, jnp.float32)), low, high)
    fitted, before, after = fit(start)
    if not bool(after <= before):  # Adam may wander on a flat loss: never return worse than the start
        fitted, after = start, before
    return np.exp(np.asarray(fitted, np.float64)), float(before), float(after)


# --- model error and evaluation ------------------------------------------------------------------------


def estimate_model_error(graphdef, weights, normalisation, data: TrajectoryData) -> ModelError:
    """One-step residuals of the emulator on ``data`` (validation trajectories), summarised per variable."""
    arrays = _device_arrays(data, float(normalisation.log_floor), None)

    @jax.jit
    def residuals(weights):
        log_states = arrays["log_states"]
        site = jnp.broadcast_to(arrays["site"][:, None], log_states.shape[:1] + (data.num_steps,))
        predicted = log_step(
            graphdef, weights, normalisation, log_states[:, :-1], arrays["forcing"], arrays["day_of_year"], site
        )
        return predicted - log_states[:, 1:], jnp.exp(predicted) - jnp.exp(log_states[:, 1:])

    log_residual, state_residual = residuals(weights)
    log_residual = np.asarray(log_residual, np.float64).reshape(-1, log_residual.shape[-1])
    state_residual = np.asarray(state_residual, np.float64).reshape(-1, state_residual.shape[-1])
    log_sd = log_residual.std(axis=0)
    return ModelError(
        log_bias=jnp.asarray(log_residual.mean(axis=0), jnp.float32),
        log_sd=jnp.asarray(log_sd, jnp.float32),
        normalised_sd=jnp.asarray(log_sd / np.asarray(normalisation.state_sd, np.float64), jnp.float32),
        state_sd=jnp.asarray(state_residual.std(axis=0), jnp.float32),
    )


def free_run_skill(emulator: Emulator, data: TrajectoryData) -> dict[str, float]:
    """Range-normalised RMSE per state variable of free runs against the reference trajectories.

    Each trajectory is run freely from its first state over all its steps; per trajectory and variable, the
    RMSE over the steps is divided by the range (max - min) of the reference; the result is the mean over
    trajectories. 0.10 means errors of a tenth of the variable's range.

    Returns:
        {state name: normalised RMSE}.
    """
    predicted = emulator.run(
        jnp.asarray(data.states[:, 0], jnp.float32),
        jnp.asarray(np.swapaxes(data.forcing, 0, 1), jnp.float32),
        jnp.asarray(np.swapaxes(data.day_of_year, 0, 1), jnp.float32),
        jnp.asarray(data.site, jnp.int32),
        check=False,
    )
    predicted = np.swapaxes(np.asarray(predicted, np.float64), 0, 1)
    reference = np.asarray(data.states[:, 1:], np.float64)
    rmse = np.sqrt(np.mean((predicted - reference) ** 2, axis=1))
    value_range = reference.max(axis=1) - reference.min(axis=1)
    normalised = rmse / np.maximum(value_range, 1e-12)
    return {name: float(v) for name, v in zip(emulator.config.state_names, normalised.mean(axis=0), strict=True)}


def _climatology(states: np.ndarray, day_of_year: np.ndarray, num_bins: int = 12) -> np.ndarray:
    """Mean annual cycle in ``num_bins`` bins: states (num_steps, ..., num_state) -> (num_bins, ..., num_state)."""
    bins = np.minimum((np.asarray(day_of_year) / 365.25 * num_bins).astype(int), num_bins - 1)
    return np.stack([states[bins == b].mean(axis=0) for b in range(num_bins)])


def long_run_check(
    emulator: Emulator,
    reference: TrajectoryData,
    *,
    min_correlation: float = 0.8,
    amplitude_bounds: tuple[float, float] = (0.5, 2.0),
) -> dict[str, Any]:
    """A long free run (e.g. 20 years) against a reference run of the process model.

    Checks that the emulator stays finite and positive, and seasonal: per variable, the climatological
    annual cycle (monthly means over the run) correlates with the reference's above ``min_correlation`` and
    its amplitude (max - min of the monthly means) is within ``amplitude_bounds`` times the reference's.
    Variables whose reference has no annual cycle (amplitude below 1e-6 of its mean) are not judged on it.

    Args:
        emulator: the emulator.
        reference: one or more long trajectories of the process model (the emulator starts from their
            first state).

    Returns:
        {"finite", "positive", "seasonal": bool; "correlation", "amplitude_ratio": {name: float};
        "ok": all three}.
    """
    predicted = np.asarray(
        emulator.run(
            jnp.asarray(reference.states[:, 0], jnp.float32),
            jnp.asarray(np.swapaxes(reference.forcing, 0, 1), jnp.float32),
            jnp.asarray(np.swapaxes(reference.day_of_year, 0, 1), jnp.float32),
            jnp.asarray(reference.site, jnp.int32),
            check=False,
        ),
        np.float64,
    )
    truth = np.swapaxes(np.asarray(reference.states[:, 1:], np.float64), 0, 1)
    day = np.asarray(reference.day_of_year[0])
    finite = bool(np.all(np.isfinite(predicted)))
    positive = bool(np.all(predicted > 0))
    correlation, amplitude_ratio, seasonal = {}, {}, True
    if finite:
        clim_pred = _climatology(predicted, day)
        clim_true = _climatology(truth, day)
        for i, name in enumerate(emulator.config.state_names):
            p = clim_pred[..., i].reshape(clim_pred.shape[0], -1)
            t = clim_true[..., i].reshape(clim_true.shape[0], -1)
            amp_true = np.ptp(t, axis=0)
            amp_pred = np.ptp(p, axis=0)
            judged = amp_true > 1e-6 * np.abs(t).mean(axis=0)
            corr = [np.corrcoef(p[:, j], t[:, j])[0, 1] if judged[j] else np.nan for j in range(t.shape[1])]
            ratio = np.where(judged, amp_pred / np.maximum(amp_true, 1e-30), np.nan)
            correlation[name] = float(np.nanmin(corr)) if np.any(judged) else float("nan")
            amplitude_ratio[name] = float(np.nanmin(ratio)) if np.any(judged) else float("nan")
            if np.any(judged):
                worst_high = float(np.nanmax(ratio))
                seasonal &= bool(
                    correlation[name] >= min_correlation
                    and amplitude_ratio[name] >= amplitude_bounds[0]
                    and worst_high <= amplitude_bounds[1]
                )
    else:
        seasonal = False
    return {
        "finite": finite,
        "positive": positive,
        "seasonal": seasonal,
        "correlation": correlation,
        "amplitude_ratio": amplitude_ratio,
        "ok": finite and positive and seasonal,
    }


# --- training data from the process model ---------------------------------------------------------------

PARAM_PREFIX = "param/"


def forcing_feature_names(num_layers: int = 2, param_names: Sequence[str] = ()) -> tuple[str, ...]:
    """Names of the emulator's forcing features: per-layer temperature and salinity, the other forcing
    fields but day of year (the time of year is a separate input), then ``param/<name>`` per parameter."""
    layers = LAYERS[:num_layers]
    names = [f"{field}/{layer}" for field in ("temperature", "salinity") for layer in layers]
    names += [f for f in FORCING_FIELDS if f not in ("temperature", "salinity", "day_of_year")]
    unknown = [p for p in param_names if p not in ProcessParams._fields]
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; valid names are {list(ProcessParams._fields)}")
    return tuple(names) + tuple(PARAM_PREFIX + p for p in param_names)


def parameter_columns(forcing_names: Sequence[str]) -> np.ndarray:
    """Indices of the ``param/`` features among ``forcing_names`` (the emulator's parameter inputs), in order."""
    return np.asarray([i for i, n in enumerate(forcing_names) if n.startswith(PARAM_PREFIX)], np.int32)


def forcing_inputs(
    forcing_names: Sequence[str],
    forcing: Forcing,
    params: ProcessParams | None = None,
) -> jax.Array:
    """The emulator's forcing features, in the order of ``forcing_names``, from a Forcing and parameters.

    Pure ``jnp``: usable under ``jit`` and ``vmap``.

    Args:
        forcing_names: the emulator's ``config.forcing_names`` (see :func:`forcing_feature_names`).
        forcing: fields of shape (*lead, L) for temperature and salinity and (*lead,) otherwise, where lead is
            e.g. (T,) for a series or () for one step.
        params: values of the ``param/`` features, scalars or broadcastable to lead; defaults when None.

    Returns:
        (*lead, num_forcing) float32.
    """
    params = default_params() if params is None else params
    lead = jnp.shape(forcing.par)
    columns = []
    for name in forcing_names:
        if name.startswith(PARAM_PREFIX):
            value = getattr(params, name[len(PARAM_PREFIX):])
        elif "/" in name:
            field, layer = name.split("/")
            value = getattr(forcing, field)[..., LAYERS.index(layer)]
        elif name in FORCING_FIELDS:
            value = getattr(forcing, name)
        else:
            raise ValueError(f"unknown forcing feature {name!r}; see forcing_feature_names()")
        columns.append(jnp.broadcast_to(jnp.asarray(value, jnp.float32), lead))
    return jnp.stack(columns, axis=-1)


@dataclasses.dataclass(frozen=True)
class EnsembleSpec:
    """How the process-model ensemble that trains (or tests) the emulator is drawn; its repr is the record.

    Attributes:
        num_members: members (parameter set and forcing perturbation); each runs at every site.
        num_years: years per run (365 daily steps each).
        latitudes: one site per latitude (default site layout otherwise).
        river_discharges: mean river discharge per site, m3 s-1 (0: no river).
        varied_params: parameters drawn in their ranges (the others at their defaults); all when None, none
            by default: the demo emulator emulates the process model at its default parameters under perturbed
            forcing and initial states (drawing parameters too, with ``condition_on_params``, is supported but
            needs more data and training for the same accuracy).
        condition_on_params: give the drawn parameters to the emulator as constant forcing features, so that
            it emulates the process model for any parameters (and the filter can estimate them).
        initial_spread: sd of the log-normal perturbation of the initial concentrations (oxygen: a tenth).
        temperature_shift_sd: degC, sd of a per-member shift of the seasonal temperature cycle.
        cloudiness_range: per-member mean cloudiness drawn in this range.
        stratification_range: per-member maximum surface-bottom temperature difference, degC.
        river_water_range: with a river, each member scales each nutrient of the river water by a factor drawn
            (log-uniform) in this range, so that the emulator learns the response to river-water scenarios.
        substeps: process-model sub-steps per day.
    """

    num_members: int = 128
    num_years: int = 1
    latitudes: tuple[float, ...] = (43.24,)
    river_discharges: tuple[float, ...] | None = None
    varied_params: tuple[str, ...] | None = ()
    condition_on_params: bool = True
    initial_spread: float = 0.3
    temperature_shift_sd: float = 1.0
    cloudiness_range: tuple[float, float] = (0.1, 0.4)
    stratification_range: tuple[float, float] = (3.0, 8.0)
    river_water_range: tuple[float, float] = (0.4, 1.6)
    substeps: int = DEFAULT_SUBSTEPS

    def __post_init__(self):
        object.__setattr__(self, "latitudes", tuple(float(v) for v in self.latitudes))
        if self.river_discharges is not None:
            object.__setattr__(self, "river_discharges", tuple(float(v) for v in self.river_discharges))
            if len(self.river_discharges) != len(self.latitudes):
                raise ValueError(
                    f"river_discharges has {len(self.river_discharges)} values for {len(self.latitudes)} sites"
                )
        if self.varied_params is not None:
            object.__setattr__(self, "varied_params", tuple(self.varied_params))
            forcing_feature_names(2, self.varied_params)  # raises on unknown names
        if self.num_members < 1 or self.num_years < 1 or not self.latitudes:
            raise ValueError(
                f"need num_members >= 1, num_years >= 1 and a site; got {self.num_members}, {self.num_years}, "
                f"{self.latitudes}"
            )

    @property
    def param_names(self) -> tuple[str, ...]:
        return ProcessParams._fields if self.varied_params is None else self.varied_params


def _member_forcing(key, spec: EnsembleSpec, site_index: int, num_days: int, perturb: bool) -> Forcing:
    k_weather, k_shift, k_cloud, k_strat = jax.random.split(key, 4)
    shift = float(spec.temperature_shift_sd * jax.random.normal(k_shift)) if perturb else 0.0
    cloud = float(jax.random.uniform(k_cloud, minval=spec.cloudiness_range[0], maxval=spec.cloudiness_range[1]))
    strat = float(
        jax.random.uniform(k_strat, minval=spec.stratification_range[0], maxval=spec.stratification_range[1])
    )
    river = spec.river_discharges[site_index] if spec.river_discharges else 0.0
    forcing = synthetic_forcing(
        num_days,
        latitude=spec.latitudes[site_index],
        key=k_weather,
        surface_temperature_range=(13.0 + shift, 26.0 + shift),
        max_stratification=strat if perturb else 6.0,
        cloudiness=cloud if perturb else 0.25,
        mean_river_discharge=river,
    )
    if river > 0 and perturb:
        # Folded, not split, so that the other draws stay those of runs without a river.
        low, high = np.log(spec.river_water_range)
        factors = np.exp(np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), (len(RIVER_WATER),),
                                                       minval=low, maxval=high)))
        names = [f"river_{nutrient}" for nutrient in RIVER_WATER]
        forcing = forcing._replace(**{n: getattr(forcing, n) * np.float32(f) for n, f in zip(names, factors)})
    return forcing


def run_process_ensemble(
    key: jax.Array,
    spec: EnsembleSpec,
    *,
    params: ProcessParams | None = None,
    perturb_forcing: bool = True,
    description: str = "",
) -> tuple[TrajectoryData, ProcessParams]:
    """Runs the process model for every member at every site and returns the trajectories.

    Members draw their parameters in their ranges (or take ``params``, fields of shape (num_members,) or
    scalars), their forcing weather from their own key, and (with ``perturb_forcing``) a temperature shift,
    cloudiness and stratification; each site has its latitude and river. The run vmaps over
    members x sites.

    Returns:
        The trajectories (trajectory index = member * num_sites + site; ``group`` = member) and the
        parameters of each trajectory (fields of shape (num_traj,)).
    """
    num_sites = len(spec.latitudes)
    num_days = 365 * spec.num_years
    k_params, k_init, k_forcing = jax.random.split(key, 3)
    if params is None:
        params = sample_params(k_params, spec.num_members, names=spec.param_names)
    params = ProcessParams(
        *(jnp.broadcast_to(jnp.asarray(v, jnp.float32), (spec.num_members,)) for v in params)
    )
    forcing_keys = jax.random.split(k_forcing, spec.num_members * num_sites)
    forcings = [
        _member_forcing(forcing_keys[m * num_sites + s], spec, s, num_days, perturb_forcing)
        for m in range(spec.num_members)
        for s in range(num_sites)
    ]
    forcing = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *forcings)
    num_traj = spec.num_members * num_sites
    traj_params = jax.tree_util.tree_map(lambda v: jnp.repeat(v, num_sites), params)
    sites = [default_site(2, latitude=lat) for lat in spec.latitudes]
    site_batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(sites * spec.num_members))
    base = initial_state(2)
    spread = jnp.where(jnp.arange(base.size) % NUM_TRACERS == NUM_TRACERS - 1, 0.1, 1.0) * spec.initial_spread
    state0 = base * jnp.exp(spread * jax.random.normal(k_init, (num_traj, base.size)))
    run_all = jax.jit(jax.vmap(functools.partial(process_model.run, substeps=spec.substeps)))
    states = np.asarray(run_all(state0, forcing, traj_params, site_batch))
    names = forcing_feature_names(2, spec.param_names if spec.condition_on_params else ())
    features = jax.jit(jax.vmap(functools.partial(forcing_inputs, names)))(forcing, traj_params)
    data = TrajectoryData(
        states=states,
        forcing=np.asarray(features),
        day_of_year=np.asarray(forcing.day_of_year),
        site=np.tile(np.arange(num_sites), spec.num_members),
        group=np.repeat(np.arange(spec.num_members), num_sites),
        state_names=tuple(process_model.state_names(2)),
        forcing_names=names,
        description=description or f"process model ensemble {spec}",
    )
    return data, traj_params


def make_training_data(key: jax.Array, spec: EnsembleSpec) -> TrajectoryData:
    """Training trajectories: the process model with parameters drawn in their ranges and perturbed forcing."""
    data, _ = run_process_ensemble(key, spec, description=f"pretraining ensemble {spec}")
    if not np.all(np.isfinite(data.states)):
        raise FloatingPointError("the process model returned non-finite states; check the ensemble spec")
    return data


def evaluate(
    emulator: Emulator,
    key: jax.Array,
    spec: EnsembleSpec,
    *,
    num_members: int = 8,
    long_run_years: int = 20,
    long_run_members: int = 2,
) -> dict[str, Any]:
    """Skill of the emulator on forcing years not seen in training, against the process model.

    Draws ``num_members`` new members from ``spec`` with ``key`` (a key not used in training: new weather,
    temperature shift, cloudiness, stratification and initial states; parameters as in training), runs the
    process model for one year, and scores one-year free runs of the emulator (:func:`free_run_skill`);
    then a ``long_run_years`` free run at default parameters against the process model
    (:func:`long_run_check`).

    Returns:
        {"free_run_nrmse": {state name: range-normalised RMSE}, "max_nrmse": float,
        "long_run": the long-run check}.
    """
    if not spec.condition_on_params and spec.param_names:
        raise ValueError("evaluate needs the parameters as emulator inputs or fixed: set condition_on_params=True")
    key_year, key_long = jax.random.split(key)
    one_year = dataclasses.replace(spec, num_members=num_members, num_years=1)
    unseen, _ = run_process_ensemble(key_year, one_year, description="evaluation: unseen forcing years")
    skill = free_run_skill(emulator, unseen)
    long_spec = dataclasses.replace(spec, num_members=long_run_members, num_years=long_run_years)
    long_reference, _ = run_process_ensemble(key_long, long_spec, params=default_params())
    return {
        "free_run_nrmse": skill,
        "max_nrmse": max(skill.values()),
        "long_run": long_run_check(emulator, long_reference),
    }


def train_demo_emulator(
    key: jax.Array,
    *,
    spec: EnsembleSpec | None = None,
    config: TrainConfig | None = None,
    config_hash: str = "",
    progress: bool = True,
) -> tuple[Emulator, dict[str, Any]]:
    """Pretrains the demo emulator on a process-model ensemble (defaults: :class:`EnsembleSpec`,
    :class:`TrainConfig`). The history gets ``data_seconds`` (running the process model) too."""
    spec = spec or EnsembleSpec()
    config = config or TrainConfig()
    key_data, key_train = jax.random.split(key)
    started = time_module.perf_counter()
    data = make_training_data(key_data, spec)
    data_seconds = time_module.perf_counter() - started
    emulator, history = train(config, data, key_train, config_hash=config_hash, progress=progress)
    history["data_seconds"] = data_seconds
    return emulator, history

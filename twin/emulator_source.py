"""Where the twin's emulator comes from: a checkpoint named by the config, or pretraining on the process
model; and its limits of use on the forcing a run will feed it."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

from twin.config import TwinConfig, config_hash


def _latitudes(config: TwinConfig) -> tuple[float, ...]:
    if config.sites:
        return tuple(s.latitude for s in config.sites)
    if config.experiment is not None:
        return (config.experiment.latitude,)
    return (43.24,)


def ensemble_spec(config: TwinConfig):
    from emulators.training import EnsembleSpec
    pre = config.emulator.pretrain
    latitudes = _latitudes(config)
    rivers = (pre.river_discharge_m3s,) * len(latitudes) if pre.river_discharge_m3s > 0 else None
    return EnsembleSpec(num_members=pre.members, num_years=pre.years, latitudes=latitudes,
                        river_discharges=rivers, varied_params=pre.varied_params)


def train_config(config: TwinConfig):
    """The emulator's TrainConfig: the library defaults, with the config's network, seed and step budget."""
    from emulators.training import TrainConfig
    pre = config.emulator.pretrain
    base = TrainConfig(hidden_sizes=pre.hidden_sizes, seed=pre.seed)
    total = base.total_steps
    if pre.max_steps != total:  # scale every curriculum stage to the budget, down or up
        scale = pre.max_steps / total
        schedule = tuple((h, max(1, int(round(n * scale)))) for h, n in base.rollout_schedule)
        base = dataclasses.replace(base, rollout_schedule=schedule,
                                   warmup_steps=min(base.warmup_steps, max(1, pre.max_steps // 10)),
                                   steps_per_eval=min(base.steps_per_eval, max(1, pre.max_steps // 10)))
    return base


def pretrain(config: TwinConfig, progress: bool = True):
    """Pretrain an emulator on a process-model ensemble drawn for the config's sites."""
    from emulators.checkpoint import make_lineage_entry
    from emulators.training import train_demo_emulator
    started = time.perf_counter()
    spec = ensemble_spec(config)
    emulator, history = train_demo_emulator(jax.random.PRNGKey(config.emulator.pretrain.seed), spec=spec,
                                            config=train_config(config), config_hash=config_hash(config),
                                            progress=progress)
    history["seconds"] = time.perf_counter() - started
    if not emulator.lineage:
        emulator = emulator.replace(lineage=(make_lineage_entry("pretrain", f"process model ensemble {spec}"),))
    return emulator, history


def require_checkpoint(config: TwinConfig) -> None:
    """A clear error now if the emulator checkpoint the config names is not there (not after the data are
    read, nor as a traceback from the loader)."""
    from emulators.checkpoint import ARRAYS_FILE, METADATA_FILE
    from twin.errors import InputError
    path = config.emulator.checkpoint
    if config.model.kind != "emulator" or not path:
        return
    missing = [name for name in (METADATA_FILE, ARRAYS_FILE) if not (Path(path) / name).is_file()]
    if missing:
        raise InputError(path, f"emulator.checkpoint: no {' or '.join(missing)} in this folder; give the folder "
                               f"of a checkpoint (relative paths are read from the config's folder), or leave "
                               f"emulator.checkpoint out to pretrain one")


def obtain_emulator(config: TwinConfig, prepared=None, quiet: bool = False):
    """The checkpoint the config names, or a freshly pretrained emulator."""
    from emulators.checkpoint import load_checkpoint
    if config.emulator.checkpoint:
        if not quiet:
            print(f"[twin] emulator checkpoint {config.emulator.checkpoint}", file=sys.stderr)
        require_checkpoint(config)
        emulator = load_checkpoint(config.emulator.checkpoint)
        require_estimated_inputs(config, emulator)
        return emulator
    if not quiet:
        print("[twin] no emulator checkpoint: pretraining one on the process model", file=sys.stderr)
    emulator, _ = pretrain(config, progress=not quiet)
    return emulator


def require_estimated_inputs(config: TwinConfig, emulator) -> None:
    """A clear error if the config estimates a parameter the emulator does not take as an input (the config's
    own check sees only a pretraining's varied_params, not a checkpoint's inputs)."""
    from twin.errors import ConfigError
    from twin.forecast import parameter_input_names
    inputs = parameter_input_names(emulator)
    missing = [p for p in config.model.estimate_parameters if p not in inputs]
    if missing:
        raise ConfigError(str(config.emulator.checkpoint), [
            f"model.estimate_parameters.{p}: the emulator checkpoint does not take this parameter as an input "
            f"(its parameter inputs: {', '.join(inputs) or 'none'}); estimate one of those, or pretrain an "
            f"emulator with it in emulator.pretrain.varied_params" for p in missing])


def limits_of_use(emulator, forcing) -> dict:
    """Fraction of days on which each forcing feature lies outside the emulator's training range."""
    from emulators.training import forcing_inputs
    features = np.asarray(forcing_inputs(emulator.config.forcing_names, forcing))  # (T, S, F)
    lo, hi = np.asarray(emulator.ranges.forcing_min), np.asarray(emulator.ranges.forcing_max)
    outside = (features < lo) | (features > hi)
    return {name: float(outside[..., i].mean()) for i, name in enumerate(emulator.config.forcing_names)
            if outside[..., i].any()}

"""Process model, neural surrogates, training, refit and checkpoints of coastal biogeochemistry.

Public API (imported lazily, so that reading data never pays for importing Flax)::

    from emulators import ProcessParams, default_site, run, step, chlorophyll    # process model
    from emulators import Forcing, make_forcing, synthetic_forcing, apply_change  # forcing
    from emulators import Emulator, train, evaluate, save_checkpoint, load_checkpoint  # emulator
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "emulators.parameters": ("TRACERS", "NUM_TRACERS", "LAYERS", "ProcessParams", "PARAM_RANGES", "Site",
                             "default_params", "default_site", "closed_site", "sample_params"),
    "emulators.process_model": ("state_names", "state_index", "initial_state", "tendencies", "step", "run",
                                "chlorophyll", "oxygen_saturation", "oxygen_solubility", "total_nitrogen"),
    "emulators.forcing": ("Forcing", "ForcingChange", "make_forcing", "synthetic_forcing", "apply_change",
                          "apply_changes", "fit_harmonic_climatology", "fill_series", "clear_sky_par"),
    "emulators.network": ("Emulator", "EmulatorNet", "NetworkConfig", "ModelError", "predict_step", "rollout"),
    "emulators.training": ("TrainConfig", "EnsembleSpec", "TrajectoryData", "train", "evaluate",
                           "make_training_data", "train_demo_emulator", "forcing_inputs"),
    "emulators.checkpoint": ("save_checkpoint", "load_checkpoint", "make_lineage_entry"),
    "emulators.normalisation": ("OutOfRangeWarning", "TrainingRanges", "Normalisation"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'emulators' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)

"""Emulator checkpoints: weights, normalisation, training ranges, model error, config hash and lineage.

A checkpoint is a directory with two files:

- ``arrays.npz``: every array, keyed ``weights/<path in the nnx.State>``, ``normalisation/<field>``,
  ``ranges/<field>``, ``model_error/<field>``, stored bit for bit;
- ``metadata.json``: format version, network config, config hash, lineage, and the SHA-256 of ``arrays.npz``
  (checked on load).

It is written atomically: everything goes to a temporary sibling directory, is fsynced, and is renamed into
place with ``os.replace``; a write that fails leaves no partial checkpoint. Overwriting moves the old
checkpoint aside first (a crash between the two renames leaves it intact under ``.<name>.old-*``).
Loading rebuilds the network from its config and puts the stored weights back, so predictions after a
reload are bit-identical.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Literal, get_args

import jax
import numpy as np
from flax import nnx

from emulators.network import Emulator, ModelError, NetworkConfig, build_network
from emulators.normalisation import Normalisation, TrainingRanges

__all__ = ["FORMAT_VERSION", "load_checkpoint", "make_lineage_entry", "save_checkpoint"]

FORMAT_VERSION = 1
ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "metadata.json"
LineageKind = Literal["pretrain", "refit"]
_GROUPS = {"normalisation": Normalisation, "ranges": TrainingRanges, "model_error": ModelError}


def make_lineage_entry(
    kind: LineageKind,
    data: str,
    *,
    skill_before: float | dict[str, float] | None = None,
    skill_after: float | dict[str, float] | None = None,
    kept: bool = True,
    time: datetime.datetime | None = None,
) -> dict[str, Any]:
    """One lineage record: what the emulator was (re)trained on and whether the result was kept.

    Args:
        kind: "pretrain" (on the process model) or "refit" (on the twin's analyses).
        data: a description of the training data.
        skill_before, skill_after: skill of the emulator before and after (a score or a dict of scores).
        kept: whether the result was kept (False: rolled back).
        time: when; now (UTC) by default.
    """
    if kind not in get_args(LineageKind):
        raise ValueError(f"lineage kind={kind!r} is not one of {list(get_args(LineageKind))}")
    time = time or datetime.datetime.now(datetime.UTC)
    return {
        "kind": kind,
        "time": time.isoformat(),
        "data": str(data),
        "skill_before": skill_before,
        "skill_after": skill_after,
        "kept": bool(kept),
    }


def _path_key(path) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        else:
            parts.append(str(key))
    return "/".join(parts)


def _weight_arrays(weights: nnx.State) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(weights)[0]
    return {f"weights/{_path_key(path)}": np.asarray(leaf) for path, leaf in leaves}


def _to_jsonable(value: Any, where: str) -> Any:
    """Lineage values as plain JSON (numpy scalars and arrays included); raises on anything else."""
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray | jax.Array):
        return _to_jsonable(np.asarray(value).tolist(), where)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"{where} = {value!r} ({type(value).__name__}) cannot be stored in a checkpoint's JSON")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint's metadata (other files beside it are allowed)."""
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and "format_version" in metadata and "arrays_sha256" in metadata


def save_checkpoint(directory: str | os.PathLike, emulator: Emulator, *, overwrite: bool = True) -> Path:
    """Writes ``emulator`` to ``directory`` atomically.

    Args:
        directory: the checkpoint directory (created; its parent too).
        emulator: the emulator, with its normalisation, ranges, model error, config hash and lineage.
        overwrite: replace an existing checkpoint; when False an existing one raises FileExistsError. A
            directory that is not a checkpoint is never replaced (FileExistsError). Replacing a checkpoint
            replaces its whole directory: files written beside it (a resolved config) must be written again.

    Returns:
        The checkpoint directory.
    """
    directory = Path(directory)
    if directory.exists():
        if not overwrite:
            raise FileExistsError(f"checkpoint {directory} exists; pass overwrite=True to replace it")
        # Replacing removes the old directory: never do that to a directory that is not a checkpoint.
        if not _is_checkpoint(directory):
            found = sorted(p.name for p in directory.iterdir())[:10] if directory.is_dir() else []
            raise FileExistsError(
                f"{directory} exists and is not an emulator checkpoint (it holds {found}); "
                "refusing to replace it: choose another directory"
            )
    arrays = _weight_arrays(emulator.weights)
    for group, value in (
        ("normalisation", emulator.normalisation),
        ("ranges", emulator.ranges),
        ("model_error", emulator.model_error),
    ):
        for field, array in value._asdict().items():
            arrays[f"{group}/{field}"] = np.asarray(array)
    metadata = {
        "format_version": FORMAT_VERSION,
        "network_config": emulator.config.to_dict(),
        "config_hash": str(emulator.config_hash),
        "lineage": _to_jsonable(list(emulator.lineage), "lineage"),
        "parameter_values": {str(k): float(v) for k, v in emulator.parameter_values.items()},
        "saved": datetime.datetime.now(datetime.UTC).isoformat(),
    }

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        with open(tmp / ARRAYS_FILE, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        metadata["arrays_sha256"] = _sha256(tmp / ARRAYS_FILE)
        with open(tmp / METADATA_FILE, "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint(directory: str | os.PathLike) -> Emulator:
    """Reads a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: wrong format version, corrupted arrays (checksum), or weights that do not fit the
            network config.
    """
    directory = Path(directory)
    metadata_path, arrays_path = directory / METADATA_FILE, directory / ARRAYS_FILE
    if not metadata_path.is_file() or not arrays_path.is_file():
        raise FileNotFoundError(f"no emulator checkpoint in {directory} (expected {METADATA_FILE}, {ARRAYS_FILE})")
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {directory} has format_version={metadata.get('format_version')!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    actual_sha = _sha256(arrays_path)
    if actual_sha != metadata["arrays_sha256"]:
        raise ValueError(
            f"checkpoint {directory}: {ARRAYS_FILE} has SHA-256 {actual_sha}, metadata says "
            f"{metadata['arrays_sha256']} (corrupted or modified)"
        )
    with np.load(arrays_path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}

    config = NetworkConfig.from_dict(metadata["network_config"])
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_network(config)))
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    expected = {f"weights/{_path_key(path)}": leaf for path, leaf in paths_leaves}
    stored = {key for key in arrays if key.startswith("weights/")}
    if stored != set(expected):
        raise ValueError(
            f"checkpoint {directory}: weights {sorted(stored ^ set(expected))} do not match the network "
            f"config {config}"
        )
    leaves = []
    for key, leaf in expected.items():
        array = arrays[key]
        if array.shape != leaf.shape or array.dtype != leaf.dtype:
            raise ValueError(
                f"checkpoint {directory}: {key} is {array.dtype}{list(array.shape)}, the network expects "
                f"{leaf.dtype}{list(leaf.shape)}"
            )
        leaves.append(jax.device_put(array))  # device_put: no eager conversion program per shape
    weights = jax.tree_util.tree_unflatten(treedef, leaves)

    groups = {}
    for group, cls in _GROUPS.items():
        missing = [f for f in cls._fields if f"{group}/{f}" not in arrays]
        if missing:
            raise ValueError(f"checkpoint {directory}: missing {group} fields {missing}")
        groups[group] = cls(**{f: jax.device_put(arrays[f"{group}/{f}"]) for f in cls._fields})
    return Emulator(
        config=config,
        graphdef=graphdef,
        weights=weights,
        normalisation=groups["normalisation"],
        ranges=groups["ranges"],
        model_error=groups["model_error"],
        config_hash=metadata["config_hash"],
        lineage=tuple(metadata["lineage"]),
        parameter_values=dict(metadata.get("parameter_values", {})),  # absent before calibrated refits
    )

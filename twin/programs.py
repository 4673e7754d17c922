"""Compiled programs kept in an operational store, so that a scheduled cycle does not trace them again.

A ``twin cycle`` is a new process every time. Even when JAX's persistent compilation cache holds the
executable, tracing the cycle window and lowering it to StableHLO cost such a process 0.8 s of its 5 s
budget. ``stored_call`` exports the jitted function once per store, code version, backend and argument
shapes (``jax.export``), keeps the serialised program and its output tree in the store, and later processes
deserialise it instead. The program is the one ``jax.jit`` would build (the same StableHLO), so the results
are those of a direct call, bit for bit (tested).

What the function closes over (the forecast model, the filter settings) is named by ``static_key``: the
caller passes the store's config text and its emulator's weight digest, which is what those statics are made
of. The
source of the twin's packages and the JAX version are part of every program's name, so a changed code base
never runs an old program.
"""
from __future__ import annotations

import hashlib
import importlib
import pickle
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jax
import numpy as np

_PACKAGES = ("assimilation", "emulators", "twin")
_LOADED: dict[str, Callable] = {}  # by file name (the hash of all it depends on): compiled once a process


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the JAX and jaxlib versions and of every source file of the twin's packages."""
    import jaxlib
    digest = hashlib.sha256(f"jax {jax.__version__} jaxlib {jaxlib.__version__}".encode())
    for package in _PACKAGES:
        root = Path(importlib.import_module(package).__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _as_array(leaf: Any):
    """Python scalars become NumPy arrays of JAX's canonical dtype (int32, float32 without x64)."""
    if isinstance(leaf, (jax.Array, np.ndarray)):
        return leaf
    value = np.asarray(leaf)
    return value.astype(jax.dtypes.canonicalize_dtype(value.dtype))


def stored_call(directory: Path, name: str, fn: Callable, static_key: str, *args):
    """``fn(*args)``, through a program exported to ``directory`` the first time and reused after.

    ``fn`` takes pytrees of arrays only (bind statics first, e.g. with a lambda) and returns a pytree.
    """
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    leaves = [_as_array(x) for x in leaves]
    signature = [(tuple(x.shape), str(x.dtype)) for x in leaves]
    ident = hashlib.sha256(repr((name, static_key, code_digest(), jax.default_backend(), str(in_tree),
                                 signature)).encode()).hexdigest()[:24]
    path = Path(directory) / f"{name}-{ident}.jaxprog"
    program = _LOADED.get(path.name)
    if program is None:
        program = _load(path) if path.is_file() else None
        if program is None:
            program = _export(path, fn, in_tree, leaves)
        if len(_LOADED) >= 16:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[path.name] = program
    return program(*leaves)


def _load(path: Path) -> Callable | None:
    """The stored program, or None when the file cannot be read back (it is then written anew)."""
    try:
        payload, out_tree = pickle.loads(path.read_bytes())
        exported = jax.export.deserialize(payload)
    except Exception:  # a file from another JAX build or damaged: export again rather than fail the cycle
        return None
    return _program(exported, out_tree)


def _export(path: Path, fn: Callable, in_tree, leaves: list) -> Callable:
    from twin.observations import atomic_write
    out_tree_box = []

    def flat(*flat_leaves):
        out = fn(*jax.tree_util.tree_unflatten(in_tree, flat_leaves))
        out_leaves, out_tree = jax.tree_util.tree_flatten(out)
        out_tree_box.append(out_tree)
        return out_leaves

    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    exported = jax.export.export(jax.jit(flat))(*shapes)
    out_tree = out_tree_box[-1]
    payload = pickle.dumps((exported.serialize(), out_tree))
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))
    return _program(exported, out_tree)


def _program(exported, out_tree) -> Callable:
    """The exported program as a function of the flat argument leaves, returning the output pytree."""
    call = jax.jit(exported.call)
    return lambda *leaves: jax.tree_util.tree_unflatten(out_tree, call(*leaves))

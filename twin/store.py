"""The operational twin's persistent store: a folder whose consistent state is named by ``manifest.json``.

Layout (DESIGN section 7)::

    STORE/manifest.json          the one file that says what the store is; written last, atomically
    STORE/config.yaml            the resolved config (source paths absolute)
    STORE/emulator-<v>/          emulator checkpoints (a refit adds a version)
    STORE/state-<seq>.npz        ensemble members, adaptive inflation, cycles done
    STORE/ledger-<seq>.npz       every observation ingested, native flag, QC, disposition, twin check
    STORE/history-<seq>.npz      per cycle: analysis mean and sd, forcing, diagnostics
    STORE/alerts-<seq>.json      alert evaluations, every cycle's
    STORE/products/              forecasts (CF NetCDF) and plots, named by analysis time
    STORE/experiment/            a twin experiment's synthetic files (stores made from one)
    STORE/jax-cache/             compiled XLA programs reused by the next cycle's process
    STORE/programs/              exported cycle and forecast programs (twin.programs: no tracing per process)
    STORE/.lock                  held by the cycle that is running

A cycle never rewrites a file the manifest names: it writes new ``<seq>`` files (each atomically: temporary
file, fsync, rename), then the manifest. A cycle killed at any point leaves the previous manifest and its
files intact; the next cycle deletes the orphans (:meth:`Store.collect_garbage`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from twin.errors import InputError
from twin.observations import atomic_write

MANIFEST = "manifest.json"
STORE_FORMAT = 1


class StoreBusy(RuntimeError):
    """Another process holds the store's lock past the timeout."""


class StoreError(RuntimeError):
    """The store is missing, incomplete or inconsistent."""


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content: new data are recognised by content, not by name."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Store:
    """A twin store folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # --- manifest -------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise StoreError(f"{self.root}: not a twin store (no {MANIFEST}); create one with 'twin init'")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StoreError(f"{self.manifest_path}: unreadable manifest ({err})") from err
        if manifest.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.manifest_path}: store format {manifest.get('format')!r}, "
                             f"this twin reads format {STORE_FORMAT}")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest = {**manifest, "format": STORE_FORMAT}
        text = json.dumps(manifest, indent=2, sort_keys=True)
        atomic_write(self.manifest_path, lambda tmp: tmp.write_text(text))

    def path(self, name: str) -> Path:
        return self.root / name

    # --- versioned files ------------------------------------------------------------------------------
    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> str:
        def write(tmp: Path):
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        atomic_write(self.path(name), write)
        return name

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path(name), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise StoreError(f"{self.path(name)}: unreadable ({err})") from err

    def save_json(self, name: str, value: Any) -> str:
        text = json.dumps(value, indent=1, default=_json_default)
        atomic_write(self.path(name), lambda tmp: tmp.write_text(text))
        return name

    def load_json(self, name: str) -> Any:
        try:
            return json.loads(self.path(name).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StoreError(f"{self.path(name)}: unreadable ({err})") from err

    def referenced(self, manifest: dict[str, Any]) -> set[str]:
        """Top-level names the manifest keeps alive."""
        names = {MANIFEST, "config.yaml", "products", ".lock", "experiment", "jax-cache", "programs"}
        for value in manifest.get("files", {}).values():
            names.add(Path(value).parts[0])
        return names

    def collect_garbage(self, manifest: dict[str, Any]) -> list[str]:
        """Delete what an interrupted cycle left behind (files the manifest does not name)."""
        import shutil
        keep = self.referenced(manifest)
        removed = []
        for entry in self.root.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        return removed

    def check(self) -> list[str]:
        """Problems of the store (empty: healthy): the manifest and every file it names readable."""
        problems = []
        try:
            manifest = self.manifest()
        except StoreError as err:
            return [str(err)]
        for role, name in manifest.get("files", {}).items():
            if not self.path(name).exists():
                problems.append(f"{role}: {name} is missing")
        return problems

    # --- lock -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout_s: float = 60.0, poll_s: float = 0.2):
        """Exclusive lock on the store; waits up to ``timeout_s`` then raises :class:`StoreBusy`."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                        raise StoreBusy(f"{self.root}: a cycle is already running (pid {holder}); waited "
                                        f"{timeout_s:.0f} s for its lock, giving up") from None
                    time.sleep(poll_s)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield self
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.datetime64,)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def require_store(path: str | Path) -> Store:
    store = Store(path)
    if not store.exists():
        raise InputError(path, "not a twin store (no manifest.json); create one with 'twin init STORE --config'")
    return store

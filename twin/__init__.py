"""Coastal twin: orchestration and I/O (ingest, qc, forcing, store, cycles, experiments, report, CLI)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("coastal-twin")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

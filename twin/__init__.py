"""Coastal twin: orchestration and I/O (ingest, qc, forcing, store, cycles, experiments, report, CLI)."""
import os
from importlib.metadata import PackageNotFoundError, version

# jaxlib's LAPACK (the filters' eigh) runs through OpenBLAS, whose threads fight XLA's inside a compiled
# cycle loop on few cores (bench/hindcast.py measured 3 to 8 times slower cycles at 64 members on 2 cores).
# One OpenBLAS thread unless the user chose otherwise; effective when twin is imported before numpy (the CLI).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    __version__ = version("coastal-twin")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

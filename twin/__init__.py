"""Coastal twin: orchestration and I/O (ingest, qc, forcing, store, cycles, experiments, report, CLI)."""
import os
from importlib.metadata import PackageNotFoundError, version

# jaxlib's LAPACK (the filters' eigh) runs through OpenBLAS, whose threads fight XLA's inside a compiled
# cycle loop on few cores (bench/hindcast.py measured 3 to 8 times slower cycles at 64 members on 2 cores).
# One OpenBLAS thread unless the user chose otherwise; effective when twin is imported before numpy (the CLI).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def prefer_wide_vectors(environ=os.environ, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """On a CPU with AVX-512, ask XLA:CPU for 512-bit vectors in ``environ["XLA_FLAGS"]``, unless it already says;
    True when the flag was added.

    XLA emits 256-bit code by default (wide vectors slowed the clock of older Xeons); here the twin's cycle, small
    fused loops around the emulator's matrix products, ran 15-25 % faster with 512 (bench/hindcast.py, 2-core
    Xeon with AVX-512: 150-160 against 180-190 us a cycle). Like the line above, effective when twin is imported
    before JAX starts its CPU backend.
    """
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_prefer_vector_width" in flags:
        return False
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as lines:
            wide = any(line.startswith("flags") and "avx512f" in line.split() for line in lines)
    except OSError:  # not Linux: leave XLA's default
        return False
    if wide:
        environ["XLA_FLAGS"] = f"{flags} --xla_cpu_prefer_vector_width=512".strip()
    return wide


prefer_wide_vectors()

try:
    __version__ = version("coastal-twin")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

"""Readers: every native format into the canonical observation table (twin.observations).

Each reader module exposes ``read(path, **options) -> xr.Dataset`` (a canonical table) and
``sniff(path) -> bool`` (cheap check of the first lines, used when no format is given).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal, get_args

import xarray as xr

from twin.errors import InputError

ReaderFormat = Literal["somlit", "coasthf", "oceansites", "swmp", "csv", "gridded"]
_MODULES: dict[str, str] = {
    "somlit": "twin.readers.somlit",
    "coasthf": "twin.readers.coasthf",
    "oceansites": "twin.readers.oceansites",
    "swmp": "twin.readers.swmp",
    "csv": "twin.readers.generic_csv",
    "gridded": "twin.readers.gridded",
}
# Order in which formats are tried by detect_format: the most specific first.
_SNIFF_ORDER = ("somlit", "coasthf", "swmp", "oceansites", "gridded")


def reader_module(fmt: str):
    if fmt not in _MODULES:
        raise ValueError(f"unknown format {fmt!r}; valid: {list(get_args(ReaderFormat))}")
    return importlib.import_module(_MODULES[fmt])


def detect_format(path: str | Path) -> str:
    """Name of the first reader whose ``sniff`` accepts the file; InputError when none does."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    for fmt in _SNIFF_ORDER:
        try:
            if reader_module(fmt).sniff(path):
                return fmt
        except (ImportError, AttributeError):
            continue
    raise InputError(path, "format not recognised; pass --format "
                     f"({'|'.join(get_args(ReaderFormat))}) and, for generic CSV, --mapping FILE")


def read_observations(path: str | Path, fmt: str | None = None, **options) -> xr.Dataset:
    """Read one file of any supported format into the canonical observation table."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    fmt = fmt or detect_format(path)
    return reader_module(fmt).read(path, **options)

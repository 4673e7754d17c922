"""Pieces every reader needs: the error-sd table, decoding a text file, the unit converter of a NetCDF
variable. One implementation each, so that every reader answers bad input the same way."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from twin.errors import InputError
from twin.units import CANONICAL_UNITS, DEFAULT_ERROR_SD, converter


def error_sd_table(error_sd: Mapping[str, float] | None) -> dict[str, float]:
    """DEFAULT_ERROR_SD updated with a reader's ``error_sd`` option.

    Raises:
        ValueError: a key that is not a canonical variable, or a value that is not positive and finite.
    """
    table = dict(DEFAULT_ERROR_SD)
    overrides = dict(error_sd or {})
    unknown = sorted(set(overrides) - set(CANONICAL_UNITS))
    if unknown:
        raise ValueError("error_sd: unknown variables: " + ", ".join(f"unknown variable {k!r}" for k in unknown)
                         + f"; valid: {sorted(CANONICAL_UNITS)}")
    for key, value in overrides.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"error_sd[{key!r}] must be a positive number, got {value!r}")
        table[key] = float(value)
    return table


def decode_text(data: bytes) -> str:
    """UTF-8, else Windows-1252 (French Windows exports: µ, ‰, °), else Latin-1 (never fails)."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def read_text_lines(path: Path, expected: str) -> list[str]:
    """The lines of a text file (BOM dropped); InputError naming ``expected`` when it is empty."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc.strerror or exc})") from None
    text = decode_text(data).lstrip("\ufeff")
    if not text.strip():
        raise InputError(path, f"empty file: expected {expected}")
    return text.splitlines()


def variable_converter(path, attrs: Mapping, variable: str, name: str):
    """Converter to canonical units from a NetCDF variable's ``units`` attribute (InputError naming it)."""
    unit = attrs.get("units")
    if unit is None:
        raise InputError(path, "variable has no 'units' attribute", field=name)
    try:
        return converter(variable, str(unit))
    except ValueError as exc:
        raise InputError(path, str(exc), field=name) from None

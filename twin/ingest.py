"""Ingestion: every source a config names, read into one canonical observation table."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import xarray as xr

from twin.config import SourceConfig, TwinConfig
from twin.errors import InputError
from twin.observations import (OBS_DIM, concat_observations, flag_duplicates, sort_observations)
from twin.readers import detect_format, read_observations


def expand_paths(pattern: str) -> list[Path]:
    """Files named by a path or glob; InputError when nothing matches."""
    if any(ch in pattern for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        if not found:
            raise InputError(pattern, "no file matches this pattern")
        return found
    path = Path(pattern)
    if not path.exists():
        raise InputError(path, "no such file")
    return [path]


def config_source_of(path: str | Path, sources) -> SourceConfig | None:
    """The config source a file belongs to: the one whose path or glob it matches, else the first whose file
    name pattern its name matches (a file given to ``twin cycle --data`` like the configured ones); None."""
    import fnmatch
    path = Path(path)
    for source in sources:
        if fnmatch.fnmatch(str(path.resolve()), source.path) or fnmatch.fnmatch(str(path), source.path) \
                or Path(source.path).resolve() == path.resolve():
            return source
    for source in sources:
        if fnmatch.fnmatch(path.name, Path(source.path).name):
            return source
    return None


def sensor_of_rows(table: xr.Dataset, sources) -> np.ndarray:
    """(n_rows,) the ``name`` of the source with ``offsets`` each row's file belongs to
    (:func:`config_source_of`), "" for the others."""
    files = table["source"].values.astype(str)
    out = np.full(files.shape, "", dtype=object)
    if any(s.offsets for s in sources):
        for f in np.unique(files):
            source = config_source_of(f, sources)
            if source is not None and source.offsets:
                out[files == f] = source.name
    return out.astype(str)


def reader_options(source: SourceConfig, fmt: str, config: TwinConfig | None = None) -> dict:
    """Options of the reader for ``fmt`` taken from a source entry."""
    options: dict = {}
    if source.error_sd:
        options["error_sd"] = dict(source.error_sd)
    if fmt == "coasthf" and source.fluorescence_calibration:
        options["fluorescence_calibration"] = dict(source.fluorescence_calibration)
    if fmt == "swmp" and source.utc_offset_hours is not None:
        options["utc_offset_hours"] = source.utc_offset_hours
    if fmt == "csv":
        options["mapping"] = source.mapping
    if fmt == "gridded":
        if config is None or not config.sites:
            raise InputError(source.path, "a gridded source needs the config's sites (name, latitude, longitude)")
        options["sites"] = {s.name: (s.latitude, s.longitude) for s in config.sites}
        if source.radius_km is not None:
            options["radius_km"] = source.radius_km
    return options


def with_relative_error(table: xr.Dataset, relative_error) -> xr.Dataset:
    """``error_sd`` of each row of a variable in ``relative_error`` raised to hypot(error_sd, fraction *
    |value|): the reader's error is the analytical one, the fraction the patchiness a bottle samples, which
    grows with the value. Without it a fixed error of 0.3 mmol m-3 makes a summer nitrate of 0.05 worth
    almost nothing in log space (lognormal sd 1.9), and the ensemble's log spread grows unchecked."""
    if not relative_error:
        return table
    error = table["error_sd"].values.astype(np.float64).copy()
    value = np.abs(table["value"].values.astype(np.float64))
    variable = table["variable"].values.astype(str)
    for name, fraction in relative_error.items():
        rows = (variable == name) & np.isfinite(value)
        error[rows] = np.hypot(error[rows], fraction * value[rows])
    return table.assign(error_sd=(OBS_DIM, error, table["error_sd"].attrs))


def read_source_file(path: str | Path, source: SourceConfig, config: TwinConfig | None = None,
                     fmt: str | None = None) -> xr.Dataset:
    """One file of a source, read with the source's options and errors, filtered to its sites."""
    fmt = fmt or source.format or detect_format(path)
    table = read_observations(path, fmt, **reader_options(source, fmt, config))
    table = with_relative_error(table, source.relative_error)
    if source.sites is not None:
        keep = np.isin(table["site"].values.astype(str), list(source.sites))
        table = table.isel({OBS_DIM: np.flatnonzero(keep)})
    return table


def read_source(source: SourceConfig, config: TwinConfig | None = None) -> xr.Dataset:
    """All files of one source, filtered to its sites."""
    return concat_observations([read_source_file(path, source, config) for path in expand_paths(source.path)])


def canonical_site_names(table: xr.Dataset, config: TwinConfig) -> xr.Dataset:
    """Rename site aliases (another source's id for the same station) to the config's site name."""
    alias = {a: s.name for s in config.sites for a in s.aliases}
    if not alias:
        return table
    sites = np.array([alias.get(s, s) for s in table["site"].values.astype(str)], dtype=object)
    return table.assign(site=(OBS_DIM, sites))


def ingest(config: TwinConfig) -> xr.Dataset:
    """Read every source of ``config`` into one sorted table; duplicates across files are flagged."""
    tables = [read_source(s, config) for s in config.sources]
    table = canonical_site_names(concat_observations(tables), config)
    return sort_observations(flag_duplicates(table))


def read_paths(paths: list[str], fmt: str | None = None, **options) -> xr.Dataset:
    """Read data files given on the command line into one sorted table."""
    tables = []
    for p in paths:
        for path in expand_paths(p):
            tables.append(read_observations(path, fmt or detect_format(path), **options))
    return sort_observations(flag_duplicates(concat_observations(tables)))

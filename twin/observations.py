"""The canonical observation table (DESIGN section 3).

Every reader returns one xarray Dataset along the ``obs`` dimension with the fields below; nothing
downstream reads a native file. Missing values are kept as rows (qc 9) so that nothing ingested is lost.

| field        | dtype          | meaning                                                            |
|--------------|----------------|--------------------------------------------------------------------|
| time         | datetime64[ns] | UTC                                                                |
| site         | str            | station id as written in the source (e.g. "Point B")               |
| depth        | float64        | metres, positive down; NaN when only a layer is known              |
| layer        | str            | "surface", "intermediate", "bottom", "air" or "" (unknown)         |
| layer_code   | str            | the layer as the source writes it ("S", "F", "LEVEL1"), or ""      |
| variable     | str            | canonical name (twin.units.CANONICAL_UNITS)                        |
| value        | float64        | canonical units; NaN when missing                                  |
| error_sd     | float64        | observation error standard deviation, canonical units              |
| qc           | int8           | QARTOD: 1 good, 2 not evaluated, 3 suspect, 4 bad, 9 missing       |
| native_qc    | str            | the flag exactly as delivered                                      |
| censored     | bool           | below detection limit: value is an upper bound                     |
| source       | str            | file the row came from                                             |
| line         | int64          | 1-based line in that file (-1 for binary sources)                  |
| latitude     | float64        | degrees north (NaN when unknown)                                   |
| longitude    | float64        | degrees east (NaN when unknown)                                    |
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from twin import flags
from twin.units import CANONICAL_UNITS, CF_STANDARD_NAMES

OBS_DIM = "obs"
LAYERS = ("surface", "intermediate", "bottom", "air", "")

_FIELDS: dict[str, type | str] = {
    "time": "datetime64[ns]",
    "site": str,
    "depth": np.float64,
    "layer": str,
    "layer_code": str,
    "variable": str,
    "value": np.float64,
    "error_sd": np.float64,
    "qc": np.int8,
    "native_qc": str,
    "censored": bool,
    "source": str,
    "line": np.int64,
    "latitude": np.float64,
    "longitude": np.float64,
}
REQUIRED_FIELDS = ("time", "site", "variable", "value", "qc", "native_qc", "source")
_DEFAULTS = {"depth": np.nan, "layer": "", "layer_code": "", "error_sd": np.nan, "censored": False,
             "line": -1, "latitude": np.nan, "longitude": np.nan}


def _column(name: str, values, n: int) -> np.ndarray:
    dtype = _FIELDS[name]
    if dtype is str:
        if np.ndim(values) == 0:
            return np.full(n, "" if values is None else str(values), dtype=object)
        arr = np.asarray(values)
        if arr.dtype.kind != "U":  # objects or bytes: None becomes "", the rest their text
            arr = np.asarray(values, dtype=object)
            arr = np.where(pd.isna(arr), "", arr).astype(str)
        return arr.astype(object)
    if np.ndim(values) == 0:
        return np.full(n, values).astype(dtype)
    return np.asarray(values).astype(dtype, copy=False)


def make_observations(**columns) -> xr.Dataset:
    """Build a canonical observation table from equal-length columns.

    Required: time, site, variable, value, qc, native_qc, source. Optional columns take their
    defaults (depth NaN, layer "", error_sd NaN, censored False, line -1, latitude/longitude NaN);
    a scalar is broadcast to every row.

    Raises:
        ValueError: unknown or missing field, unequal lengths, non-canonical variable, qc outside the
            QARTOD scale, or a non-finite value flagged anything but missing.
    """
    unknown = set(columns) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown observation fields {sorted(unknown)}; valid: {list(_FIELDS)}")
    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        raise ValueError(f"missing observation fields {missing}")
    lengths = {k: len(v) for k, v in columns.items() if np.ndim(v) > 0}
    n = max(lengths.values(), default=0)
    if any(v != n for v in lengths.values()):
        raise ValueError(f"observation columns have different lengths: {lengths}")
    data = {}
    for name in _FIELDS:
        values = columns.get(name, _DEFAULTS.get(name))
        data[name] = _column(name, values, n)
    ds = xr.Dataset({k: (OBS_DIM, v) for k, v in data.items() if k != "time"},
                    coords={"time": (OBS_DIM, data["time"])})
    validate(ds)
    return ds


def validate(ds: xr.Dataset) -> None:
    """Check the invariants of a canonical table; raise ValueError naming the broken one."""
    for name in _FIELDS:
        if name not in ds.variables:
            raise ValueError(f"observation table lacks field {name!r}")
    # pd.unique hashes: an object-array sort (np.unique) dominates reading a 600k-row file.
    bad_vars = sorted(set(pd.unique(ds["variable"].values)) - set(CANONICAL_UNITS))
    if bad_vars:
        raise ValueError(f"non-canonical variables {bad_vars}; valid: {sorted(CANONICAL_UNITS)}")
    qc = ds["qc"].values
    bad_qc = sorted(set(pd.unique(qc).tolist()) - set(flags.QARTOD_NAMES))
    if bad_qc:
        raise ValueError(f"qc values {bad_qc} are not on the QARTOD scale {sorted(flags.QARTOD_NAMES)}")
    value = ds["value"].values
    leak = ~np.isfinite(value) & (qc != flags.MISSING)
    if leak.any():
        i = int(np.argmax(leak))
        raise ValueError(f"observation {i} ({ds['variable'].values[i]} from {ds['source'].values[i]}) "
                         "has a non-finite value but is not flagged missing")
    bad_layers = sorted(set(pd.unique(ds["layer"].values)) - set(LAYERS))
    if bad_layers:
        raise ValueError(f"unknown layers {bad_layers}; valid: {list(LAYERS)}")


def empty_observations() -> xr.Dataset:
    """A canonical table with no rows."""
    return make_observations(time=np.array([], "datetime64[ns]"), site=[], variable=[], value=[],
                             qc=np.array([], np.int8), native_qc=[], source=[])


def concat_observations(tables: list[xr.Dataset]) -> xr.Dataset:
    """Concatenate canonical tables along ``obs`` (an empty list gives an empty table)."""
    tables = [t for t in tables if t.sizes.get(OBS_DIM, 0) > 0]
    if not tables:
        return empty_observations()
    return xr.concat(tables, dim=OBS_DIM, data_vars="all", coords="all", compat="equals", join="exact")


def sort_observations(ds: xr.Dataset) -> xr.Dataset:
    """Stable sort by time, then site, variable, depth (the order every product uses)."""
    keys = (ds["depth"].values, ds["variable"].values.astype(str), ds["site"].values.astype(str),
            ds["time"].values)
    order = np.lexsort(keys)
    return ds.isel({OBS_DIM: order})


def mark_duplicates(ds: xr.Dataset) -> np.ndarray:
    """Boolean mask of rows that repeat (site, layer, depth, variable, time) of an earlier good row.

    Policy (documented in README): replicates and duplicated timestamps are all kept in the table;
    the first usable row of a group is assimilated and later ones are flagged suspect by
    ``flag_duplicates``, so a replicate never enters the filter twice with independent errors.
    """
    n = ds.sizes[OBS_DIM]
    usable = np.isin(ds["qc"].values, flags.USABLE_QC)
    dup = np.zeros(n, bool)
    if not usable.any():
        return dup
    keys = pd.DataFrame({
        "site": ds["site"].values[usable], "layer": ds["layer"].values[usable],
        "depth": np.nan_to_num(ds["depth"].values[usable], nan=-1.0),
        "variable": ds["variable"].values[usable], "time": ds["time"].values[usable],
    })
    dup[usable] = keys.duplicated(keep="first").to_numpy()
    return dup


def flag_duplicates(ds: xr.Dataset) -> xr.Dataset:
    """Flag later duplicates of a usable observation as suspect (keeps them, see ``mark_duplicates``)."""
    dup = mark_duplicates(ds)
    if not dup.any():
        return ds
    qc = ds["qc"].values.copy()
    qc[dup] = flags.SUSPECT
    return ds.assign(qc=(OBS_DIM, qc))


def _cf_attrs(ds: xr.Dataset) -> xr.Dataset:
    out = ds.copy()
    out["time"].attrs.update(standard_name="time", axis="T")
    out["value"].attrs.update(long_name="observed value in the canonical unit of its variable",
                              ancillary_variables="qc native_qc error_sd censored")
    out["qc"].attrs.update(long_name="QARTOD quality flag", flag_values=np.array([1, 2, 3, 4, 9], np.int8),
                           flag_meanings="good not_evaluated suspect bad missing",
                           standard_name="aggregate_quality_flag")
    out["depth"].attrs.update(standard_name="depth", units="m", positive="down")
    out["latitude"].attrs.update(standard_name="latitude", units="degrees_north")
    out["longitude"].attrs.update(standard_name="longitude", units="degrees_east")
    out["error_sd"].attrs.update(long_name="observation error standard deviation, canonical units")
    out.attrs.setdefault("Conventions", "CF-1.10")
    out.attrs.setdefault("featureType", "timeSeries")
    out.attrs["canonical_units"] = "; ".join(f"{k}: {v}" for k, v in CANONICAL_UNITS.items())
    out.attrs["standard_names"] = "; ".join(f"{k}: {v}" for k, v in CF_STANDARD_NAMES.items())
    return out


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``, so no reader sees a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a product is as readable as any file
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_netcdf(ds: xr.Dataset, path: str | Path, encoding: dict | None = None) -> Path:
    """Write ``ds`` as NetCDF-4 atomically (``atomic_write``).

    Goes through xarray's netCDF4 store with a lock of its own: ``Dataset.to_netcdf`` asks dask which
    scheduler is running before every write, which imports dask.distributed (0.3 s of a 5 s operational
    cycle). Our datasets are in memory, so that question has no use here."""
    import threading

    from xarray.backends import NetCDF4DataStore

    def write(tmp: Path) -> None:
        store = NetCDF4DataStore.open(str(tmp), mode="w", format="NETCDF4", lock=threading.Lock())
        try:
            ds.dump_to_store(store, encoding=encoding or {})
        finally:
            store.close()
    return atomic_write(path, write)


def to_netcdf(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a canonical table as CF NetCDF (atomically)."""
    validate(ds)
    out = _cf_attrs(ds)
    for name, dt in _FIELDS.items():  # netCDF4 needs numpy unicode (not object) arrays when empty
        if dt is str:
            out[name] = out[name].astype(np.str_) if out.sizes[OBS_DIM] == 0 else out[name]
    encoding = {name: {"dtype": str} for name, dt in _FIELDS.items() if dt is str}
    encoding["time"] = {"units": "nanoseconds since 1970-01-01", "dtype": "int64"}
    return write_netcdf(out, path, encoding)


def from_netcdf(path: str | Path) -> xr.Dataset:
    """Read a canonical table written by ``to_netcdf``; raises InputError for a corrupt file."""
    from twin.errors import InputError
    try:
        with xr.open_dataset(path, engine="netcdf4") as raw:
            ds = raw.load()
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable NetCDF observation table ({exc})") from None
    columns = {}
    for name in _FIELDS:
        if name not in ds.variables:
            raise InputError(path, "missing field of the canonical observation table", field=name)
        columns[name] = ds[name].values
    out = make_observations(**columns)
    extra = {k: v for k, v in ds.data_vars.items() if k not in _FIELDS}
    return out.assign(extra) if extra else out

"""Gridded products (satellite L3/L4 chlorophyll, model output) reduced to one value per site and time.

For each site of the ``sites`` option (name -> (latitude, longitude)), the grid cells whose centre lies
within ``radius_km`` (haversine, mean Earth radius 6371.0088 km) are the site's pixels. At every time:

* value: the median of the valid pixels (finite after ``_FillValue``/sentinel masking). For variables in
  ``log_variables`` (default: chlorophyll, whose satellite errors are multiplicative, roughly constant
  in log10 space) the median is taken of log10 values and transformed back, and pixels <= 0 are not valid;
* error_sd, in canonical linear units, in this order:
  1. the ``error_sd`` option for the variable: that constant;
  2. the product's own uncertainty variable (``<VAR>_uncertainty``, ``_error``, ``_stddev``, ``_std``,
     ``_err`` or one named in ``ancillary_variables``): the median of the valid pixels' errors. A relative
     uncertainty (units "%" or "percent", e.g. CMEMS ``CHL_uncertainty``) gives ``value * median / 100``,
     the first-order (delta-method) linear sd of a multiplicative error; an absolute one is converted with
     the variable's unit;
  3. otherwise the spread of the pixels: the standard deviation (ddof=1), in log10 space for log
     variables (``value * ln(10) * sd_log10``);
  and never less than the floor: ``min_relative_error * value`` (default 10 %) for log variables,
  ``twin.units.DEFAULT_ERROR_SD[variable]`` otherwise;
* qc: 2 (not evaluated: the product's own masks were applied by its producer, nothing was checked here);
  no valid pixel -> value NaN, qc 9;
* native_qc: ``"n=<valid>/<pixels in radius>"`` so the support of every value is kept.

A site with no grid cell within the radius is an InputError naming it (wrong coordinates or product), as
is a product without a recognised variable, an unknown unit or a corrupted file. The grid is subset to
the sites' bounding box before any data is loaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from twin import flags
from twin.errors import InputError
from twin.geodesy import haversine_km
from twin.observations import LAYERS, sort_observations
from twin.observations import flag_duplicates, make_observations
from twin.readers._common import variable_converter
from twin.readers.oceansites import STANDARD_NAMES, _find_time, open_netcdf
from twin.units import CANONICAL_UNITS, DEFAULT_ERROR_SD, converter

GRIDDED_NAMES: dict[str, str] = {
    "chl": "chlorophyll", "chlor_a": "chlorophyll", "chla": "chlorophyll", "chl_oc5": "chlorophyll",
    "chl_oc4me": "chlorophyll", "analysed_sst": "temperature", "sst": "temperature",
    "thetao": "temperature", "temp": "temperature", "so": "salinity", "salt": "salinity",
    "o2": "oxygen", "no3": "nitrate", "po4": "phosphate", "si": "silicate", "nh4": "ammonium",
    "spm": "spm", "tur": "turbidity", "par": "par",
}
_UNCERTAINTY_SUFFIXES = ("_uncertainty", "_error", "_stddev", "_std", "_err")
_LAT_NAMES = ("lat", "latitude", "nav_lat")
_LON_NAMES = ("lon", "longitude", "nav_lon")
DEFAULT_SENTINELS = (-999.0, -9999.0, 99999.0, -99999.0, 999999.0, 9.96921e36)


def _coord(ds: xr.Dataset, names: tuple[str, ...], standard_name: str) -> str | None:
    for name, var in ds.variables.items():
        if var.attrs.get("standard_name") == standard_name:
            return str(name)
    lower = {str(k).lower(): str(k) for k in ds.variables}
    return next((lower[n] for n in names if n in lower), None)


def sniff(path: str | Path) -> bool:
    """A NetCDF file with a time axis and a latitude-longitude grid (both larger than one)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF"):
                return False
        with xr.open_dataset(path, decode_times=False) as ds:
            lat, lon = _coord(ds, _LAT_NAMES, "latitude"), _coord(ds, _LON_NAMES, "longitude")
            return (_find_time(ds) is not None and lat is not None and lon is not None
                    and ds[lat].size > 1 and ds[lon].size > 1)
    except Exception:  # sniffing never raises
        return False


def _canonical(name: str, var: xr.DataArray) -> str | None:
    std = var.attrs.get("standard_name")
    if std in STANDARD_NAMES:
        return STANDARD_NAMES[std]
    return GRIDDED_NAMES.get(name.lower())


def _uncertainty(ds: xr.Dataset, name: str) -> str | None:
    lower = {str(k).lower(): str(k) for k in ds.data_vars}
    for cand in str(ds[name].attrs.get("ancillary_variables", "")).split():
        if cand in ds.variables and any(s in cand.lower() for s in _UNCERTAINTY_SUFFIXES):
            return cand
    for suffix in _UNCERTAINTY_SUFFIXES:
        if (name + suffix).lower() in lower:
            return lower[(name + suffix).lower()]
    return None


def read(path: str | Path, *, sites: dict[str, tuple[float, float]], radius_km: float = 5.0,
         variables: dict[str, str] | None = None, error_sd: dict[str, float] | None = None,
         log_variables: tuple[str, ...] = ("chlorophyll",), min_relative_error: float = 0.1,
         layer: str = "surface", select: dict[str, int] | None = None,
         sentinels: tuple[float, ...] = DEFAULT_SENTINELS) -> xr.Dataset:
    """Reduce a gridded NetCDF product to one observation per site, variable and time.

    Args:
        path: NetCDF with dims (time, lat, lon) (1-D or 2-D latitude/longitude).
        sites: site name -> (latitude degrees north, longitude degrees east).
        radius_km: pixels whose centre is within this distance of the site are used.
        variables: native variable name -> canonical name; default: every variable recognised by
            standard_name or by ``GRIDDED_NAMES`` (CHL, chlor_a, thetao ...).
        error_sd: constant error sd per canonical variable, instead of the product uncertainty/spread.
        log_variables: variables reduced in log10 space (multiplicative errors).
        min_relative_error: error floor as a fraction of the value for log variables.
        layer: canonical layer of the product (``surface`` for ocean colour).
        select: index along extra dimensions (e.g. ``{"depth": 0}`` for the top model level).
        sentinels: values meaning missing even without ``_FillValue``.

    Raises:
        InputError: naming the file and the site or variable.
    """
    path = Path(path)
    if not sites:
        raise ValueError("sites: give at least one site as {name: (latitude, longitude)}")
    if not radius_km > 0:
        raise ValueError(f"radius_km must be positive, got {radius_km}")
    if layer not in LAYERS:
        raise ValueError(f"layer {layer!r} is not one of {list(LAYERS)}")
    for name, v in (error_sd or {}).items():
        if name not in CANONICAL_UNITS or not v > 0:
            raise ValueError(f"error_sd: {name!r}: expected a canonical variable and a positive sd, got {v!r}")
    with open_netcdf(path, load=False) as ds:
        return _read(path, ds, sites, radius_km, variables, error_sd, log_variables, min_relative_error, layer,
                     select, sentinels)


def _read(path, ds, sites, radius_km, variables, error_sd, log_variables, min_relative_error, layer, select,
          sentinels) -> xr.Dataset:
    time_name = _find_time(ds)
    lat_name, lon_name = _coord(ds, _LAT_NAMES, "latitude"), _coord(ds, _LON_NAMES, "longitude")
    for what, name in (("time", time_name), ("latitude", lat_name), ("longitude", lon_name)):
        if name is None:
            raise InputError(path, f"no {what} coordinate found", field=what)
    if not np.issubdtype(ds[time_name].dtype, np.datetime64):
        raise InputError(path, "time coordinate is not decodable as CF time", field=time_name)
    time_dim = ds[time_name].dims[0]
    lat, lon = ds[lat_name], ds[lon_name]
    grid_dims = tuple(dict.fromkeys(lat.dims + lon.dims))
    if lat.ndim == 1 and lon.ndim == 1:
        lat2, lon2 = np.meshgrid(lat.values.astype(float), lon.values.astype(float), indexing="ij")
    else:
        lat2, lon2 = lat.values.astype(float), lon.values.astype(float)

    if variables is None:
        chosen = {str(n): c for n, v in ds.data_vars.items() if (c := _canonical(str(n), v)) is not None
                  and time_dim in v.dims and set(grid_dims) <= set(v.dims)}
    else:
        missing = [n for n in variables if n not in ds.data_vars]
        if missing:
            raise InputError(path, f"variables {missing} not in the file; data variables: {list(ds.data_vars)}",
                             field=missing[0])
        bad = {n: c for n, c in variables.items() if c not in CANONICAL_UNITS}
        if bad:
            raise ValueError(f"variables: non-canonical names {bad}; valid: {sorted(CANONICAL_UNITS)}")
        chosen = dict(variables)
    if not chosen:
        raise InputError(path, "no recognised gridded variable (standard_name or CHL/chlor_a/...); pass "
                         f"variables={{native: canonical}}; data variables: {list(ds.data_vars)[:20]}")

    # pixels of every site, and one bounding window so that only it is loaded
    masks = {}
    for site, (slat, slon) in sites.items():
        dist = haversine_km(slat, slon, lat2, lon2)
        mask = dist <= radius_km
        if not mask.any():
            raise InputError(path, f"site {site!r} ({slat}, {slon}) has no grid cell within {radius_km} km "
                             f"(nearest {np.nanmin(dist):.1f} km)", field="sites")
        masks[site] = mask
    union = np.logical_or.reduce(list(masks.values()))
    rows_idx, cols_idx = np.nonzero(union)
    window = (slice(rows_idx.min(), rows_idx.max() + 1), slice(cols_idx.min(), cols_idx.max() + 1))
    masks = {s: m[window] for s, m in masks.items()}
    if lat.ndim == 1 and lon.ndim == 1:
        isel = {lat.dims[0]: window[0], lon.dims[0]: window[1]}
    else:
        isel = {grid_dims[0]: window[0], grid_dims[1]: window[1]}

    times = ds[time_name].values.astype("datetime64[ns]")
    sentinel_arr = np.asarray(sentinels, dtype=float)
    parts = []
    for name, variable in chosen.items():
        var = ds[name]
        convert = variable_converter(path, var.attrs, variable, name)
        unit = var.attrs["units"]
        cube = _load(path, var, time_dim, grid_dims, isel, select, sentinel_arr)
        cube = convert(cube)
        unc_name = _uncertainty(ds, name)
        unc, relative = None, False
        if unc_name is not None and variable not in (error_sd or {}):
            unc_unit = str(ds[unc_name].attrs.get("units", unit)).strip().lower()
            relative = unc_unit in ("%", "percent")
            unc = _load(path, ds[unc_name], time_dim, grid_dims, isel, select, sentinel_arr)
            if not relative:
                try:
                    to_canonical = converter(variable, unc_unit)
                    unc = to_canonical(unc) - to_canonical(0.0)  # an error scales, never shifts (K -> degC)
                except ValueError as exc:
                    raise InputError(path, f"uncertainty: {exc}", field=unc_name) from None
        log = variable in log_variables
        for site, mask in masks.items():
            pix = cube[:, mask]  # (time, pixels)
            valid = np.isfinite(pix) & ((pix > 0) if log else True)
            n_valid = valid.sum(axis=1)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN times: handled as missing rows
                if log:
                    logs = np.where(valid, np.log10(np.where(valid, pix, 1.0)), np.nan)
                    med = np.nanmedian(logs, axis=1)
                    value = 10.0 ** med
                    spread = value * np.log(10.0) * np.nanstd(logs, axis=1, ddof=1)
                    floor = min_relative_error * value
                else:
                    vals = np.where(valid, pix, np.nan)
                    value = np.nanmedian(vals, axis=1)
                    spread = np.nanstd(vals, axis=1, ddof=1)
                    floor = np.full(value.shape, DEFAULT_ERROR_SD[variable])
                if error_sd and variable in error_sd:
                    sd = np.full(value.shape, float(error_sd[variable]))
                else:
                    if unc is not None:
                        u = np.where(valid, unc[:, mask], np.nan)
                        med_u = np.nanmedian(u, axis=1)
                        estimate = value * med_u / 100.0 if relative else med_u
                    else:
                        estimate = spread
                    sd = np.fmax(np.nan_to_num(estimate, nan=0.0), floor)
            has = n_valid > 0
            n_pix = int(mask.sum())
            parts.append(dict(
                time=times, site=np.full(times.size, site, dtype=object),
                variable=np.full(times.size, variable, dtype=object),
                value=np.where(has, value, np.nan),
                error_sd=np.where(has, sd, np.nan),
                qc=np.where(has, flags.NOT_EVALUATED, flags.MISSING).astype(np.int8),
                native_qc=np.array([f"n={k}/{n_pix}" for k in n_valid.tolist()], dtype=object),
                latitude=np.full(times.size, float(sites[site][0])),
                longitude=np.full(times.size, float(sites[site][1]))))
    columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    table = make_observations(**columns, layer=layer, layer_code="", source=str(path), line=-1)
    table = flag_duplicates(sort_observations(table))
    table.attrs.update(radius_km=float(radius_km), variables=", ".join(f"{k}: {v}" for k, v in chosen.items()),
                       time_reversals=int((np.diff(times.astype(np.int64)) < 0).sum()))
    return table


def _load(path, var: xr.DataArray, time_dim, grid_dims, isel, select, sentinels) -> np.ndarray:
    """Window of one variable as float (time, y, x); extra dims need ``select`` unless of size 1."""
    sub = var.isel({k: v for k, v in isel.items() if k in var.dims})
    extra = [d for d in sub.dims if d != time_dim and d not in grid_dims]
    pick = {}
    for d in extra:
        if select and d in select:
            pick[d] = select[d]
        elif sub.sizes[d] == 1:
            pick[d] = 0
        else:
            raise InputError(path, f"variable has extra dimension {d!r} of size {sub.sizes[d]}; choose a level "
                             f"with select={{{d!r}: index}}", field=str(var.name))
    sub = sub.isel(pick)
    if time_dim not in sub.dims:
        raise InputError(path, f"variable has no time dimension {time_dim!r}", field=str(var.name))
    try:
        data = np.asarray(sub.transpose(time_dim, *grid_dims).values, dtype=float)
    except Exception as exc:  # damaged chunks surface only when read
        raise InputError(path, f"corrupted data in variable: {type(exc).__name__}: {exc}",
                         field=str(var.name)) from None
    if sentinels.size:
        data = np.where(np.isin(data, sentinels) | (np.abs(data) > 9e36), np.nan, data)
    return data

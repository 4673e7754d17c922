"""OceanSITES / CF NetCDF time series (moorings, COAST-HF NetCDF) into the canonical observation table.

What is read:

* time: the ``TIME`` variable, or the variable with ``standard_name = time`` / ``axis = T`` (decoded by
  xarray from its CF ``units``; an undecodable time is an InputError naming it);
* depth: ``DEPTH`` (or ``standard_name = depth``), metres; ``positive = "up"`` is turned to positive down;
  a depth dimension gives one row per (time, depth);
* variables: found by CF ``standard_name`` (``twin.units.CF_STANDARD_NAMES`` inverted, plus the per-mass
  and legacy names in ``EXTRA_STANDARD_NAMES``) or else by OceanSITES parameter code (``OCEANSITES_CODES``:
  TEMP, PSAL, DOX2, CPHL, NTRA ...). Data variables that are neither (and are not QC, coordinates or
  ancillary variables) are skipped and listed in ``attrs["skipped_variables"]``;
* units from each variable's ``units`` attribute through ``twin.units``; an unknown or absent unit is an
  InputError naming the variable;
* flags: ``<VAR>_QC`` (or the ``*_QC`` named in ``ancillary_variables``). Without ``flag_meanings`` the
  OceanSITES reference table (``twin.flags.OCEANSITES_FLAGS``) applies. With ``flag_meanings`` each value is
  mapped by its meaning name (``MEANINGS``: good_data, probably_good_data, bad_data, ...), which equals the
  reference table for a standard file and stays right for a file whose scale differs; an unknown meaning,
  or a flag value in the data that is not declared, is an InputError naming the QC variable.
  ``attrs["flag_scales"]`` says which rule each QC variable used;
* missing: ``_FillValue``/``missing_value`` (masked by xarray) and ``sentinels`` give value NaN, qc 9, the
  native flag kept;
* site: option ``site``, else global ``platform_code``, ``site_code``, else the file stem; latitude and
  longitude from ``LATITUDE``/``LONGITUDE`` (size 1) or the ``geospatial_lat_min``/``_lon_min`` attributes.

``line`` is -1 (binary source). Duplicated (site, depth, variable, time) are kept and the later ones flagged
suspect; the table is sorted by time; backward steps of the time axis are counted in
``attrs["time_reversals"]``. A file that cannot be opened as NetCDF is an InputError naming it, and so is
one without a single recognised variable or without any finite value.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from twin import flags
from twin.errors import InputError
from twin.observations import sort_observations
from twin.observations import flag_duplicates, make_observations
from twin.readers._common import error_sd_table, variable_converter
from twin.units import CF_STANDARD_NAMES

OCEANSITES_CODES: dict[str, str] = {
    "TEMP": "temperature", "PSAL": "salinity", "CNDC": "conductivity", "PRES": "pressure",
    "DOX1": "oxygen", "DOX2": "oxygen", "DOXY": "oxygen", "DOXY_SAT": "oxygen_saturation",
    "OSAT": "oxygen_saturation", "CPHL": "chlorophyll", "CHLT": "chlorophyll", "FLU2": "fluorescence",
    "NTRA": "nitrate", "NTRI": "nitrite", "NTRZ": "nitrate_nitrite", "AMON": "ammonium", "PHOS": "phosphate",
    "SLCA": "silicate", "TUR4": "turbidity", "TURB": "turbidity", "PHPH": "ph", "PH": "ph",
    "PAR": "par", "DOWN_PAR": "par", "PSAR": "par", "DRYT": "air_temperature", "ATMP": "air_pressure",
    "ATMS": "air_pressure", "RELH": "relative_humidity", "WSPD": "wind_speed", "WDIR": "wind_direction",
    "RAIN": "precipitation", "SLEV": "water_level",
}
EXTRA_STANDARD_NAMES: dict[str, str] = {
    "sea_water_salinity": "salinity",
    "moles_of_oxygen_per_unit_mass_in_sea_water": "oxygen",
    "mass_concentration_of_oxygen_in_sea_water": "oxygen",
    "volume_fraction_of_oxygen_in_sea_water": "oxygen",
    "mole_concentration_of_dissolved_molecular_oxygen_in_sea_water": "oxygen",
    "moles_of_nitrate_per_unit_mass_in_sea_water": "nitrate",
    "moles_of_nitrite_per_unit_mass_in_sea_water": "nitrite",
    "moles_of_phosphate_per_unit_mass_in_sea_water": "phosphate",
    "moles_of_silicate_per_unit_mass_in_sea_water": "silicate",
    "moles_of_ammonium_per_unit_mass_in_sea_water": "ammonium",
    "mass_concentration_of_chlorophyll_in_sea_water": "chlorophyll",
    "sea_water_pressure": "pressure",
    "sea_water_ph_reported_on_total_scale": "ph",
    "surface_downwelling_photosynthetic_photon_flux_in_air": "par",
    "relative_humidity": "relative_humidity",
    "sea_surface_height_above_sea_level": "water_level",
}
STANDARD_NAMES: dict[str, str] = {**{v: k for k, v in CF_STANDARD_NAMES.items()}, **EXTRA_STANDARD_NAMES}

# Flag meaning names (OceanSITES 1.4, Copernicus INS-TAC, CF-style variants) -> canonical meaning.
MEANINGS: dict[str, flags.FlagMeaning] = {
    "no_qc_performed": flags.FlagMeaning(flags.NOT_EVALUATED),
    "no_qc": flags.FlagMeaning(flags.NOT_EVALUATED),
    "not_evaluated": flags.FlagMeaning(flags.NOT_EVALUATED),
    "unknown": flags.FlagMeaning(flags.NOT_EVALUATED),
    "good_data": flags.FlagMeaning(flags.GOOD), "good": flags.FlagMeaning(flags.GOOD),
    "pass": flags.FlagMeaning(flags.GOOD),
    "probably_good_data": flags.FlagMeaning(flags.GOOD), "probably_good": flags.FlagMeaning(flags.GOOD),
    "bad_data_that_are_potentially_correctable": flags.FlagMeaning(flags.SUSPECT),
    "potentially_correctable_bad_data": flags.FlagMeaning(flags.SUSPECT),
    "probably_bad_data": flags.FlagMeaning(flags.SUSPECT), "suspect": flags.FlagMeaning(flags.SUSPECT),
    "suspect_or_of_high_interest": flags.FlagMeaning(flags.SUSPECT),
    "bad_data": flags.FlagMeaning(flags.BAD), "bad": flags.FlagMeaning(flags.BAD),
    "fail": flags.FlagMeaning(flags.BAD),
    "value_changed": flags.FlagMeaning(flags.GOOD), "changed_value": flags.FlagMeaning(flags.GOOD),
    "value_below_detection": flags.FlagMeaning(flags.GOOD, censored=True),
    "below_detection": flags.FlagMeaning(flags.GOOD, censored=True),
    "not_used": flags.FlagMeaning(flags.SUSPECT),
    "nominal_value": flags.FlagMeaning(flags.SUSPECT),
    "interpolated_value": flags.FlagMeaning(flags.SUSPECT),
    "missing_value": flags.FlagMeaning(flags.MISSING), "missing": flags.FlagMeaning(flags.MISSING),
    "missing_data": flags.FlagMeaning(flags.MISSING),
}
DEFAULT_SENTINELS = (99999.0, -99999.0, 999999.0, -999999.0, 1e6, 9.96921e36)
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF")
_ANCILLARY_SUFFIXES = ("_QC", "_DM", "_UNCERTAINTY", "_STD", "_MIN", "_MAX", "_N", "_ERR")


def open_netcdf(path: Path, load: bool = True) -> xr.Dataset:
    """Open a NetCDF file with xarray; InputError naming the file when it is missing, empty or damaged."""
    if not path.exists():
        raise InputError(path, "cannot read file: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic:
        raise InputError(path, "empty file: not a NetCDF file")
    if magic not in _NETCDF_MAGIC:
        raise InputError(path, f"not a NetCDF file (starts with {magic!r})")
    try:
        ds = xr.open_dataset(path, mask_and_scale=True, decode_times=True)
        if load:
            ds.load()
    except Exception as exc:  # netCDF4/h5py raise OSError, RuntimeError, ValueError... for a damaged file
        if "time" in str(exc).lower() and "decode" in str(exc).lower():
            raise InputError(path, f"time axis cannot be decoded: {exc}", field="TIME") from None
        raise InputError(path, f"corrupted or unreadable NetCDF: {type(exc).__name__}: {exc}") from None
    return ds


def sniff(path: str | Path) -> bool:
    """A NetCDF file with a time axis and no horizontal grid (at most one latitude and longitude)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in _NETCDF_MAGIC:
                return False
        with xr.open_dataset(path, decode_times=False) as ds:
            if _find_time(ds) is None:
                return False
            sizes = {k.lower(): v for k, v in ds.sizes.items()}
            lat = max((v for k, v in sizes.items() if k in ("lat", "latitude")), default=1)
            lon = max((v for k, v in sizes.items() if k in ("lon", "longitude")), default=1)
            return lat <= 1 and lon <= 1
    except Exception:  # sniffing never raises
        return False


def _find_time(ds: xr.Dataset) -> str | None:
    if "TIME" in ds.variables:
        return "TIME"
    for name, var in ds.variables.items():
        if var.attrs.get("standard_name") == "time" or var.attrs.get("axis") == "T":
            return str(name)
    return "time" if "time" in ds.variables else None


def _find_depth(ds: xr.Dataset) -> str | None:
    if "DEPTH" in ds.variables:
        return "DEPTH"
    for name, var in ds.variables.items():
        if var.attrs.get("standard_name") == "depth" or (var.attrs.get("axis") == "Z" and name != "PRES"):
            return str(name)
    return "depth" if "depth" in ds.variables else None


def _canonical(name: str, var: xr.DataArray) -> str | None:
    std = var.attrs.get("standard_name")
    if std in STANDARD_NAMES:
        return STANDARD_NAMES[std]
    return OCEANSITES_CODES.get(str(name).upper())


def _qc_variable(ds: xr.Dataset, name: str) -> str | None:
    for cand in str(ds[name].attrs.get("ancillary_variables", "")).split():
        if cand in ds.variables and cand.upper().endswith("_QC"):
            return cand
    for cand in (f"{name}_QC", f"{name}_qc"):
        if cand in ds.variables:
            return cand
    return None


def _flag_table(path: Path, ds: xr.Dataset, qc_name: str) -> tuple[dict[str, flags.FlagMeaning], str]:
    attrs = ds[qc_name].attrs
    meanings = attrs.get("flag_meanings")
    if meanings is None:
        return flags.OCEANSITES_FLAGS, "oceansites"
    names = str(meanings).split()
    values = np.atleast_1d(attrs.get("flag_values", np.arange(len(names))))
    values = [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
    if len(values) != len(names):
        raise InputError(path, f"flag_values ({len(values)}) and flag_meanings ({len(names)}) differ in length",
                         field=qc_name)
    table = {}
    for value, meaning in zip(values, names):
        if meaning.lower() not in MEANINGS:
            raise InputError(path, f"unknown flag meaning {meaning!r} (flag value {value}); known: "
                             f"{sorted(MEANINGS)}", field=qc_name)
        table[_flag_text(value)] = MEANINGS[meaning.lower()]
    standard = all(flags.OCEANSITES_FLAGS.get(k) == v for k, v in table.items())
    return table, ("oceansites" if standard else "by_meaning")


def _flag_text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float):
        return "" if np.isnan(value) else str(int(value))
    return str(int(value))


def _flag_strings(qc: np.ndarray) -> np.ndarray:
    """Flag array (int, float with NaN for fill, or chars) -> native strings, one conversion per value."""
    flat = qc.ravel()
    uniq, inverse = np.unique(flat.astype(str) if flat.dtype.kind in "SU" else flat, return_inverse=True)
    texts = np.array([_flag_text(u) for u in uniq.tolist()], dtype=object)
    return texts[inverse].reshape(qc.shape)


def read(path: str | Path, *, site: str | None = None, layer: str = "",
         error_sd: dict[str, float] | None = None,
         sentinels: tuple[float, ...] = DEFAULT_SENTINELS) -> xr.Dataset:
    """Read an OceanSITES / CF time-series NetCDF file into the canonical observation table.

    Args:
        path: NetCDF file.
        site: station id; default the ``platform_code`` or ``site_code`` attribute, else the file stem.
        layer: canonical layer for every row ("" unknown, the default: the depth is given).
        error_sd: error standard deviation per canonical variable overriding DEFAULT_ERROR_SD.
        sentinels: values that mean missing even when ``_FillValue`` does not say so.

    Raises:
        InputError: naming the file and the variable.
    """
    path = Path(path)
    sd = error_sd_table(error_sd)
    ds = open_netcdf(path)
    time_name = _find_time(ds)
    if time_name is None:
        raise InputError(path, "no time variable (TIME, or standard_name 'time' / axis 'T')", field="TIME")
    time_var = ds[time_name]
    if not np.issubdtype(time_var.dtype, np.datetime64):
        raise InputError(path, f"time variable is not decodable as CF time (units "
                         f"{time_var.attrs.get('units', time_var.encoding.get('units'))!r})", field=time_name)
    time_dim = time_var.dims[0] if time_var.ndim == 1 else None
    if time_dim is None:
        raise InputError(path, f"time variable has dims {time_var.dims}, expected one dimension", field=time_name)
    depth_name = _find_depth(ds)
    site_id = site or str(ds.attrs.get("platform_code") or ds.attrs.get("site_code") or path.name.split(".")[0])
    lat = _position(ds, ("LATITUDE", "latitude", "lat"), "geospatial_lat_min")
    lon = _position(ds, ("LONGITUDE", "longitude", "lon"), "geospatial_lon_min")

    coords = {time_name, depth_name, "LATITUDE", "LONGITUDE", "latitude", "longitude", "lat", "lon"}
    qc_names = {q for n in ds.data_vars if (q := _qc_variable(ds, str(n)))}
    parts, skipped, scales = [], [], {}
    sentinel_arr = np.asarray(sentinels, dtype=float)
    for name, var in ds.data_vars.items():
        name = str(name)
        if name in coords or name in qc_names or name.upper().endswith(_ANCILLARY_SUFFIXES):
            continue
        variable = _canonical(name, var)
        if variable is None or time_dim not in var.dims:
            skipped.append(name)
            continue
        extra = [d for d in var.dims if d != time_dim and var.sizes[d] == 1 and d != (depth_name or "")]
        var = var.isel({d: 0 for d in extra})
        depth_dims = [d for d in var.dims if d != time_dim]
        if len(depth_dims) > 1:
            raise InputError(path, f"variable has dims {var.dims}; expected ({time_dim}[, depth])", field=name)
        var = var.transpose(time_dim, *depth_dims)
        convert = variable_converter(path, var.attrs, variable, name)
        raw = np.asarray(var.values, dtype=float)
        if sentinel_arr.size:
            raw = np.where(np.isin(raw, sentinel_arr) | (np.abs(raw) > 9e36), np.nan, raw)
        # depth per element
        if depth_name is not None and depth_name in ds.variables:
            dvar = ds[depth_name]
            dvar = dvar.isel({d: 0 for d in dvar.dims if d not in var.dims and dvar.sizes[d] == 1})
            if set(dvar.dims) <= set(var.dims):
                depth = np.asarray(dvar.broadcast_like(var).transpose(*var.dims).values, dtype=float)
            else:  # a variable off the depth axis (e.g. a 1-D PSAL next to a 2-D TEMP): depth unknown
                depth = np.full(raw.shape, np.nan)
            if str(dvar.attrs.get("positive", "down")).lower() == "up":
                depth = -depth
        else:
            depth = np.full(raw.shape, np.nan)
        qc_name = _qc_variable(ds, name)
        if qc_name is not None:
            qvar = ds[qc_name]
            qvar = qvar.isel({d: 0 for d in qvar.dims if d not in var.dims and qvar.sizes[d] == 1})
            native = _flag_strings(np.asarray(qvar.transpose(*var.dims).values))
            table, scales[qc_name] = _flag_table(path, ds, qc_name)
            qc = np.full(raw.shape, flags.NOT_EVALUATED, np.int8)
            censored = np.zeros(raw.shape, bool)
            for key in np.unique(native).tolist():
                if key == "":
                    continue
                meaning = table.get(key)
                if meaning is None:
                    raise InputError(path, f"flag value {key!r} is not in the flag table {sorted(table)}",
                                     field=qc_name)
                sel = native == key
                qc[sel], censored[sel] = meaning.qc, meaning.censored
        else:
            native = np.full(raw.shape, "", dtype=object)
            qc = np.full(raw.shape, flags.NOT_EVALUATED, np.int8)
            censored = np.zeros(raw.shape, bool)
        values = convert(raw)
        finite = np.isfinite(values)
        qc = np.where(finite, qc, flags.MISSING).astype(np.int8)
        times = np.broadcast_to(time_var.values.astype("datetime64[ns]")[:, None], raw.reshape(len(time_var), -1).shape)
        parts.append(dict(time=times.ravel(), depth=depth.ravel(), variable=np.full(raw.size, variable, dtype=object),
                          value=values.ravel(), qc=qc.ravel(), censored=(censored & finite).ravel(),
                          native_qc=np.asarray(native, dtype=object).ravel(),
                          error_sd=np.full(raw.size, sd[variable])))
    if not parts:
        raise InputError(path, "no recognised variable (by standard_name or OceanSITES code); data variables: "
                         f"{list(ds.data_vars)[:20]}")
    columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not np.isfinite(columns["value"]).any():
        raise InputError(path, "no values: every variable is _FillValue or a sentinel")
    table = make_observations(**columns, site=site_id, layer=layer, layer_code="", source=str(path),
                               line=-1, latitude=lat, longitude=lon)
    t = time_var.values.astype("datetime64[ns]").astype(np.int64)
    table = flag_duplicates(sort_observations(table))
    table.attrs.update(time_reversals=int((np.diff(t) < 0).sum()), skipped_variables=", ".join(skipped),
                       flag_scales="; ".join(f"{k}: {v}" for k, v in scales.items()))
    return table


def _position(ds: xr.Dataset, names: tuple[str, ...], attr: str) -> float:
    for name in names:
        if name in ds.variables and ds[name].size >= 1:
            vals = np.asarray(ds[name].values, dtype=float).ravel()
            if vals.size == 1 or np.allclose(vals, vals[0]):
                return float(vals[0])
    value = ds.attrs.get(attr)
    try:
        return float(value) if value is not None else np.nan
    except (TypeError, ValueError):
        return np.nan

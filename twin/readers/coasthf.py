"""COAST-HF buoy exports in the Coriolis-cotier CSV format into the canonical table.

Header (comma separated, one line)::

    PLATFORM[,ARGOS_ID],DATE (yyyy-mm-ddThh:mi:ssZ),LATITUDE (degree_north),LONGITUDE (degree_east),
    <PARAM> LEVEL<k> (<units>),...,QC

``QC`` is one string with one digit per preceding column, in column order (Copernicus/OceanSITES
scale, ``twin.flags.OCEANSITES_FLAGS``). It is read as text: as an integer it would lose its leading
zeros and shift every position. A QC string whose length differs from the number of preceding
columns is an InputError naming the line.

Policies (tested in tests/test_reader_coasthf.py):

- **one row per (line, parameter column)**, empty cells included (value NaN, qc 9), in file order.
- **levels**: ``LEVEL-1`` -> layer "air" (met mast), ``LEVEL0`` -> "surface", ``LEVEL1`` (first water
  level) -> "surface"; ``layer_code`` keeps the header spelling ("LEVEL1"). Deeper levels (``LEVEL3``
  at MESURHO and MOLIT, whose ``DEPH LEVEL3`` reads a constant 20 m and 15 m) are layer "" unless the
  ``level_layers`` option names them (e.g. ``{3: "bottom"}``): the export does not say. ``depth`` is
  NaN: the export gives a level, not a depth (``DEPH`` is kept as its own variable).
- **parameter codes** map through ``PARAMETERS``; ``TEMP`` at ``LEVEL-1`` is air temperature.
  ``DOX1`` (ml/l) and ``MASS_DOXY`` (milligram/m3, a second oxygen channel) both map to ``oxygen`` and
  both are kept; where both are usable at the same time and level, ``flag_duplicates`` keeps the first
  column (``DOX1`` in every known export) and flags the other suspect, so oxygen is not assimilated
  twice with independent errors. Instrument housekeeping codes (``HOUSEKEEPING``: battery, pump flow,
  gusts, altitude) are left out of the table; ``attrs["housekeeping_columns"]`` lists them and
  ``attrs["housekeeping_values"]`` counts their non-empty cells. Any other code is an InputError
  naming the column, so a new code is noticed rather than dropped.
- **fill values**: ``|v| >= fill_threshold`` (99999: -99999, +/-214748 ...) or ``v in fill_values``
  (-1000) is qc 9 with value NaN whatever its QC digit (EXIN0006 carries -99999 flagged 1); the digit
  stays in ``native_qc``; ``attrs["fill_values"]`` counts them. A missing (empty) cell is qc 9 too.
- **time and position flags**: a DATE, LATITUDE or LONGITUDE digit meaning suspect or bad lowers every
  observation of that line to at least suspect or bad (worst wins; missing stays missing).
- **fluorescence**: kept as raw ``fluorescence``; chlorophyll is derived only through
  ``fluorescence_calibration`` (site -> (slope, offset), chl = slope * fluo + offset, mg m-3), as extra
  rows after the native ones with the fluorescence row's flags.
- **time**: ``DATE`` is UTC (the ``Z``). Rows keep the file order; repeated timestamps are kept and
  flagged by ``flag_duplicates``.
"""
from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from twin import flags
from twin.errors import InputError
from twin.observations import LAYERS, concat_observations, flag_duplicates, make_observations
from twin.readers._common import error_sd_table, read_text_lines
from twin.units import converter

# Coriolis / ROSCOP / Copernicus INSTAC parameter code -> canonical variable.
PARAMETERS: dict[str, str] = {
    "TEMP": "temperature", "PSAL": "salinity", "CNDC": "conductivity", "DEPH": "depth",
    "PRES": "pressure", "DOX1": "oxygen", "MASS_DOXY": "oxygen", "OSAT": "oxygen_saturation",
    "FLU3": "fluorescence", "FLUO": "fluorescence", "CPHL": "chlorophyll", "TUR4": "turbidity",
    "PHPH": "ph", "NTRA": "nitrate", "NTRI": "nitrite", "PHOS": "phosphate", "AMON": "ammonium",
    "LGH4": "par", "DRYT": "air_temperature", "ATMS": "air_pressure", "RELH": "relative_humidity",
    "WSPD": "wind_speed", "WDIR": "wind_direction",
}
# Codes whose meaning changes above the surface (LEVEL-1).
AIR_PARAMETERS: dict[str, str] = {"TEMP": "air_temperature"}
# Instrument housekeeping: gust speed and direction, altitude, battery voltage, pump flow at end of cycle.
HOUSEKEEPING = frozenset({"GSPD", "GDIR", "ALTS", "BATTERY", "END_CYCLE_FLOW"})
DEFAULT_LEVEL_LAYERS: dict[int, str] = {-1: "air", 0: "surface", 1: "surface"}
DEFAULT_FILL_VALUES = (-1000.0,)
DEFAULT_FILL_THRESHOLD = 99999.0

_PARAM_RE = re.compile(r"^(?P<code>[A-Z][A-Z0-9_]*) LEVEL(?P<level>-?\d+) \((?P<unit>[^()]*)\)$")
_COORDS = ("DATE", "LATITUDE", "LONGITUDE")
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_QC_LUT = np.array([flags.OCEANSITES_FLAGS[str(d)].qc for d in range(10)], dtype=np.int8)
_CENSORED_LUT = np.array([flags.OCEANSITES_FLAGS[str(d)].censored for d in range(10)])
_DIGITS = np.array(list("0123456789"), dtype=object)


def sniff(path: str | Path) -> bool:
    """True when the first line is a Coriolis-cotier header (PLATFORM, DATE (...), ..., QC)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(65536).decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    except OSError:
        return False
    return first.startswith("PLATFORM,") and first.endswith(",QC") and ",DATE (" in first


def read(path: str | Path, *, error_sd: Mapping[str, float] | None = None,
         fluorescence_calibration: Mapping[str, tuple[float, float]] | None = None,
         level_layers: Mapping[int, str] | None = None,
         fill_values: tuple[float, ...] = DEFAULT_FILL_VALUES,
         fill_threshold: float = DEFAULT_FILL_THRESHOLD) -> xr.Dataset:
    """Read one Coriolis-cotier (COAST-HF) CSV file into the canonical observation table.

    Args:
        path: the CSV file.
        error_sd: error standard deviation per canonical variable (canonical units), overriding
            ``twin.units.DEFAULT_ERROR_SD``.
        fluorescence_calibration: site (PLATFORM code) -> (slope, offset) giving chlorophyll (mg m-3)
            from fluorescence; sites absent from it get no derived chlorophyll.
        level_layers: LEVEL number -> layer, merged over ``DEFAULT_LEVEL_LAYERS``; levels in neither
            get layer "".
        fill_values: exact values that are fill codes, not measurements.
        fill_threshold: any value with ``|v| >= fill_threshold`` is a fill code.

    Returns:
        Canonical table, duplicates flagged; ``attrs``: ``format``, ``housekeeping_columns``,
        ``housekeeping_values``, ``fill_values``, ``derived_chlorophyll``.

    Raises:
        InputError: empty or truncated file, wrong delimiter, unknown column, parameter code or unit,
            bad QC string, malformed number or date; names the file and, where known, line and column.
    """
    path = Path(path)
    sd = error_sd_table(error_sd)
    layers = _level_layers(level_layers)
    calibration = _calibration(fluorescence_calibration)
    lines = read_text_lines(path, "a Coriolis-cotier header line 'PLATFORM,DATE (yyyy-mm-ddThh:mi:ssZ),...,QC'")
    columns, params, housekeeping = _header(path, lines[0], layers)

    body, line_no = _data_lines(path, lines, len(columns))
    frame = _parse(path, body, line_no, columns)
    n, num_params = len(frame), len(params)

    qc_text = frame["QC"]
    digits = _qc_digits(path, qc_text, line_no, columns)
    time = _times(path, frame[columns[_index(columns, "DATE")]], line_no)
    site = frame["PLATFORM"].fillna("").str.strip().to_numpy(dtype=object)
    if (site == "").any():
        i = int(np.flatnonzero(site == "")[0])
        raise InputError(path, "empty PLATFORM code", line=int(line_no[i]), field="PLATFORM")
    latitude = frame[columns[_index(columns, "LATITUDE")]].to_numpy(dtype=np.float64)
    longitude = frame[columns[_index(columns, "LONGITUDE")]].to_numpy(dtype=np.float64)

    cols = [p["column"] for p in params]
    col_idx = np.array([columns.index(c) for c in cols], dtype=np.intp)
    raw = frame[cols].to_numpy(dtype=np.float64) if num_params else np.empty((n, 0))
    fill = (np.abs(raw) >= fill_threshold) | np.isin(raw, np.asarray(fill_values, dtype=float))
    absent = ~np.isfinite(raw) | fill
    values = np.empty_like(raw)
    for j, p in enumerate(params):
        values[:, j] = p["convert"](raw[:, j])
    values[absent] = np.nan

    param_digits = digits[:, col_idx]
    qc = _QC_LUT[param_digits]
    censored = _CENSORED_LUT[param_digits] & ~absent
    qc = _apply_position_flags(qc, digits, columns)
    qc[absent] = flags.MISSING
    native = _DIGITS[param_digits]

    variables = np.array([p["variable"] for p in params], dtype=object)
    ds = make_observations(
        time=np.repeat(time, num_params), site=np.repeat(site, num_params),
        layer=np.tile(np.array([p["layer"] for p in params], dtype=object), n),
        layer_code=np.tile(np.array([p["layer_code"] for p in params], dtype=object), n),
        variable=np.tile(variables, n), value=values.ravel(),
        error_sd=np.tile(np.array([sd[v] for v in variables], dtype=float), n),
        qc=qc.ravel(), native_qc=native.ravel(), censored=censored.ravel(), source=str(path),
        line=np.repeat(line_no, num_params), latitude=np.repeat(latitude, num_params),
        longitude=np.repeat(longitude, num_params),
    )
    derived = _derived_chlorophyll(ds, calibration, sd["chlorophyll"])
    if derived is not None:
        ds = concat_observations([ds, derived])
    # Duplicates need a repeated (site, time) line or two columns with the same (variable, layer):
    # skip the table-wide search when neither occurs (same result, cheaper).
    pairs = [(p["variable"], p["layer"]) for p in params]
    if derived is not None:
        pairs += [("chlorophyll", p["layer"]) for p in params if p["variable"] == "fluorescence"]
    repeated_lines = pd.DataFrame({"site": site, "time": time}).duplicated().any()
    if repeated_lines or len(set(pairs)) < len(pairs):
        ds = flag_duplicates(ds)
    ds.attrs.update(
        format="coasthf",
        housekeeping_columns=", ".join(housekeeping),
        housekeeping_values=int(frame[housekeeping].notna().to_numpy().sum()) if housekeeping else 0,
        fill_values=int((fill & np.isfinite(raw)).sum()),
        derived_chlorophyll=0 if derived is None else int(derived.sizes["obs"]),
        time_zone="UTC (DATE carries Z)",
    )
    return ds


# --------------------------------------------------------------------------------------------------
# helpers


def _index(columns: list[str], name: str) -> int:
    return next(i for i, c in enumerate(columns) if c == name or c.startswith(name + " ("))


def _level_layers(level_layers: Mapping[int, str] | None) -> dict[int, str]:
    table = dict(DEFAULT_LEVEL_LAYERS)
    for level, layer in (level_layers or {}).items():
        if layer not in LAYERS:
            raise ValueError(f"level_layers[{level!r}]: unknown layer {layer!r}; valid: {list(LAYERS)}")
        table[int(level)] = layer
    return table


def _calibration(calibration: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    table = {}
    for site, coeffs in (calibration or {}).items():
        try:
            slope, offset = (float(c) for c in coeffs)
        except (TypeError, ValueError):
            raise ValueError(f"fluorescence_calibration[{site!r}] must be (slope, offset), got {coeffs!r}"
                             ) from None
        if not (np.isfinite(slope) and np.isfinite(offset)):
            raise ValueError(f"fluorescence_calibration[{site!r}] must be finite, got {coeffs!r}")
        table[str(site)] = (slope, offset)
    return table


def _header(path: Path, line: str, layers: dict[int, str]) -> tuple[list[str], list[dict], list[str]]:
    """Header columns, the ingested parameter columns (code, variable, layer, converter) and the
    housekeeping columns."""
    columns = [c.strip() for c in line.split(",")]
    if len(columns) < 2:
        delim = next((d for d in (";", "\t", "|") if d in line), None)
        hint = f" (found {delim!r}: wrong delimiter?)" if delim else ""
        raise InputError(path, f"header has a single column; expected comma-separated columns{hint}", line=1)
    if columns[0] != "PLATFORM":
        raise InputError(path, f"first column is {columns[0]!r}; expected 'PLATFORM'", line=1, field=columns[0])
    if columns[-1] != "QC":
        raise InputError(path, f"last column is {columns[-1]!r}; expected 'QC' (one flag digit per column)",
                         line=1, field=columns[-1])
    for name in _COORDS:
        if not any(c == name or c.startswith(name + " (") for c in columns):
            raise InputError(path, f"missing required column {name!r}", line=1, field=name)
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise InputError(path, "duplicated column in header", line=1, field=dup)
    params, housekeeping = [], []
    for col in columns[1:-1]:
        if col == "ARGOS_ID" or any(col.startswith(name + " (") for name in _COORDS):
            continue
        m = _PARAM_RE.match(col)
        if m is None:
            raise InputError(path, "unexpected column; expected '<PARAM> LEVEL<k> (<units>)'", line=1, field=col)
        code, level, unit = m["code"], int(m["level"]), m["unit"]
        if code in HOUSEKEEPING:
            housekeeping.append(col)
            continue
        if code not in PARAMETERS:
            raise InputError(path, f"unknown parameter code {code!r}; known: {sorted(PARAMETERS)}, "
                             f"housekeeping (not ingested): {sorted(HOUSEKEEPING)}", line=1, field=col)
        variable = AIR_PARAMETERS.get(code, PARAMETERS[code]) if level < 0 else PARAMETERS[code]
        try:
            convert = converter(variable, unit)
        except ValueError as exc:
            raise InputError(path, str(exc), line=1, field=col) from None
        params.append(dict(column=col, code=code, variable=variable, layer=layers.get(level, ""),
                           layer_code=f"LEVEL{level}", convert=convert))
    return columns, params, housekeeping


def _data_lines(path: Path, lines: list[str], num_columns: int) -> tuple[str, np.ndarray]:
    """Data text without blank lines, and the 1-based file line of each data row."""
    body = pd.Series(lines[1:], dtype=object)
    keep = (body.str.strip() != "").to_numpy()
    line_no = (np.flatnonzero(keep) + 2).astype(np.int64)
    kept = body[keep]
    counts = kept.str.count(",").to_numpy() + 1 if len(kept) else np.zeros(0, int)
    bad = np.flatnonzero(counts != num_columns)
    if bad.size:
        i = int(bad[0])
        hint = "truncated line?" if counts[i] < num_columns else "extra fields?"
        raise InputError(path, f"expected {num_columns} fields, found {counts[i]} ({hint})", line=int(line_no[i]))
    return "\n".join(kept.tolist()), line_no


def _parse(path: Path, body: str, line_no: np.ndarray, columns: list[str]) -> pd.DataFrame:
    text_cols = {"PLATFORM", "ARGOS_ID", "QC"} | {c for c in columns if c.startswith("DATE")}
    num_cols = [c for c in columns if c not in text_cols]
    if not body:
        return pd.DataFrame({c: pd.Series([], dtype=object if c in text_cols else np.float64) for c in columns})

    def parse(dtype):
        return pd.read_csv(io.StringIO(body), header=None, names=columns, dtype=dtype, na_values=[""],
                           keep_default_na=False, skip_blank_lines=False, engine="c")

    try:
        return parse({c: (str if c in text_cols else np.float64) for c in columns})
    except (ValueError, pd.errors.ParserError):
        pass  # a malformed number: read as text to say which cell
    try:
        frame = parse({c: str for c in columns})
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, f"not a readable Coriolis-cotier table ({exc})") from None
    for col in num_cols:
        parsed = pd.to_numeric(frame[col], errors="coerce")
        bad = parsed.isna().to_numpy() & frame[col].notna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(path, f"not a number: {frame[col].iloc[i]!r}", line=int(line_no[i]), field=col)
        frame[col] = parsed.astype(np.float64)
    return frame


def _qc_digits(path: Path, qc_text: pd.Series, line_no: np.ndarray, columns: list[str]) -> np.ndarray:
    """QC strings as a (rows, columns before QC) uint8 matrix of digits."""
    expected = len(columns) - 1
    text = qc_text.fillna("").str.strip()
    lengths = text.str.len().to_numpy()
    bad = np.flatnonzero(lengths != expected)
    if bad.size:
        i = int(bad[0])
        raise InputError(path, f"QC string {text.iloc[i]!r} has {lengths[i]} digits; expected {expected}, one "
                         "per preceding column", line=int(line_no[i]), field="QC")
    if not len(text):
        return np.zeros((0, expected), dtype=np.uint8)
    joined = "".join(text.tolist())
    # errors="replace" keeps one byte per character, so the matrix stays aligned; "?" is reported below
    raw = np.frombuffer(joined.encode("ascii", errors="replace"), dtype=np.uint8)
    digits = raw.reshape(len(text), expected).astype(np.int16) - ord("0")
    bad = (digits < 0) | (digits > 9)
    if bad.any():
        i, j = (int(x[0]) for x in np.nonzero(bad))
        raise InputError(path, f"unknown QC flag {text.iloc[i][j]!r} for column {columns[j]!r}; valid: digits "
                         "0-9 (OceanSITES)", line=int(line_no[i]), field=columns[j])
    return digits.astype(np.uint8)


def _apply_position_flags(qc: np.ndarray, digits: np.ndarray, columns: list[str]) -> np.ndarray:
    """Worst-wins with the DATE/LATITUDE/LONGITUDE flags of each line (suspect and bad only)."""
    idx = [_index(columns, name) for name in _COORDS]
    pos_qc = _QC_LUT[digits[:, idx]] if digits.size else np.zeros((0, len(idx)), np.int8)
    line_bad = (pos_qc == flags.BAD).any(axis=1)[:, None]
    line_suspect = (pos_qc == flags.SUSPECT).any(axis=1)[:, None]
    out = qc.copy()
    usable_or_suspect = np.isin(out, (flags.GOOD, flags.NOT_EVALUATED, flags.SUSPECT))
    out[line_bad & usable_or_suspect] = flags.BAD
    out[line_suspect & np.isin(out, (flags.GOOD, flags.NOT_EVALUATED))] = flags.SUSPECT
    return out


def _derived_chlorophyll(ds: xr.Dataset, calibration: dict[str, tuple[float, float]],
                         chl_error_sd: float) -> xr.Dataset | None:
    if not calibration:
        return None
    site = ds["site"].values
    is_fluo = ds["variable"].values == "fluorescence"
    pick = is_fluo & np.isin(site, list(calibration))
    if not pick.any():
        return None
    sub = ds.isel(obs=np.flatnonzero(pick))
    slope = np.array([calibration[s][0] for s in np.unique(sub["site"].values)])
    offset = np.array([calibration[s][1] for s in np.unique(sub["site"].values)])
    _, inverse = np.unique(sub["site"].values, return_inverse=True)
    value = sub["value"].values * slope[inverse] + offset[inverse]
    return sub.assign(value=("obs", value), variable=("obs", np.full(value.size, "chlorophyll", dtype=object)),
                      error_sd=("obs", np.full(value.size, chl_error_sd)))


def _times(path: Path, date: pd.Series, line_no: np.ndarray) -> np.ndarray:
    time = pd.to_datetime(date.str.strip(), format=_DATE_FORMAT, errors="coerce")
    if time.isna().any():
        i = int(np.flatnonzero(time.isna().to_numpy())[0])
        raise InputError(path, f"bad date {date.iloc[i]!r}; expected yyyy-mm-ddThh:mi:ssZ (UTC)",
                         line=int(line_no[i]), field=date.name)
    return time.to_numpy(dtype="datetime64[ns]")

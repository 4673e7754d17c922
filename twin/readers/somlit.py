"""SOMLIT bottle data (French coastal observation network, IR ILICO) into the canonical table.

Two layouts are read, told apart by their header line:

(a) a re-export written by R ``write.csv``: comma separated, double quoted, first column an R row index
    (header ``""``), ``NA`` for missing, no units row (e.g. ``somlit-med/HYDRO.csv``);
(b) SOMLIT's native extraction (``Somlit_Extraction_hydro_*.csv``): semicolon separated, metadata lines
    above the header, a units row right below it (optionally starting with ``//``), ``999999`` for
    missing, ``//`` comment lines anywhere.

Columns: ``ID_SITE, DATE, HEURE, COEF_MAREE, MAREE, PROF_TEXT, PROF_NUM, nomSite*, gpsLat*, gpsLong*``
then value/flag pairs ``X, qX`` (see ``VARIABLES``). An extraction holding only some of the pairs is
fine; a value column without its flag column (or the reverse) is an error. Other columns are ignored
and listed in ``attrs["ignored_columns"]``.

Policies (documented for users in the module docstring, tested in tests/test_reader_somlit.py):

- **time**: ``DATE`` + ``HEURE`` read as UTC. SOMLIT does not state the time zone of ``HEURE`` (many
  rows carry a nominal 08:00:00 or 00:00:00); a missing or malformed date or time is an InputError.
- **one row per (sample, variable)**: every pair becomes an observation, missing ones included
  (value NaN, qc 9), so nothing delivered is lost. Rows keep the file order (samples, then variables
  in ``VARIABLES`` order); nothing is sorted (use ``twin.observations.sort_observations``).
- **missing**: ``NA``, ``999999`` or an empty cell is qc 9 whatever its flag; the native flag is kept
  in ``native_qc``. A value flagged 1/5/9 is kept in ``value`` but is qc 9 (the flag says it is not a
  reported measurement). A present value with an empty flag is qc 2 (not evaluated).
- **flags**: ``twin.flags.SOMLIT_FLAGS`` (0 below detection -> good and censored; 2/6/7 good; 3 suspect;
  4 bad; 1/5/9 missing; 8 not evaluated). Any other flag is an InputError naming line and column.
- **duplicates**: replicates and repeated timestamps are kept; ``flag_duplicates`` leaves the first
  usable row of each (site, layer, depth, variable, time) and flags later ones suspect.
- **units**: from the units row when there is one (an empty cell there means the documented SOMLIT
  unit, ``DEFAULT_UNITS``); otherwise ``DEFAULT_UNITS``. An unknown unit is an InputError naming the
  column. Oxygen mL/L -> mmol m-3 uses 1000 / 22.3916.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from twin import flags
from twin.errors import InputError
from twin.observations import flag_duplicates, make_observations
from twin.readers._common import error_sd_table, read_text_lines
from twin.units import converter

# SOMLIT column -> canonical variable, in file order.
VARIABLES: dict[str, str] = {
    "T": "temperature", "S": "salinity", "O": "oxygen", "PH": "ph", "NH4": "ammonium",
    "NO3": "nitrate", "NO2": "nitrite", "PO4": "phosphate", "SIOH4": "silicate", "COP": "poc",
    "NOP": "pon", "MES": "spm", "DN15": "delta15n", "DC13": "delta13c", "CHLA": "chlorophyll",
}
# Documented SOMLIT units (https://www.somlit.fr), used when the file has no units row.
DEFAULT_UNITS: dict[str, str] = {
    "T": "degC", "S": "PSS", "O": "mL/L", "PH": "1", "NH4": "umol/L", "NO3": "umol/L",
    "NO2": "umol/L", "PO4": "umol/L", "SIOH4": "umol/L", "COP": "ug/L", "NOP": "ug/L", "MES": "mg/L",
    "DN15": "permil", "DC13": "permil", "CHLA": "ug/L",
}
LAYERS: dict[str, str] = {"S": "surface", "I": "intermediate", "F": "bottom"}
MISSING_CODE = 999999.0
REQUIRED_COLUMNS = ("DATE", "HEURE", "PROF_TEXT", "PROF_NUM", "nomSite*", "gpsLat*", "gpsLong*")
_NA_TOKENS = ["", "NA", "NaN", "nan"]
_HEADER_SCAN_LINES = 50

_QC_OF_FLAG = {k: m.qc for k, m in flags.SOMLIT_FLAGS.items()}
_CENSORED_FLAGS = frozenset(k for k, m in flags.SOMLIT_FLAGS.items() if m.censored)


def sniff(path: str | Path) -> bool:
    """True when one of the first lines is a SOMLIT header (has ``nomSite*`` and ``PROF_TEXT``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16384).decode("utf-8", errors="replace")
    except OSError:
        return False
    return any("nomSite*" in line and "PROF_TEXT" in line for line in head.splitlines()[:_HEADER_SCAN_LINES])


def read(path: str | Path, *, error_sd: Mapping[str, float] | None = None) -> xr.Dataset:
    """Read a SOMLIT hydrology file (either layout) into the canonical observation table.

    Args:
        path: the CSV file.
        error_sd: observation error standard deviation per canonical variable (canonical units),
            overriding ``twin.units.DEFAULT_ERROR_SD``.

    Returns:
        Canonical table (``twin.observations``) with one row per (sample, variable), duplicates
        flagged. ``attrs``: ``format``, ``layout`` ("r-export" or "native"), ``units`` (unit used per
        SOMLIT column), ``metadata`` (lines above the header), ``ignored_columns``.

    Raises:
        InputError: empty or truncated file, wrong delimiter, missing column, unknown unit or flag,
            malformed number, date or time; the message names the file and, where known, line and column.
    """
    path = Path(path)
    sd = error_sd_table(error_sd)
    lines = read_text_lines(path, "a SOMLIT header line")
    header_idx, delim = _find_header(path, lines)
    columns = _split_header(path, lines[header_idx], delim, header_idx + 1)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(path, f"missing required SOMLIT column(s) {missing}", line=header_idx + 1,
                         field=missing[0])
    pairs = _value_flag_pairs(path, columns, header_idx + 1)

    start = header_idx + 1
    units_row = None
    if start < len(lines) and _is_units_row(lines[start], delim, columns):
        units_row = next(csv.reader([lines[start]], delimiter=delim))
        start += 1
    units = _units(path, columns, pairs, units_row, start)

    body, line_no = _data_lines(path, lines, start, delim, len(columns))
    frame = _parse(path, body, line_no, delim, columns, pairs)
    n = len(frame)

    time = _times(path, frame, line_no)
    site = frame["nomSite*"].to_numpy(dtype=object)
    if pd.isna(site).any():
        i = int(np.flatnonzero(pd.isna(site))[0])
        raise InputError(path, "empty site name", line=int(line_no[i]), field="nomSite*")
    layer_code = frame["PROF_TEXT"].fillna("").str.strip().to_numpy(dtype=object)
    layer = pd.Series(layer_code).map(LAYERS)
    if layer.isna().any():
        i = int(np.flatnonzero(layer.isna().to_numpy())[0])
        raise InputError(path, f"unknown layer code {layer_code[i]!r}; expected one of {sorted(LAYERS)}",
                         line=int(line_no[i]), field="PROF_TEXT")
    depth = _numeric(path, frame, "PROF_NUM", line_no)
    latitude = _numeric(path, frame, "gpsLat*", line_no)
    longitude = _numeric(path, frame, "gpsLong*", line_no)

    codes = list(pairs)
    num_vars = len(codes)
    raw = np.column_stack([_numeric(path, frame, c, line_no) for c in codes]) if n else np.empty((0, num_vars))
    absent = ~np.isfinite(raw) | (raw == MISSING_CODE)
    values = np.empty_like(raw)
    for j, code in enumerate(codes):
        values[:, j] = converter(VARIABLES[code], units[code])(raw[:, j])
    values[absent] = np.nan

    native, qc, censored = _flags(path, frame, codes, line_no)
    qc[absent] = flags.MISSING
    censored &= ~absent

    variables = np.array([VARIABLES[c] for c in codes], dtype=object)
    ds = make_observations(
        time=np.repeat(time, num_vars), site=np.repeat(site, num_vars),
        depth=np.repeat(depth, num_vars), layer=np.repeat(layer.to_numpy(dtype=object), num_vars),
        layer_code=np.repeat(layer_code, num_vars), variable=np.tile(variables, n),
        value=values.ravel(), error_sd=np.tile([sd[v] for v in variables], n).astype(float),
        qc=qc.ravel(), native_qc=native.ravel(), censored=censored.ravel(), source=str(path),
        line=np.repeat(line_no, num_vars), latitude=np.repeat(latitude, num_vars),
        longitude=np.repeat(longitude, num_vars),
    )
    # Replicates can only exist where a whole sample (site, layer, depth, time) repeats: skip the
    # table-wide search when no sample does (same result, much cheaper on long series).
    sample_keys = pd.DataFrame({"site": site, "layer": layer_code, "depth": depth, "time": time})
    if sample_keys.duplicated().any():
        ds = flag_duplicates(ds)
    used = {"", "ID_SITE", "COEF_MAREE", "MAREE", *REQUIRED_COLUMNS, *pairs, *pairs.values()}
    ds.attrs.update(
        format="somlit", layout="r-export" if delim == "," else "native",
        units="; ".join(f"{c}: {units[c]}" for c in codes),
        metadata="\n".join(lines[:header_idx]),
        ignored_columns=", ".join(c for c in columns if c not in used),
        time_zone="UTC assumed: SOMLIT does not state the time zone of HEURE",
    )
    return ds


# --------------------------------------------------------------------------------------------------
# helpers


def _find_header(path: Path, lines: list[str]) -> tuple[int, str]:
    """Index of the header line (the first non-comment line naming DATE) and its delimiter."""
    for i, line in enumerate(lines[:_HEADER_SCAN_LINES]):
        stripped = line.strip()
        if not stripped or stripped.startswith("//"):
            continue
        for delim in (";", ","):
            fields = [f.strip().strip('"') for f in stripped.split(delim)]
            if "DATE" in fields and len(fields) > 1:
                return i, delim
    first = next((i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("//")), 0)
    raise InputError(path, "no SOMLIT header found: expected a ';' or ',' separated line with columns "
                     f"{list(REQUIRED_COLUMNS)} (wrong delimiter or not a SOMLIT file?)", line=first + 1)


def _split_header(path: Path, line: str, delim: str, line_no: int) -> list[str]:
    fields = next(csv.reader([line], delimiter=delim))
    columns = [f.strip() for f in fields]
    if columns and columns[0].startswith("//"):
        columns[0] = columns[0][2:].strip()
    seen: set[str] = set()
    for c in columns:
        if c in seen and c:
            raise InputError(path, "duplicated column name in header", line=line_no, field=c)
        seen.add(c)
    return columns


def _value_flag_pairs(path: Path, columns: list[str], line_no: int) -> dict[str, str]:
    present = set(columns)
    pairs = {}
    for code in VARIABLES:
        has_value, has_flag = code in present, f"q{code}" in present
        if has_value and not has_flag:
            raise InputError(path, f"value column {code!r} has no flag column 'q{code}'", line=line_no,
                             field=f"q{code}")
        if has_flag and not has_value:
            raise InputError(path, f"flag column 'q{code}' has no value column {code!r}", line=line_no,
                             field=code)
        if has_value:
            pairs[code] = f"q{code}"
    if not pairs:
        raise InputError(path, f"no value/flag column pair found; expected some of {list(VARIABLES)} "
                         "each followed by its qX flag column", line=line_no)
    return pairs


def _is_units_row(line: str, delim: str, columns: list[str]) -> bool:
    """The line below the header is a units row when it starts with '//' or has no date in DATE."""
    stripped = line.strip()
    if stripped.startswith("//"):
        return delim in stripped
    if not stripped:
        return False
    fields = next(csv.reader([stripped], delimiter=delim))
    date_idx = columns.index("DATE")
    date = fields[date_idx].strip() if date_idx < len(fields) else ""
    return not any(ch.isdigit() for ch in date)


def _units(path: Path, columns: list[str], pairs: dict[str, str], units_row: list[str] | None,
           line_no: int) -> dict[str, str]:
    units = {}
    for code in pairs:
        unit = DEFAULT_UNITS[code]
        if units_row is not None:
            idx = columns.index(code)
            cell = units_row[idx].strip() if idx < len(units_row) else ""
            if idx == 0 and cell.startswith("//"):
                cell = cell[2:].strip()
            if cell:
                unit = cell
        try:
            converter(VARIABLES[code], unit)
        except ValueError as exc:
            raise InputError(path, str(exc), line=line_no if units_row is not None else None,
                             field=code) from None
        units[code] = unit
    return units


def _data_lines(path: Path, lines: list[str], start: int, delim: str, num_columns: int
                ) -> tuple[str, np.ndarray]:
    """Data text without comments and blank lines, and the 1-based file line of each data row."""
    body = pd.Series(lines[start:], dtype=object)
    stripped = body.str.strip()
    keep = ~(stripped.str.startswith("//") | (stripped == "")).to_numpy()
    line_no = (np.flatnonzero(keep) + start + 1).astype(np.int64)
    kept = body[keep]
    counts = kept.str.count(delim).to_numpy() + 1 if len(kept) else np.zeros(0, int)
    bad = np.flatnonzero(counts != num_columns)
    for i in bad:  # re-check with a real CSV parser: a quoted field may hold the delimiter
        found = len(next(csv.reader([kept.iloc[i]], delimiter=delim)))
        if found != num_columns:
            hint = "truncated line?" if found < num_columns else "extra fields or wrong delimiter?"
            raise InputError(path, f"expected {num_columns} fields, found {found} ({hint})",
                             line=int(line_no[i]))
    return "\n".join(kept.tolist()), line_no


def _parse(path: Path, body: str, line_no: np.ndarray, delim: str, columns: list[str],
           pairs: dict[str, str]) -> pd.DataFrame:
    text_cols = ["DATE", "HEURE", "PROF_TEXT", "nomSite*", *pairs.values()]
    num_cols = ["PROF_NUM", "gpsLat*", "gpsLong*", *pairs]
    usecols = text_cols + num_cols
    names = [c if c else f"_unnamed{i}" for i, c in enumerate(columns)]
    if not body:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in usecols})

    def parse(dtype):
        return pd.read_csv(io.StringIO(body), sep=delim, header=None, names=names, usecols=usecols,
                           dtype=dtype, na_values=_NA_TOKENS, keep_default_na=False,
                           skip_blank_lines=False, engine="c")

    try:
        return parse({**{c: str for c in text_cols}, **{c: np.float64 for c in num_cols}})
    except (ValueError, pd.errors.ParserError):
        pass  # a malformed number: read as text to say which cell
    try:
        frame = parse({c: str for c in usecols})
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, f"not a readable SOMLIT table ({exc})") from None
    for col in num_cols:
        _numeric(path, frame, col, line_no)  # raises on the first malformed number
    return frame


def _numeric(path: Path, frame: pd.DataFrame, col: str, line_no: np.ndarray) -> np.ndarray:
    series = frame[col]
    if series.dtype == np.float64:
        return series.to_numpy()
    parsed = pd.to_numeric(series, errors="coerce")
    bad = parsed.isna().to_numpy() & series.notna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(path, f"not a number: {series.iloc[i]!r} (decimal point expected)",
                         line=int(line_no[i]), field=col)
    return parsed.to_numpy(dtype=np.float64)


def _times(path: Path, frame: pd.DataFrame, line_no: np.ndarray) -> np.ndarray:
    date = frame["DATE"].str.strip()
    hour = frame["HEURE"].str.strip()
    stamp = date + " " + hour
    time = pd.to_datetime(stamp, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    retry = time.isna() & stamp.notna()
    if retry.any():  # tolerate HH:MM
        time[retry] = pd.to_datetime(stamp[retry], format="%Y-%m-%d %H:%M", errors="coerce")
    if time.isna().any():
        i = int(np.flatnonzero(time.isna().to_numpy())[0])
        field = "DATE" if pd.isna(pd.to_datetime(date.iloc[i], format="%Y-%m-%d", errors="coerce")) else "HEURE"
        raise InputError(path, f"bad date/time {date.iloc[i]!r} {hour.iloc[i]!r}; expected YYYY-MM-DD and "
                         "HH:MM:SS", line=int(line_no[i]), field=field)
    return time.to_numpy(dtype="datetime64[ns]")


def _flags(path: Path, frame: pd.DataFrame, codes: list[str], line_no: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Native flag text, QARTOD qc and censored, each of shape (rows, variables).

    A flag column holds a handful of distinct values: they are factorised and each distinct value is
    mapped once, so the cost does not grow with a Python loop over rows.
    """
    n = len(frame)
    cells = frame[[f"q{c}" for c in codes]].to_numpy(dtype=object).reshape(n, len(codes))
    inverse, uniques = pd.factorize(cells.ravel(), use_na_sentinel=True)
    text = [str(u).strip() for u in uniques]
    keys = [t[:-2] if t.endswith(".0") else t for t in text]
    unknown = [k for k in keys if k and k not in _QC_OF_FLAG]
    if unknown:
        bad = np.isin(inverse, [keys.index(k) for k in unknown]).reshape(n, len(codes))
        i, j = (int(x[0]) for x in np.nonzero(bad))
        raise InputError(path, f"unknown SOMLIT flag {str(cells[i, j]).strip()!r}; valid: {sorted(_QC_OF_FLAG)}",
                         line=int(line_no[i]), field=f"q{codes[j]}")
    # index -1 (no flag) maps to the last entry of each lookup table
    native_lut = np.array(text + [""], dtype=object)
    qc_lut = np.array([_QC_OF_FLAG.get(k, flags.NOT_EVALUATED) for k in keys] + [flags.NOT_EVALUATED],
                      dtype=np.int8)
    censored_lut = np.array([k in _CENSORED_FLAGS for k in keys] + [False])
    shape = (n, len(codes))
    return (native_lut[inverse].reshape(shape), qc_lut[inverse].reshape(shape),
            censored_lut[inverse].reshape(shape))

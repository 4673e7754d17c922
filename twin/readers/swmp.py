"""NOAA NERRS System-Wide Monitoring Program (SWMP) files from the CDMO, into the canonical table.

Two layouts are read, both with one value column and one flag column per parameter:

* **SWMPr-converted CSV** (``apacpwq.csv.gz``, ``apaebmet.csv.gz``, ``apacpnut.csv``): lower-case columns
  ``datetimestamp, <param>, f_<param>``; timestamps are already UTC (``YYYY-MM-DDTHH:MM:SS``); there is no
  station column, so the site is the file name up to its first dot (``apacpwq.csv.gz`` -> ``apacpwq``,
  a CDMO yearly name ``apacpwq2012.csv`` -> ``apacpwq``).
  Gzip is detected from the magic bytes and read transparently.
* **Raw CDMO export** (``apacpnut2012.csv``): ``StationCode, isSWMP, DateTimeStamp, Historical,
  ProvisionalPlus, CollMethd, REP, F_Record, <PARAM>, F_<PARAM>, ...`` with padded strings and a trailing
  comma on every line. ``DateTimeStamp`` is ``MM/DD/YYYY H:MM`` in *local standard time* (no DST); it is
  converted to UTC with ``utc_offset_hours`` (default: the station's GMT offset from ``STATIONS``, -5 for
  the Apalachicola stations), i.e. ``utc = local - utc_offset_hours``.

Policies (tested in tests/test_reader_swmp.py):

* Flags: the number between ``<>`` is mapped through ``twin.flags.NERRS_FLAGS``; the whole flag string
  (stripped) is kept in ``native_qc``. A flag string without ``<n>`` or with a number outside the table is
  an InputError naming the line and the flag column. An empty flag next to a value means "not evaluated"
  (qc 2). A missing value is qc 9 whatever its flag. ``[SBL]`` (below the method detection limit, nutrients)
  marks the value as censored; ``<-4> [SBL]`` is the CDMO way of writing "below detection, value = MDL",
  so it maps to GOOD + censored instead of -4 "outside low sensor range" (BAD).
* Variables (``PARAMETERS``): ``depth`` (sonde pressure depth, m of water above the sensor) -> ``depth``;
  ``cdepth`` (the same corrected for barometric pressure, flag <3> calculated) -> ``water_level`` because it
  is the tidal water-level signal above the sensor, not a datum-referenced level; ``level``/``clevel``
  (vented level above a datum, never filled at these stations), ``maxwspd``, ``sdwdir``, ``cumprcp``,
  ``totsorad`` and every column without a canonical variable are skipped. ``totpar`` is the CDMO total PAR
  per 15-min interval in mmol m-2: converted to a mean photon flux in umol m-2 s-1 as
  ``value * 1000 / 900`` (checked on apaebmet: the 95th percentile at local noon is ~1830 mmol m-2,
  i.e. ~2040 umol m-2 s-1, full sun).
* Nothing is silently dropped: a parameter column that holds no value at all (``chlfluor`` at Cat Point
  and Dry Bar in 2012-13) is skipped and counted in ``attrs["skipped_columns"]`` together with the columns
  that have no canonical variable; every other column gives one row per record, empty cells as qc 9 rows.
  A file where no mapped column holds any value is an InputError.
* Sentinels (``sentinels`` option, default ``DEFAULT_SENTINELS``) become NaN with qc 9 (native flag kept).
* Layer: ``air`` for ``*met`` stations, otherwise the station's layer in ``STATIONS`` (``surface`` unless
  the station is a bottom sonde); ``layer_code`` is "" (CDMO has no layer code), depth NaN.
* Times: duplicated (site, variable, time) are all kept and later ones flagged suspect
  (``twin.observations.flag_duplicates``); times going backwards are accepted, the table is returned sorted
  by time and the number of backward steps is in ``attrs["time_reversals"]``; ``strict_time_order=True``
  turns the first backward step into an InputError naming its line.
* ``line`` is the 1-based physical line of the record in the (decompressed) file.
"""
from __future__ import annotations

import gzip
import io
import re
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from twin import flags
from twin.errors import InputError
from twin.observations import sort_observations
from twin.observations import flag_duplicates, make_observations
from twin.readers._common import error_sd_table
from twin.units import converter


class Station(NamedTuple):
    """CDMO station: position (degrees north/east, longitudes west negative), GMT offset, layer."""
    latitude: float
    longitude: float
    utc_offset_hours: float = -5.0
    layer: str = "surface"


# Apalachicola NERR (doc/sampling_stations_pdb_apa.csv of the shared data set; longitudes are WEST).
STATIONS: dict[str, Station] = {
    "apacpwq": Station(29.7021, -84.8802), "apacpnut": Station(29.7021, -84.8802),
    "apadbwq": Station(29.6747, -85.0583), "apadbnut": Station(29.6747, -85.0583),
    "apaebmet": Station(29.7694, -84.8815, layer="air"),
    "apaebwq": Station(29.7858, -84.8752, layer="bottom"), "apaebnut": Station(29.7858, -84.8752, layer="bottom"),
    "apaeswq": Station(29.7858, -84.8752), "apaesnut": Station(29.7858, -84.8752),
    "apaegnut": Station(29.7308, -84.9452), "apambnut": Station(29.6677, -84.9940),
    "apanhnut": Station(29.6504, -84.9289), "apapcnut": Station(29.6079, -85.0196),
    "apapcwq": Station(29.6010, -85.0277), "apalmwq": Station(29.755689, -85.003525),
    "aparvnut": Station(29.7791, -85.0434), "apascnut": Station(29.6067, -84.9467),
    "apawpnut": Station(29.6379, -85.0890), "apabpwq": Station(29.8032861, -84.967136),
}


class Parameter(NamedTuple):
    """A CDMO parameter: canonical variable, native unit, and an extra factor applied before conversion."""
    variable: str
    unit: str
    factor: float = 1.0


# Native CDMO parameter (lower case) -> canonical variable and native unit (CDMO metadata units).
PARAMETERS: dict[str, Parameter] = {
    # water quality sondes
    "temp": Parameter("temperature", "degC"),
    "spcond": Parameter("conductivity", "mS/cm"),
    "sal": Parameter("salinity", "psu"),
    "do_pct": Parameter("oxygen_saturation", "%"),
    "do_mgl": Parameter("oxygen", "mg/L"),
    "depth": Parameter("depth", "m"),
    "cdepth": Parameter("water_level", "m"),
    "ph": Parameter("ph", "1"),
    "turb": Parameter("turbidity", "NTU"),
    "chlfluor": Parameter("fluorescence", "ug/L"),
    # meteorology
    "atemp": Parameter("air_temperature", "degC"),
    "rh": Parameter("relative_humidity", "%"),
    "bp": Parameter("air_pressure", "mb"),
    "wspd": Parameter("wind_speed", "m/s"),
    "wdir": Parameter("wind_direction", "degree"),
    # mmol m-2 per 15-min interval -> umol m-2 s-1 (x 1000 umol/mmol / 900 s)
    "totpar": Parameter("par", "umol m-2 s-1", 1000.0 / 900.0),
    "totprcp": Parameter("precipitation", "mm"),
    # nutrients (CDMO: mg/L as P or as N; chlorophyll ug/L)
    "po4f": Parameter("phosphate", "mg/L as P"),
    "nh4f": Parameter("ammonium", "mg/L as N"),
    "no2f": Parameter("nitrite", "mg/L as N"),
    "no3f": Parameter("nitrate", "mg/L as N"),
    "no23f": Parameter("nitrate_nitrite", "mg/L as N"),
    "chla_n": Parameter("chlorophyll", "ug/L"),
}

# Raw CDMO bookkeeping columns: read, not observations.
_RAW_META = ("stationcode", "isswmp", "datetimestamp", "historical", "provisionalplus", "collmethd", "rep",
             "f_record")
DEFAULT_SENTINELS = (-9999.0, -99999.0, 9999.0, 99999.0, 999999.0, 1e6, -999999.0)
_FLAG_RE = r"^\s*<\s*(-?\d+)\s*>"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(path, f"corrupted or truncated gzip stream ({exc})") from None
    return raw


def _first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(4096)
        except (EOFError, OSError, zlib.error):
            return ""
    return head.split(b"\n", 1)[0].decode("latin-1").lower()


def sniff(path: str | Path) -> bool:
    """True for a SWMPr CSV (``datetimestamp`` + ``f_`` columns) or a raw CDMO export."""
    try:
        header = _first_line(Path(path)).replace('"', "")
    except OSError:
        return False
    cols = [c.strip() for c in header.split(",")]
    if "stationcode" in cols and "isswmp" in cols and "datetimestamp" in cols:
        return True
    return "datetimestamp" in cols and any(c.startswith("f_") and c[2:] in PARAMETERS for c in cols)


def _line_index(path: Path, data: bytes, n_header_fields: int) -> np.ndarray:
    """1-based physical line numbers of the data records; InputError for a record with the wrong field count.

    Vectorised over bytes: counts commas per line (the CDMO layouts never quote a comma). Blank lines are
    not records (pandas skips them too).
    """
    arr = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(arr == 10)
    ends = nl if (len(arr) and arr[-1] == 10) else np.append(nl, len(arr))
    starts = np.concatenate(([0], nl + 1))[: len(ends)]
    commas = np.flatnonzero(arr == 44)
    fields = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    stripped = ends - starts - (arr[np.maximum(ends - 1, 0)] == 13)
    blank = stripped <= 0
    lines = np.arange(1, len(ends) + 1)
    keep = ~blank
    lines, fields = lines[keep][1:], fields[keep][1:]  # drop the header
    bad = np.flatnonzero(fields != n_header_fields)
    if bad.size:
        i = int(bad[0])
        what = "truncated record" if fields[i] < n_header_fields else "record with extra fields"
        raise InputError(path, f"{what}: expected {n_header_fields} comma-separated fields as in the header, "
                         f"found {fields[i]}", line=int(lines[i]))
    return lines


def _parse_flags(path: Path, raw: pd.Series, column: str, lines: np.ndarray):
    """Flag strings -> (native string, qc int8, censored bool); InputError on an unknown flag.

    Vectorised: the column is factorised (a few dozen distinct strings in 70k records), the distinct strings
    are parsed with ``str.extract`` and mapped through NERRS_FLAGS, and the result is gathered back.
    """
    idx, uniques = pd.factorize(raw, use_na_sentinel=True)
    native_u = pd.Series(np.asarray(uniques, dtype=object), dtype=object).astype(str).str.strip()
    code_u = native_u.str.extract(_FLAG_RE, expand=False)
    qc_u = np.full(len(native_u) + 1, flags.NOT_EVALUATED, np.int8)  # last slot: empty flag
    cens_u = np.zeros(len(native_u) + 1, bool)
    for j, (text, code) in enumerate(zip(native_u.tolist(), code_u.tolist())):
        if text == "":
            continue
        meaning = None if not isinstance(code, str) else flags.NERRS_FLAGS.get(code)
        if meaning is None:
            i = int(np.argmax(idx == j))
            what = (f"flag {text!r} has no NERRS numeric flag <n>" if not isinstance(code, str) else
                    f"unknown NERRS flag <{code}> in {text!r}; valid: {sorted(flags.NERRS_FLAGS, key=int)}")
            raise InputError(path, what, line=int(lines[i]), field=column)
        qc_u[j], cens_u[j] = meaning.qc, meaning.censored
        if "SBL" in text:  # below the method detection limit: an upper bound, not a bad value
            cens_u[j] = True
            if code == "-4":
                qc_u[j] = flags.GOOD
    native = np.append(native_u.to_numpy(dtype=object), "")[idx]
    return native, qc_u[idx], cens_u[idx]


def _parse_values(path: Path, raw: pd.Series, column: str, lines: np.ndarray) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return raw.to_numpy(dtype=float, na_value=np.nan)
    text = raw.astype("string").str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = (values.isna() & text.notna() & text.ne("")).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(path, f"value {text.iloc[i]!r} is not a number", line=int(lines[i]), field=column)
    return values.to_numpy(dtype=float, na_value=np.nan)


def _parse_times(path: Path, raw: pd.Series, fmt: str, lines: np.ndarray, column: str) -> np.ndarray:
    text = raw.astype("string").str.strip()
    times = pd.to_datetime(text, format=fmt, errors="coerce")
    bad = times.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(path, f"time {text.iloc[i]!r} does not match {fmt!r}", line=int(lines[i]), field=column)
    return times.to_numpy(dtype="datetime64[ns]")


def read(path: str | Path, *, site: str | None = None, utc_offset_hours: float | None = None,
         error_sd: dict[str, float] | None = None, sentinels: tuple[float, ...] = DEFAULT_SENTINELS,
         strict_time_order: bool = False, sort: bool = True) -> xr.Dataset:
    """Read one SWMPr CSV or raw CDMO export into the canonical observation table.

    Args:
        path: ``.csv`` or ``.csv.gz`` (gzip detected from the magic bytes).
        site: label written in ``site`` instead of the station code (column ``StationCode`` or the file
            name); position, layer and UTC offset still come from the station code.
        utc_offset_hours: offset of the raw CDMO local standard time (UTC-5 -> -5). Default: the
            station's offset in ``STATIONS``; ignored for SWMPr files, which are already UTC.
        error_sd: observation error standard deviation per canonical variable, overriding
            ``twin.units.DEFAULT_ERROR_SD``.
        sentinels: values that mean "missing" (become NaN, qc 9).
        strict_time_order: raise instead of sorting when time goes backwards.
        sort: return the table sorted by time, site, variable (``twin.observations.sort_observations``).

    Returns:
        Canonical observation table; ``attrs``: ``skipped_columns``, ``time_reversals``, ``layout``.

    Raises:
        InputError: naming the file (and line, column) for anything malformed.
    """
    path = Path(path)
    sd = error_sd_table(error_sd)
    data = _read_bytes(path)
    if not data.strip():
        raise InputError(path, "empty file: expected a SWMP/CDMO header line")
    header_line = data.split(b"\n", 1)[0].decode("latin-1").rstrip("\r")
    header = [h.strip().strip('"').strip() for h in header_line.split(",")]
    lower = [h.lower() for h in header]
    raw_layout = "stationcode" in lower
    if "datetimestamp" not in lower:
        hint = ""
        if any(d in header_line for d in (";", "\t", "|")):
            hint = " (wrong delimiter? SWMP files are comma-separated)"
        raise InputError(path, f"missing required column 'datetimestamp'{hint}; header is {header_line[:120]!r}",
                         line=1, field="datetimestamp")
    lines = _line_index(path, data, len(header))
    if lines.size == 0:
        raise InputError(path, "no data rows after the header")

    value_cols = [c for c in lower if c and not c.startswith("f_") and c not in _RAW_META]
    dtypes = {h: "float64" for h, low in zip(header, lower) if low in value_cols}
    dtypes.update({h: str for h, low in zip(header, lower) if low not in value_cols})
    read_kw = dict(sep=",", header=0, names=[h or f"_unnamed{i}" for i, h in enumerate(header)],
                   skip_blank_lines=True, index_col=False, keep_default_na=False,
                   na_values=["", "NA", "NaN", "nan"])
    try:
        try:
            frame = pd.read_csv(io.BytesIO(data), dtype=dtypes, **read_kw)
        except (ValueError, TypeError):  # a non-numeric value cell: re-read as text to locate it
            frame = pd.read_csv(io.BytesIO(data), dtype=str, **read_kw)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot parse CSV: {exc}") from None
    frame.columns = [c.lower() if not c.startswith("_unnamed") else c for c in frame.columns]
    if len(frame) != lines.size:
        raise InputError(path, f"parsed {len(frame)} records but the file has {lines.size} data lines "
                         "(quoted commas or embedded newlines?)")

    # time (UTC) and site
    if raw_layout:
        local = _parse_times(path, frame["datetimestamp"], "%m/%d/%Y %H:%M", lines, "DateTimeStamp")
        codes = frame["stationcode"].astype("string").str.strip().fillna("").to_numpy(dtype=object)
        offsets = np.empty(len(frame))
        for code in pd.unique(codes):
            if utc_offset_hours is not None:
                off = utc_offset_hours
            elif code in STATIONS:
                off = STATIONS[code].utc_offset_hours
            else:
                i = int(np.argmax(codes == code))
                raise InputError(path, f"station {code!r} is not in the built-in station table: pass "
                                 "utc_offset_hours (local standard time offset, e.g. -5)", line=int(lines[i]),
                                 field="StationCode")
            offsets[codes == code] = off
        time = local - (offsets * 3600e9).astype("timedelta64[ns]")
    else:
        time = _parse_times(path, frame["datetimestamp"], "%Y-%m-%dT%H:%M:%S", lines, "datetimestamp")
        stem = path.name.split(".")[0]
        yearly = re.fullmatch(r"([a-z]{3}[a-z0-9]{2}(?:wq|met|nut))\d{4}", stem.lower())
        codes = np.full(len(frame), yearly.group(1) if yearly else stem, dtype=object)

    backwards = np.diff(time.astype(np.int64)) < 0
    if backwards.any() and strict_time_order:
        i = int(np.argmax(backwards)) + 1
        raise InputError(path, f"time goes backwards ({time[i - 1]} then {time[i]})", line=int(lines[i]),
                         field="datetimestamp")

    # position and layer from the station code in the file; the ``site`` option only relabels
    uniq = pd.unique(codes)
    lat = np.full(len(frame), np.nan)
    lon = np.full(len(frame), np.nan)
    layer = np.empty(len(frame), dtype=object)
    for code in uniq:
        sel = codes == code
        st = STATIONS.get(code)
        if st is not None:
            lat[sel], lon[sel] = st.latitude, st.longitude
        layer[sel] = "air" if str(code).endswith("met") else (st.layer if st else "surface")
    if site is not None:
        codes = np.full(len(frame), site, dtype=object)
        uniq = [site]

    skipped: list[str] = []
    parts: dict[str, list] = {k: [] for k in ("time", "site", "variable", "value", "error_sd", "qc",
                                               "native_qc", "censored", "line", "latitude", "longitude",
                                               "layer")}
    sentinel_arr = np.asarray(sentinels, dtype=float)
    for col in value_cols:
        values = _parse_values(path, frame[col], col, lines)
        n_values = int(np.isfinite(values).sum())
        param = PARAMETERS.get(col)
        if param is None:
            skipped.append(f"{col}: no canonical variable ({n_values} values)")
            continue
        if n_values == 0:
            skipped.append(f"{col}: empty column ({len(values)} records)")
            continue
        fcol = f"f_{col}"
        if fcol in frame.columns:
            native, qc, censored = _parse_flags(path, frame[fcol], fcol.upper() if raw_layout else fcol, lines)
        else:
            native = np.full(len(values), "", dtype=object)
            qc = np.full(len(values), flags.NOT_EVALUATED, np.int8)
            censored = np.zeros(len(values), bool)
        if sentinel_arr.size:
            values = np.where(np.isin(values, sentinel_arr), np.nan, values)
        try:
            convert = converter(param.variable, param.unit)
        except ValueError as exc:
            raise InputError(path, str(exc), field=col) from None
        values = convert(values * param.factor)
        qc = np.where(np.isfinite(values), qc, flags.MISSING).astype(np.int8)
        n = len(values)
        parts["time"].append(time)
        parts["site"].append(codes)
        parts["variable"].append(np.full(n, param.variable, dtype=object))
        parts["value"].append(values)
        parts["error_sd"].append(np.full(n, sd[param.variable]))
        parts["qc"].append(qc)
        parts["native_qc"].append(native)
        parts["censored"].append(censored)
        parts["line"].append(lines)
        parts["latitude"].append(lat)
        parts["longitude"].append(lon)
        parts["layer"].append(layer)
    if not parts["value"]:
        raise InputError(path, "no values: every parameter column is empty or unmapped "
                         f"({'; '.join(skipped) or 'no parameter columns'})")
    one_site_increasing = len(uniq) == 1 and bool((np.diff(time.astype(np.int64)) > 0).all())
    if sort and one_site_increasing:
        # Already in table order once interleaved: records by time, variables alphabetically within one
        # record (what sort_observations gives, without its lexsort over 600k string keys).
        order = np.argsort([p[0] for p in parts["variable"]], kind="stable")
        columns = {k: np.stack([v[i] for i in order]).T.ravel() for k, v in parts.items()}
    else:
        columns = {k: np.concatenate(v) for k, v in parts.items()}
    ds = make_observations(**columns, source=str(path), layer_code="", depth=np.nan)
    if sort and not one_site_increasing:
        ds = sort_observations(ds)
    if pd.DataFrame({"site": codes, "time": time}).duplicated().any():  # else no key can repeat
        ds = flag_duplicates(ds)
    ds.attrs.update(layout="cdmo-raw" if raw_layout else "swmpr", skipped_columns="; ".join(skipped),
                    time_reversals=int(backwards.sum()))
    return ds

"""Generic delimited text, driven by a YAML mapping file, into the canonical observation table.

The mapping says where time, site, depth/layer and every variable are, in which unit, and on which
flag scale. It is validated by frozen pydantic models that reject unknown keys (with a did-you-mean hint);
every problem is reported at once in a ``twin.errors.ConfigError`` naming its key path.

Wide layout (one column per variable)::

    layout: wide
    delimiter: ";"
    comment: "#"            # whole-line comments only
    skip_rows: 2            # physical lines skipped before the header
    decimal: ","
    time: {column: date, format: "%d/%m/%Y %H:%M", timezone: Europe/Paris}   # or date_column + time_column
    site: {value: "Point B"}                # or {column: station}
    depth: {column: depth_m}                # metres, positive down (optional)
    layer: {value: surface}                 # or {column: lvl, codes: {S: surface, F: bottom}}
    latitude: {value: 43.69}
    longitude: {value: 7.32}
    missing_values: [-999, "NA", 999999]
    variables:
      temperature: {column: T, units: degC, flag_column: T_QC, flag_scheme: oceansites}
      nitrate: {column: NO3, units: umol/l, flag_column: NO3_flag, flag_scheme: somlit, error_sd: 0.2}

Long layout (one row per observation)::

    layout: long
    time: {column: datetime}                # ISO 8601 with or without offset when no format
    site: {column: station}
    variable_column: parameter
    value_column: value
    unit_column: unit                       # or units: {nitrate: umol/l, temperature: degC}
    flag_column: flag
    flag_scheme: qartod
    variable_names: {NO3: nitrate, TEMP: temperature}
    skip_variables: [SECCHI]                # native names deliberately not read (counted in attrs)

Policies: times are converted to UTC (``timezone``: "UTC", an IANA name through zoneinfo, or a fixed
offset "+01:00"); local times in a DST gap, or ambiguous ones that cannot be inferred from the order of
the file, are an InputError naming the line. An empty cell or a ``missing_values`` sentinel gives a row
with value NaN and qc 9 (native flag kept); a value written ``<x`` is censored at x; an unknown flag, an
unknown unit (long layout, unit column), a non-numeric value, a bad time or a record with the wrong number
of fields is an InputError naming the file, the physical line and the column. A file without a single
usable value is an InputError. Duplicated times are kept and later duplicates flagged suspect
(``twin.observations.flag_duplicates``); the table is returned sorted by time; backward time steps per site are
counted in ``attrs["time_reversals"]``.
"""
from __future__ import annotations

import csv
import difflib
import re
import zoneinfo
from datetime import timedelta, timezone as dt_timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from twin import flags
from twin.errors import ConfigError, InputError
from twin.readers._common import error_sd_table
from twin.observations import (LAYERS, flag_duplicates, make_observations, sort_observations)
from twin.units import CANONICAL_UNITS, converter

_NERRS_RE = re.compile(r"^\s*<\s*(-?\d+)\s*>")
_OFFSET_RE = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$")


def _did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_timezone(text: str):
    """A tzinfo from "UTC", an IANA name ("Europe/Paris") or a fixed offset ("+01:00", "UTC-5")."""
    if text.strip().upper() in ("UTC", "Z", "GMT"):
        return dt_timezone.utc
    m = _OFFSET_RE.match(text.strip())
    if m:
        sign = 1 if m.group(1) == "+" else -1
        return dt_timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0)))
    try:
        return zoneinfo.ZoneInfo(text.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {text!r}: use 'UTC', an IANA name such as 'Europe/Paris', "
                         "or a fixed offset such as '+01:00'") from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeSpec(_Model):
    """Where the time is: one ``column``, or ``date_column`` + ``time_column`` joined by a space."""
    column: str | None = None
    date_column: str | None = None
    time_column: str | None = None
    format: str | None = None
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        parse_timezone(v)
        return v

    @model_validator(mode="after")
    def _one_source(self):
        if (self.column is None) == (self.date_column is None):
            raise ValueError("give either 'column' or 'date_column' (+ optional 'time_column')")
        if self.time_column is not None and self.date_column is None:
            raise ValueError("'time_column' needs 'date_column'")
        return self


class FieldSpec(_Model):
    """A column of the file, or one constant ``value`` for every row."""
    column: str | None = None
    value: str | float | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.column is None) == (self.value is None):
            raise ValueError("give exactly one of 'column' or 'value'")
        return self


class LayerSpec(FieldSpec):
    """Layer as a column of native codes (translated by ``codes``) or a constant canonical layer."""
    codes: dict[str, Literal["surface", "intermediate", "bottom", "air", ""]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _layer_value(self):
        if self.value is not None and self.value not in LAYERS and str(self.value) not in self.codes:
            raise ValueError(f"layer value {self.value!r} is not one of {list(LAYERS)}")
        return self


def _check_variable(name: str) -> str:
    if name not in CANONICAL_UNITS:
        raise ValueError(f"unknown canonical variable {name!r}{_did_you_mean(name, CANONICAL_UNITS)}")
    return name


FlagSchemeName = Literal["somlit", "oceansites", "nerrs", "qartod", "none"]


class VariableSpec(_Model):
    """One variable of a wide file."""
    column: str
    units: str
    flag_column: str | None = None
    flag_scheme: FlagSchemeName = "none"
    error_sd: float | None = Field(default=None, gt=0)


class Mapping(_Model):
    """A generic CSV mapping (see the module docstring for examples)."""
    layout: Literal["wide", "long"] = "wide"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    comment: str | None = Field(default=None, min_length=1)
    skip_rows: int = Field(default=0, ge=0)
    decimal: Literal[".", ","] = "."
    encoding: str = "utf-8"
    time: TimeSpec
    site: FieldSpec
    depth: FieldSpec | None = None
    layer: LayerSpec | None = None
    latitude: FieldSpec | None = None
    longitude: FieldSpec | None = None
    missing_values: list[str | float] = Field(default_factory=list)
    # wide
    variables: dict[str, VariableSpec] = Field(default_factory=dict)
    # long
    variable_column: str | None = None
    value_column: str | None = None
    unit_column: str | None = None
    units: dict[str, str] = Field(default_factory=dict)
    flag_column: str | None = None
    flag_scheme: FlagSchemeName = "none"
    variable_names: dict[str, str] = Field(default_factory=dict)
    skip_variables: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self):
        problems = []
        for name, spec in self.variables.items():
            try:
                _check_variable(name)
                converter(name, spec.units)
            except ValueError as exc:
                problems.append(f"variables.{name}: {exc}")
        for name, unit in self.units.items():
            try:
                _check_variable(name)
                converter(name, unit)
            except ValueError as exc:
                problems.append(f"units.{name}: {exc}")
        for native, name in self.variable_names.items():
            try:
                _check_variable(name)
            except ValueError as exc:
                problems.append(f"variable_names.{native}: {exc}")
        if self.layout == "wide":
            if not self.variables:
                problems.append("variables: a wide layout needs at least one variable")
            for key in ("variable_column", "value_column", "unit_column", "flag_column"):
                if getattr(self, key) is not None:
                    problems.append(f"{key}: only for layout 'long'")
        else:
            if self.variables:
                problems.append("variables: only for layout 'wide' (long uses variable_names/units)")
            for key in ("variable_column", "value_column"):
                if getattr(self, key) is None:
                    problems.append(f"{key}: required for layout 'long'")
            if self.unit_column is None:
                names = set(self.variable_names.values()) or set()
                missing = sorted(n for n in names if n not in self.units)
                if missing or not names and not self.units:
                    problems.append(f"units: no unit_column, so every variable needs a unit (missing: "
                                    f"{missing or 'all'})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _all_field_names(model=Mapping, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for sub in (TimeSpec, FieldSpec, LayerSpec, VariableSpec):
            if sub is not model and sub not in seen and sub.__name__ in str(field.annotation):
                seen.add(sub)
                names |= _all_field_names(sub, seen)
    return names


def load_mapping(mapping: str | Path | dict | Mapping) -> Mapping:
    """Validate a mapping given as a YAML file, a dict or a Mapping; ConfigError lists every problem."""
    if isinstance(mapping, Mapping):
        return mapping
    source = "mapping"
    if isinstance(mapping, (str, Path)):
        source = str(mapping)
        try:
            raw = yaml.safe_load(Path(mapping).read_text())
        except OSError as exc:
            raise ConfigError(source, [f"cannot read mapping file: {exc.strerror or exc}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError(source, [f"invalid YAML: {exc}"]) from None
    else:
        raw = mapping
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"expected a mapping of keys, got {type(raw).__name__}"])
    try:
        return Mapping.model_validate(raw)
    except ValidationError as exc:
        valid = _all_field_names()
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            if err["type"] == "extra_forbidden":
                key = str(err["loc"][-1])
                problems.append(f"{loc}: unknown key{_did_you_mean(key, valid)}")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{loc}: {msg}")
        raise ConfigError(source, problems) from None


# --- Table helpers shared by the readers (candidates for twin.observations) -----------------------------

def time_reversals(site: np.ndarray, time: np.ndarray) -> int:
    """Number of backward time steps within each site, in file order."""
    frame = pd.DataFrame({"site": site, "t": time.astype("datetime64[ns]").astype(np.int64)})
    return int((frame.groupby("site", sort=False)["t"].diff() < 0).sum())


def map_native_flags(path, scheme: str, native: np.ndarray, lines: np.ndarray | None, field: str):
    """Native flag strings -> (qc int8, censored bool) through ``twin.flags``, one lookup per distinct value.

    Empty flags are "not evaluated"; an unknown value raises InputError naming the first line with it.
    """
    idx, uniques = pd.factorize(pd.Series(native, dtype=object), use_na_sentinel=True)
    qc_u = np.full(len(uniques) + 1, flags.NOT_EVALUATED, np.int8)
    cens_u = np.zeros(len(uniques) + 1, bool)
    for j, value in enumerate(uniques):
        text = str(value).strip()
        if text == "":
            continue
        key = text
        if scheme == "nerrs":  # CDMO strings "<0> [GIC] (CSM)": the number between <> is the flag
            found = _NERRS_RE.match(text)
            key = found.group(1) if found else text
        meaning = flags.map_flag(scheme, key)
        if meaning is not None and scheme == "nerrs" and "SBL" in text:  # below detection (see swmp.py)
            meaning = flags.FlagMeaning(flags.GOOD if key == "-4" else meaning.qc, censored=True)
        if meaning is None:
            i = int(np.argmax(idx == j))
            valid = sorted(flags.FLAG_SCHEMES[scheme])
            raise InputError(path, f"unknown {scheme} flag {text!r}; valid: {valid}",
                             line=None if lines is None else int(lines[i]), field=field)
        qc_u[j], cens_u[j] = meaning.qc, meaning.censored
    return qc_u[idx], cens_u[idx]


# --- Reading -------------------------------------------------------------------------------------------

def sniff(path: str | Path) -> bool:
    """Generic CSV is never auto-detected: it needs a mapping."""
    return False


def _records(path: Path, m: Mapping) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Header, records and the 1-based physical line of each record; InputError on a bad record."""
    try:
        text = path.read_text(encoding=m.encoding)
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not {m.encoding} text ({exc.reason} at byte {exc.start}); set 'encoding' "
                         "in the mapping") from None
    physical = text.splitlines()
    kept, numbers = [], []
    for i, line in enumerate(physical[m.skip_rows:], start=m.skip_rows + 1):
        stripped = line.strip()
        if not stripped or (m.comment and stripped.startswith(m.comment)):
            continue
        kept.append(line)
        numbers.append(i)
    if not kept:
        raise InputError(path, "empty file: no header line" + (f" after skipping {m.skip_rows} rows"
                                                              if m.skip_rows else ""))
    try:
        rows = list(csv.reader(kept, delimiter=m.delimiter))
    except csv.Error as exc:
        raise InputError(path, f"cannot parse CSV: {exc}") from None
    header = [h.strip() for h in rows[0]]
    lines = np.asarray(numbers[1:], dtype=np.int64)
    records = rows[1:]
    if not records:
        raise InputError(path, "no data rows after the header", line=numbers[0])
    widths = np.fromiter((len(r) for r in records), dtype=np.int64, count=len(records))
    bad = np.flatnonzero(widths != len(header))
    if bad.size:
        i = int(bad[0])
        what = "truncated record" if widths[i] < len(header) else "record with extra fields"
        raise InputError(path, f"{what}: expected {len(header)} fields separated by {m.delimiter!r} as in "
                         f"the header, found {widths[i]}", line=int(lines[i]))
    return header, records, lines


def _column(path: Path, frame: pd.DataFrame, name: str, delimiter: str, what: str):
    if name not in frame.columns:
        hint = _did_you_mean(name, frame.columns)
        if len(frame.columns) == 1 and any(d in frame.columns[0] for d in ",;\t|" if d != delimiter):
            hint += f" (wrong delimiter? the mapping says {delimiter!r} and the header is one column)"
        raise InputError(path, f"missing {what} column {name!r}{hint}; columns: {list(frame.columns)[:20]}",
                         line=1, field=name)
    return frame[name]


def _text(column: pd.Series) -> np.ndarray:
    """Stripped text of a column as an object array of str ("" for empty), one strip per distinct value."""
    idx, uniques = pd.factorize(column, use_na_sentinel=True)
    stripped = np.array([str(u).strip() for u in uniques] + [""], dtype=object)
    return stripped[idx]


_NA_TOKENS = {"nan", "na", "n/a"}


def _parse_values(path, text: pd.Series, m: Mapping, lines, field: str):
    """Text cells -> (float values, censored); empty cells, NA tokens and sentinels -> NaN.

    Fast path: one C-level ``pd.to_numeric`` over the column; only the cells it cannot read (empty,
    sentinel words, ``<x`` censored values, garbage) go through the string checks.
    """
    raw = text.to_numpy(dtype=object)
    series = pd.Series(raw, dtype=object)
    if m.decimal == ",":
        series = series.str.replace(",", ".", regex=False)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan, copy=True)
    censored = np.zeros(values.size, bool)
    todo = np.flatnonzero(np.isnan(values))
    if todo.size:
        sub = series.iloc[todo].fillna("").astype(str).str.strip()
        missing_text = {str(v).strip() for v in m.missing_values if isinstance(v, str)}
        missing = (sub.eq("") | sub.isin(missing_text) | sub.str.lower().isin(_NA_TOKENS)).to_numpy()
        cens = sub.str.startswith("<").to_numpy() & ~missing
        num = pd.to_numeric(sub.str.lstrip("<").str.strip().where(~missing, None), errors="coerce") \
            .to_numpy(dtype=float, na_value=np.nan)
        bad = np.isnan(num) & ~missing
        if bad.any():
            i = int(todo[np.argmax(bad)])
            raise InputError(path, f"value {raw[i]!r} is not a number (add it to missing_values if it means "
                             "missing)", line=int(lines[i]), field=field)
        values[todo] = num
        censored[todo] = cens
    missing_num = np.array([float(v) for v in m.missing_values if not isinstance(v, str)], dtype=float)
    if missing_num.size:
        values = np.where(np.isin(values, missing_num), np.nan, values)
    return values, censored & np.isfinite(values)


def _parse_time(path, frame, m: Mapping, lines, delimiter) -> np.ndarray:
    spec = m.time
    if spec.column is not None:
        text = _column(path, frame, spec.column, delimiter, "time").astype(str).str.strip()
        field = spec.column
    else:
        text = _column(path, frame, spec.date_column, delimiter, "date").astype(str).str.strip()
        field = spec.date_column
        if spec.time_column is not None:
            text = text + " " + _column(path, frame, spec.time_column, delimiter, "time").astype(str).str.strip()
    fmt = spec.format or "ISO8601"
    try:
        times = pd.to_datetime(text, format=fmt, errors="coerce", utc=False)
    except (ValueError, TypeError):  # mixed naive and offset-aware ISO strings
        times = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    bad = times.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(path, f"time {text.iloc[i]!r} does not parse with format {fmt!r}", line=int(lines[i]),
                         field=field)
    if times.dt.tz is not None:  # the file carries its own offsets
        return times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    tz = parse_timezone(spec.timezone)
    if tz is dt_timezone.utc:
        return times.to_numpy(dtype="datetime64[ns]")
    try:
        local = times.dt.tz_localize(tz, ambiguous="infer", nonexistent="raise")
    except ValueError:  # ambiguous (not inferable from the order) or non-existent local times
        marked = times.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
        i = int(np.argmax(marked.isna().to_numpy()))
        raise InputError(path, f"local time {text.iloc[i]!r} is ambiguous or does not exist in {spec.timezone} "
                         "(daylight-saving change): use a fixed offset such as '+01:00' if the logger "
                         "ignores DST", line=int(lines[i]), field=field) from None
    return local.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _field(path, frame, spec: FieldSpec | None, kind: str, numeric: bool, lines, m: Mapping):
    """A constant from the mapping, or the column's values (floats when ``numeric``, else stripped text)."""
    if spec is None:
        return None
    if spec.value is not None:
        if not numeric:
            return str(spec.value)
        try:
            return float(spec.value)
        except ValueError:
            raise ConfigError("mapping", [f"{kind}.value: expected a number, got {spec.value!r}"]) from None
    col = _column(path, frame, spec.column, m.delimiter, kind)
    if numeric:
        values, _ = _parse_values(path, col, m, lines, spec.column)
        return values
    return col.pipe(_text)


def read(path: str | Path, *, mapping: str | Path | dict | Mapping,
         error_sd: dict[str, float] | None = None) -> xr.Dataset:
    """Read a delimited text file described by ``mapping`` into the canonical observation table.

    Args:
        path: the data file.
        mapping: YAML file, dict or Mapping (schema in the module docstring).
        error_sd: observation error standard deviation per canonical variable (canonical units),
            overriding ``twin.units.DEFAULT_ERROR_SD``; a variable's ``error_sd`` in the mapping wins.

    Raises:
        ConfigError: invalid mapping. InputError: a file that does not match it (file, line, column).
    """
    path = Path(path)
    m = load_mapping(mapping)
    sd = error_sd_table(error_sd)
    header, records, lines = _records(path, m)
    frame = pd.DataFrame(records, columns=header, dtype=object)
    if frame.columns.duplicated().any():
        dup = frame.columns[frame.columns.duplicated()][0]
        raise InputError(path, f"column {dup!r} appears twice in the header", line=1, field=dup)
    n = len(frame)
    time = _parse_time(path, frame, m, lines, m.delimiter)
    site = _field(path, frame, m.site, "site", False, lines, m)
    if not isinstance(site, np.ndarray):
        site = np.full(n, str(site), dtype=object)
    elif (site == "").any():
        i = int(np.argmax(site == ""))
        raise InputError(path, "empty site", line=int(lines[i]), field=m.site.column)
    depth = _field(path, frame, m.depth, "depth", True, lines, m)
    lat = _field(path, frame, m.latitude, "latitude", True, lines, m)
    lon = _field(path, frame, m.longitude, "longitude", True, lines, m)
    layer, layer_code = "", ""
    if m.layer is not None:
        if m.layer.value is not None:
            code = str(m.layer.value)
            layer = m.layer.codes.get(code, code)
            layer_code = code if code in m.layer.codes else ""  # a constant canonical layer is not a code
        else:
            codes = pd.Series(_text(_column(path, frame, m.layer.column, m.delimiter, "layer")), dtype=object)
            table = dict(m.layer.codes) | {v: v for v in LAYERS}
            unknown = ~codes.isin(list(table))
            if unknown.any():
                i = int(np.argmax(unknown.to_numpy()))
                raise InputError(path, f"unknown layer code {codes.iloc[i]!r}; mapping layer.codes knows "
                                 f"{sorted(m.layer.codes)}", line=int(lines[i]), field=m.layer.column)
            layer_code = codes.to_numpy(dtype=object)
            layer = codes.map(table).to_numpy(dtype=object)

    def rows(sel):
        """Per-row metadata restricted to ``sel`` (scalars stay scalars)."""
        pick = lambda a: a[sel] if isinstance(a, np.ndarray) else a  # noqa: E731
        return dict(time=time[sel], site=site[sel], line=lines[sel], depth=pick(depth) if depth is not None
                    else np.nan, latitude=pick(lat) if lat is not None else np.nan,
                    longitude=pick(lon) if lon is not None else np.nan, layer=pick(layer),
                    layer_code=pick(layer_code))

    parts: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    all_rows = np.arange(n)
    if m.layout == "wide":
        for name, spec in m.variables.items():
            values, censored = _parse_values(path, _column(path, frame, spec.column, m.delimiter, "variable"),
                                             m, lines, spec.column)
            if spec.flag_column is not None:
                native = _column(path, frame, spec.flag_column, m.delimiter, "flag").pipe(_text)
                qc, flag_cens = map_native_flags(path, spec.flag_scheme, native, lines, spec.flag_column)
            else:
                native = np.full(n, "", dtype=object)
                qc, flag_cens = map_native_flags(path, spec.flag_scheme, native, lines, spec.column)
            values = converter(name, spec.units)(values)
            parts.append(dict(rows(all_rows), variable=np.full(n, name, dtype=object), value=values,
                              qc=qc, censored=censored | flag_cens, native_qc=native,
                              error_sd=np.full(n, spec.error_sd or sd[name])))
    else:
        native_var = pd.Series(_text(_column(path, frame, m.variable_column, m.delimiter, "variable")),
                               dtype=object)
        names = dict(m.variable_names)
        known = native_var.isin(list(names) + list(CANONICAL_UNITS) + list(m.skip_variables))
        if not known.all():
            i = int(np.argmax(~known.to_numpy()))
            unknown = native_var.iloc[i]
            raise InputError(path, f"unknown variable {unknown!r}{_did_you_mean(unknown, names)}; "
                             "add it to variable_names or skip_variables", line=int(lines[i]),
                             field=m.variable_column)
        skip = native_var.isin(list(m.skip_variables)).to_numpy()
        for v, c in native_var[skip].value_counts().items():
            skipped[str(v)] = int(c)
        canonical = native_var.map(lambda v: names.get(v, v)).to_numpy(dtype=object)
        values_all, censored_all = _parse_values(path, _column(path, frame, m.value_column, m.delimiter, "value"),
                                                 m, lines, m.value_column)
        if m.unit_column is not None:
            unit_all = _column(path, frame, m.unit_column, m.delimiter, "unit").pipe(_text)
        else:
            unit_all = np.array([m.units.get(v, "") for v in canonical], dtype=object)
        if m.flag_column is not None:
            native_all = _column(path, frame, m.flag_column, m.delimiter, "flag").pipe(_text)
        else:
            native_all = np.full(n, "", dtype=object)
        qc_all, flag_cens_all = map_native_flags(path, m.flag_scheme, native_all, lines,
                                                 m.flag_column or m.value_column)
        groups = pd.DataFrame({"v": canonical, "u": unit_all})[~skip].groupby(["v", "u"], sort=False).indices
        for (name, unit), idx in groups.items():
            sel = np.flatnonzero(~skip)[idx]
            try:
                convert = converter(name, unit)
            except ValueError as exc:
                raise InputError(path, str(exc), line=int(lines[sel[0]]),
                                 field=m.unit_column or f"units.{name}") from None
            parts.append(dict(rows(sel), variable=np.full(sel.size, name, dtype=object),
                              value=convert(values_all[sel]), qc=qc_all[sel],
                              censored=censored_all[sel] | flag_cens_all[sel], native_qc=native_all[sel],
                              error_sd=np.full(sel.size, sd[name])))
    if not parts:
        raise InputError(path, "no observations: every row is in skip_variables")
    columns = {}
    for key in parts[0]:
        chunks = [np.broadcast_to(np.asarray(p[key], dtype=object if isinstance(p[key], str) else None),
                                  (len(p["value"]),)) for p in parts]
        columns[key] = np.concatenate(chunks)
    value = columns["value"].astype(float)
    if not np.isfinite(value).any():
        raise InputError(path, "no values: every value is empty or a missing_values sentinel")
    columns["qc"] = np.where(np.isfinite(value), columns["qc"].astype(np.int8), flags.MISSING).astype(np.int8)
    columns["censored"] = columns["censored"].astype(bool) & np.isfinite(value)
    ds = make_observations(**columns, source=str(path))
    reversals = time_reversals(site, time)
    ds = flag_duplicates(sort_observations(ds))
    ds.attrs.update(time_reversals=reversals, skipped_variables="; ".join(f"{k}: {v} rows" for k, v in skipped.items()),
                    mapping_layout=m.layout)
    return ds

"""Writers of native formats: SOMLIT extraction CSV and COAST-HF / Coriolis-cotier CSV.

The twin experiment (OSSE) writes its synthetic observations in the real formats so that the same readers
run on synthetic and real data; the round trip writer -> reader is tested.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from twin.observations import atomic_write
from twin.units import to_canonical

# Canonical variable -> (SOMLIT code, unit written in the units row), in SOMLIT column order.
SOMLIT_COLUMNS: dict[str, tuple[str, str]] = {
    "temperature": ("T", "degC"), "salinity": ("S", "PSU"), "oxygen": ("O", "ml/l"), "ph": ("PH", ""),
    "ammonium": ("NH4", "µmol/l"), "nitrate": ("NO3", "µmol/l"), "nitrite": ("NO2", "µmol/l"),
    "phosphate": ("PO4", "µmol/l"), "silicate": ("SIOH4", "µmol/l"), "poc": ("COP", "µg/l"),
    "pon": ("NOP", "µg/l"), "spm": ("MES", "mg/l"), "delta15n": ("DN15", "‰"), "delta13c": ("DC13", "‰"),
    "chlorophyll": ("CHLA", "µg/l"),
}
SOMLIT_MISSING = 999999


def _from_canonical(variable: str, unit: str, values: np.ndarray) -> np.ndarray:
    """Inverse of the reader's conversion: canonical values back into ``unit``."""
    if not unit:
        return np.asarray(values, float)
    factor = float(to_canonical(variable, unit, [1.0])[0])
    return np.asarray(values, float) / factor


def write_somlit_native(path: str | Path, samples: pd.DataFrame, title: str = "synthetic") -> Path:
    """Write bottle samples as a SOMLIT native extraction (semicolon, metadata, units row, 999999).

    Args:
        samples: one row per bottle with columns ``time`` (UTC), ``site_id`` (int), ``site``,
            ``latitude``, ``longitude``, ``layer_code`` (S, I or F), ``depth`` (m), and for any canonical
            variable of ``SOMLIT_COLUMNS``: ``<variable>`` (canonical units, NaN when missing) and
            ``<variable>_flag`` (SOMLIT code; default 2, or 9 when the value is missing).
    """
    header = ["ID_SITE", "DATE", "HEURE", "COEF_MAREE", "MAREE", "PROF_TEXT", "PROF_NUM", "nomSite*",
              "gpsLat*", "gpsLong*"]
    units = ["", "", "", "", "", "", "m", "", "", ""]
    times = pd.DatetimeIndex(samples["time"])
    cols = [samples["site_id"].astype(int).astype(str), pd.Series(times.strftime("%Y-%m-%d")),
            pd.Series(times.strftime("%H:%M:%S")), pd.Series(["0"] * len(samples)),
            pd.Series(["inc"] * len(samples)), samples["layer_code"].astype(str),
            samples["depth"].map(lambda d: f"{d:.2f}"), samples["site"].astype(str),
            samples["latitude"].map(lambda v: f"{v:.4f}"), samples["longitude"].map(lambda v: f"{v:.5f}")]
    for variable, (code, unit) in SOMLIT_COLUMNS.items():
        header += [code, "q" + code]
        units += [unit, ""]
        if variable in samples:
            native = _from_canonical(variable, unit, samples[variable].to_numpy())
            missing = ~np.isfinite(native)
            flag = samples.get(f"{variable}_flag", pd.Series(np.full(len(samples), 2)))
            flag = np.where(missing & (flag.to_numpy() != 1) & (flag.to_numpy() != 5), 9, flag.to_numpy())
            text = np.where(missing, str(SOMLIT_MISSING), np.char.mod("%.4f", np.nan_to_num(native)))
        else:
            text = np.full(len(samples), str(SOMLIT_MISSING))
            flag = np.full(len(samples), 9)
        cols += [pd.Series(text), pd.Series(np.asarray(flag).astype(int).astype(str))]
    body = pd.concat([c.reset_index(drop=True) for c in cols], axis=1)
    lines = [f"// SOMLIT extraction hydro - {title}",
             f"// missing value code {SOMLIT_MISSING}; times UTC",
             ";".join(header), ";".join(units)]
    lines += [";".join(row) for row in body.itertuples(index=False, name=None)]
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# Canonical variable -> (Coriolis parameter code, unit as written in the header).
COASTHF_COLUMNS: dict[str, tuple[str, str]] = {
    "temperature": ("TEMP", "degree_Celsius"), "salinity": ("PSAL", "psu"), "oxygen": ("DOX1", "ml/l"),
    "fluorescence": ("FLU3", "FFU"), "chlorophyll": ("CPHL", "milligram/m3"), "turbidity": ("TUR4", "ntu"),
    "par": ("LGH4", "micro einstein m-2 s-1"), "nitrate": ("NTRA", "millimole/m3"), "wind_speed": ("WSPD", "m/s"),
}


def write_coasthf(path: str | Path, platform: str, latitude: float, longitude: float, times,
                  columns: dict[str, tuple[np.ndarray, np.ndarray]], level: int = 1,
                  levels: dict[str, int] | None = None) -> Path:
    """Write a COAST-HF / Coriolis-cotier CSV with its per-column QC string.

    Args:
        times: UTC times of the records.
        columns: canonical variable -> (values in canonical units, NaN missing; QC digits on the
            Copernicus scale, 1 good). A missing value is written as an empty cell with digit 9.
        level: the LEVEL of every column ``levels`` does not name (1 = first water level).
        levels: canonical variable -> its LEVEL (-1: above the surface, the met mast).
    """
    times = pd.DatetimeIndex(times)
    n = len(times)
    header = ["PLATFORM", "DATE (yyyy-mm-ddThh:mi:ssZ)", "LATITUDE (degree_north)", "LONGITUDE (degree_east)"]
    cells = [np.full(n, platform, dtype=object), np.asarray(times.strftime("%Y-%m-%dT%H:%M:%SZ"), dtype=object),
             np.full(n, f"{latitude:.4f}", dtype=object), np.full(n, f"{longitude:.4f}", dtype=object)]
    digits = [np.full(n, "0"), np.full(n, "1"), np.full(n, "1"), np.full(n, "1")]
    for variable, (values, qc) in columns.items():
        code, unit = COASTHF_COLUMNS[variable]
        header.append(f"{code} LEVEL{(levels or {}).get(variable, level)} ({unit})")
        native = _from_canonical(variable, unit, values)
        missing = ~np.isfinite(native)
        cells.append(np.where(missing, "", np.char.mod("%.4f", np.nan_to_num(native))).astype(object))
        digits.append(np.where(missing, "9", np.asarray(qc).astype(int).astype(str)))
    header.append("QC")
    qc_string = digits[0].astype(object)
    for d in digits[1:]:
        qc_string = qc_string + d.astype(object)
    cells.append(qc_string)
    rows = [",".join(row) for row in zip(*cells)]
    text = ",".join(header) + "\n" + "\n".join(rows) + ("\n" if rows else "")
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

"""Quality flags: the canonical QARTOD scale and the explicit mapping of every native scheme onto it.

The canonical flag is the IOOS QARTOD scale (1 good, 2 not evaluated, 3 suspect, 4 bad, 9 missing).
Native scales clash (SOMLIT 2 = good, Copernicus 2 = probably good, NERRS 0 = passed QC), so each
reader maps its own scale through one of the tables below; a native value absent from its table is an
unknown flag and is reported, never guessed. Below-detection codes map to GOOD with ``censored=True``:
the value is an upper bound, not a bad value.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

GOOD, NOT_EVALUATED, SUSPECT, BAD, MISSING = 1, 2, 3, 4, 9
# Flags of values the twin may use (assimilate, build forcing from, count as training data).
USABLE_QC = (GOOD, NOT_EVALUATED)
QARTOD_NAMES = {GOOD: "good", NOT_EVALUATED: "not_evaluated", SUSPECT: "suspect", BAD: "bad",
                MISSING: "missing"}

FlagScheme = Literal["somlit", "oceansites", "nerrs", "qartod", "none"]


class FlagMeaning(NamedTuple):
    """Canonical reading of one native flag value."""
    qc: int
    censored: bool = False


# SOMLIT quality codes (https://www.somlit.fr/en/quality-codes/).
SOMLIT_FLAGS: dict[str, FlagMeaning] = {
    "0": FlagMeaning(GOOD, censored=True),  # below detection limit, value = detection limit
    "1": FlagMeaning(MISSING),              # sampled, not measured
    "2": FlagMeaning(GOOD),
    "3": FlagMeaning(SUSPECT),              # questionable
    "4": FlagMeaning(BAD),
    "5": FlagMeaning(MISSING),              # sampled, value not yet reported
    "6": FlagMeaning(GOOD),                 # good, mean of replicates
    "7": FlagMeaning(GOOD),                 # good but outside SOMLIT protocol
    "8": FlagMeaning(NOT_EVALUATED),        # not yet flagged
    "9": FlagMeaning(MISSING),              # no sample
}

# Copernicus / OceanSITES / Coriolis-cotier (COAST-HF) reference table 2.
OCEANSITES_FLAGS: dict[str, FlagMeaning] = {
    "0": FlagMeaning(NOT_EVALUATED),        # no QC performed
    "1": FlagMeaning(GOOD),
    "2": FlagMeaning(GOOD),                 # probably good
    "3": FlagMeaning(SUSPECT),              # bad, potentially correctable
    "4": FlagMeaning(BAD),
    "5": FlagMeaning(GOOD),                 # value changed (corrected)
    "6": FlagMeaning(GOOD, censored=True),  # below detection
    "7": FlagMeaning(SUSPECT),              # nominal value, not measured
    "8": FlagMeaning(SUSPECT),              # interpolated, not measured
    "9": FlagMeaning(MISSING),
}

# NERRS CDMO numeric flags, the number between <> in strings like "<0> [GIC] (CSM)".
NERRS_FLAGS: dict[str, FlagMeaning] = {
    "-5": FlagMeaning(BAD),                 # outside high sensor range
    "-4": FlagMeaning(BAD),                 # outside low sensor range
    "-3": FlagMeaning(BAD),                 # rejected by QAQC
    "-2": FlagMeaning(MISSING),
    "-1": FlagMeaning(MISSING),             # optional parameter not collected
    "0": FlagMeaning(GOOD),                 # passed initial QAQC
    "1": FlagMeaning(SUSPECT),
    "2": FlagMeaning(NOT_EVALUATED),        # reserved by CDMO, never a pass
    "3": FlagMeaning(GOOD),                 # calculated from good inputs
    "4": FlagMeaning(NOT_EVALUATED),        # historical data, pre-2007 QAQC programme
    "5": FlagMeaning(GOOD),                 # corrected
}

QARTOD_FLAGS: dict[str, FlagMeaning] = {
    "1": FlagMeaning(GOOD), "2": FlagMeaning(NOT_EVALUATED), "3": FlagMeaning(SUSPECT),
    "4": FlagMeaning(BAD), "9": FlagMeaning(MISSING),
}

FLAG_SCHEMES: dict[str, dict[str, FlagMeaning]] = {
    "somlit": SOMLIT_FLAGS,
    "oceansites": OCEANSITES_FLAGS,
    "nerrs": NERRS_FLAGS,
    "qartod": QARTOD_FLAGS,
}


def map_flag(scheme: str, native: str) -> FlagMeaning | None:
    """Canonical meaning of a native flag, or None when the value is not in the scheme's table.

    Args:
        scheme: one of FLAG_SCHEMES, or "none" (no flags delivered: every value is not evaluated).
        native: the flag as delivered, as text ("2", "<0>", "-3").
    """
    if scheme == "none":
        return FlagMeaning(NOT_EVALUATED)
    try:
        table = FLAG_SCHEMES[scheme]
    except KeyError:
        raise ValueError(f"unknown flag scheme {scheme!r}; valid: {sorted(FLAG_SCHEMES) + ['none']}") from None
    key = native.strip()
    if key.endswith(".0"):  # a flag column read as float
        key = key[:-2]
    return table.get(key)


def worst(*flag_arrays):
    """Worst-wins aggregation on the QARTOD scale: missing > bad > suspect > good > not evaluated.

    Works elementwise on integer arrays of equal shape. Not evaluated only survives when nothing
    evaluated the value.
    """
    import numpy as np
    rank = np.zeros(10, np.int8)  # indexed by flag value
    rank[[NOT_EVALUATED, GOOD, SUSPECT, BAD, MISSING]] = [0, 1, 2, 3, 4]
    by_rank = np.array([NOT_EVALUATED, GOOD, SUSPECT, BAD, MISSING], np.int8)
    stacked = np.stack([np.asarray(f, dtype=np.int64) for f in flag_arrays])
    return by_rank[rank[stacked].max(axis=0)]

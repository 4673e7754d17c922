"""What happened to every observation ever ingested: one disposition code per ledger row.

Codes 0-5 are the filter's (``assimilation.dispositions``); the twin adds the reasons an observation never
reaches the filter. Nothing is dropped: every row of the ledger carries one of these.
"""
from __future__ import annotations

from assimilation.dispositions import (ASSIMILATED, BAD_QC, DISPOSITION_NAMES as FILTER_NAMES,
                                       INVALID_FOR_TRANSFORM, MISSING, OUTSIDE_DOMAIN, REJECTED_OUTLIER)

NOT_STATE_VARIABLE = 10   # a variable the state does not carry (temperature, salinity: they are forcing)
OUTSIDE_PERIOD = 11       # before the first or after the last model day of the run
WITHHELD = 12             # kept out on purpose for validation (scored, never assimilated)
DUPLICATE = 13            # a later replicate of an observation already used
LATE = 14                 # arrived after its analysis was done (operational cycles)
NOT_YET_CYCLED = 15       # within the period but no analysis has reached its time yet

DISPOSITION_NAMES: dict[int, str] = {
    **FILTER_NAMES,
    NOT_STATE_VARIABLE: "not_state_variable",
    OUTSIDE_PERIOD: "outside_period",
    WITHHELD: "withheld",
    DUPLICATE: "duplicate",
    LATE: "late",
    NOT_YET_CYCLED: "not_yet_cycled",
}

__all__ = ["ASSIMILATED", "MISSING", "BAD_QC", "OUTSIDE_DOMAIN", "INVALID_FOR_TRANSFORM", "REJECTED_OUTLIER",
           "NOT_STATE_VARIABLE", "OUTSIDE_PERIOD", "WITHHELD", "DUPLICATE", "LATE", "NOT_YET_CYCLED",
           "DISPOSITION_NAMES"]

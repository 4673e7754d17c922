"""Disposition codes: what happened to each observation slot in a cycle.

One small int per observation, recorded in the observation ledger. The codes are checked in this order,
and the first that applies wins:

====  ==========================  ==============================================================
code  name                        meaning
====  ==========================  ==============================================================
1     ``MISSING``                 empty slot: masked, padding, non-finite value or error sd <= 0
2     ``BAD_QC``                  rejected by upstream quality control (``qc_ok`` False)
3     ``OUTSIDE_DOMAIN``          state index outside the state, or non-finite forward operator
4     ``INVALID_FOR_TRANSFORM``   value <= 0 for an observation of a log-transformed variable
5     ``REJECTED_OUTLIER``        gross-error check: |y - H x| > k sqrt(HPH^T + R)
0     ``ASSIMILATED``             used in the analysis
====  ==========================  ==============================================================

(DART's QC codes play the same role: its 7 "outlier threshold" is our 5, its 6 "incoming QC" our 2.)
"""
from __future__ import annotations

ASSIMILATED = 0
MISSING = 1
BAD_QC = 2
OUTSIDE_DOMAIN = 3
INVALID_FOR_TRANSFORM = 4
REJECTED_OUTLIER = 5

DISPOSITION_NAMES: dict[int, str] = {
    ASSIMILATED: "assimilated",
    MISSING: "missing",
    BAD_QC: "bad_qc",
    OUTSIDE_DOMAIN: "outside_domain",
    INVALID_FOR_TRANSFORM: "invalid_for_transform",
    REJECTED_OUTLIER: "rejected_outlier",
}
NUM_DISPOSITIONS = len(DISPOSITION_NAMES)

"""From the observation ledger to the filter's per-cycle observation arrays, and back.

Cycle ``i`` forecasts from ``day0 + i`` days to ``day0 + i + 1`` days and analyses there; an observation
belongs to the cycle whose analysis time is nearest (at most 12 h away). Within a cycle, the usable
observations of one series (source, state element) are averaged into one super-observation: a buoy's 24
hourly values are not 24 independent pieces of information. The super-observation's error keeps the
representativeness part of the error whole and divides only the instrument part by the number of values:
``sd = e * sqrt(r^2 + (1 - r^2) / n)`` with ``r = representativeness_fraction``.

Below-detection (censored) values are assimilated as half the detection limit with an error sd of half the
detection limit (a uniform value between 0 and the limit has about that spread), not dropped.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from assimilation.types import Observations
from twin import dispositions as disp
from twin import flags
from twin.state_layout import OBSERVABLE, StateLayout



class CycleObservations(NamedTuple):
    """Observations of every cycle, padded to ``m`` slots, with the map back to the ledger.

    Attributes:
        obs: Observations with arrays of shape (T, m) (numpy; the filter takes them as they are).
        slot_group: (T, m) super-observation id of each slot, -1 for padding.
        row_group: (n_rows,) super-observation id of each ledger row, -1 when it never reaches the filter.
        disposition: (n_rows,) code of the rows that never reach the filter (twin.dispositions), -1 for the
            rows that do (their code comes from the filter after the run).
        group_cycle, group_state_index, group_value, group_error_sd, group_count: per super-observation.
    """
    obs: Observations
    slot_group: np.ndarray
    row_group: np.ndarray
    disposition: np.ndarray
    group_cycle: np.ndarray
    group_state_index: np.ndarray
    group_value: np.ndarray
    group_error_sd: np.ndarray
    group_count: np.ndarray


def cycle_of(times: np.ndarray, day0: np.datetime64) -> np.ndarray:
    """Cycle number of each time (nearest analysis time ``day0 + cycle + 1`` days)."""
    days = (np.asarray(times, "datetime64[ns]") - np.datetime64(day0, "ns")) / np.timedelta64(1, "D")
    return np.floor(days + 0.5).astype(np.int64) - 1


def build_cycle_observations(table: xr.Dataset, layout: StateLayout, day0: np.datetime64, num_cycles: int,
                             *, withheld: np.ndarray | None = None, representativeness_fraction: float = 0.7,
                             min_slots: int = 1, sensor: np.ndarray | None = None) -> CycleObservations:
    """Bin the ledger into per-cycle super-observations for the filter.

    Args:
        table: canonical observation table (after QC and duplicate flagging), n_rows rows.
        layout: the twin's state layout.
        day0: UTC midnight of the initial state.
        num_cycles: T, one per day.
        withheld: (n_rows,) bool, rows kept out for validation.
        representativeness_fraction: share of an observation's error that averaging does not reduce.
        sensor: (n_rows,) the sensor each row comes from ("" for none; ``twin.ingest.sensor_of_rows``):
            required when the layout carries sensor offsets, whose sensors' rows see their readings.
    """
    n = table.sizes["obs"]
    variable = table["variable"].values.astype(str)
    site = table["site"].values.astype(str)
    layer = table["layer"].values.astype(str)
    if layout.sensors and sensor is None:
        raise ValueError(f"the layout carries sensor offsets {list(layout.sensors)}: pass each row's sensor")
    sensor = np.full(n, "") if sensor is None else np.asarray(sensor).astype(str)
    qc = table["qc"].values
    # A sensor whose offset the twin estimates is not stopped for drifting: the offset is that drift.
    offset_rows = np.zeros(n, bool)
    for name, state_variable in layout.sensors:
        offset_rows |= (sensor == name) & np.isin(variable, [v for v, s in OBSERVABLE.items() if s == state_variable])
    if offset_rows.any():
        from twin.qc import qc_without
        qc = np.where(offset_rows, qc_without(table, ("reference_drift",)), qc)
    value = table["value"].values.astype(np.float64)
    error_sd = table["error_sd"].values.astype(np.float64)
    censored = table["censored"].values.astype(bool)
    source = table["source"].values.astype(str)

    keys = list(zip(variable, site, layer, sensor))
    lookup = {k: layout.observation_index(*k[:3], sensor=k[3] or None) for k in set(keys)}
    state_index = np.array([lookup[k] for k in keys], np.int64) if n else np.zeros(0, np.int64)
    cycle = cycle_of(table["time"].values, day0)

    code = np.full(n, -1, np.int64)
    withheld = np.zeros(n, bool) if withheld is None else np.asarray(withheld, bool)
    # Order matters: the first reason that applies is the one recorded.
    code[qc == flags.MISSING] = disp.MISSING
    not_state = (state_index < 0) & (code < 0)
    code[not_state & np.isin(site, layout.sites) & np.isin(layer, layout.layers)] = disp.NOT_STATE_VARIABLE
    code[(state_index < 0) & (code < 0)] = disp.OUTSIDE_DOMAIN
    code[(code < 0) & ((cycle < 0) | (cycle >= num_cycles))] = disp.OUTSIDE_PERIOD
    code[(code < 0) & withheld] = disp.WITHHELD
    is_duplicate = (qc == flags.SUSPECT) & _marked_duplicate(table)
    code[(code < 0) & is_duplicate] = disp.DUPLICATE
    code[(code < 0) & ~np.isin(qc, flags.USABLE_QC)] = disp.BAD_QC
    code[(code < 0) & ~(np.isfinite(error_sd) & (error_sd > 0))] = disp.MISSING

    use = code < 0
    obs_value = np.where(censored, 0.5 * value, value)
    obs_sd = np.where(censored, np.maximum(error_sd, 0.5 * value), error_sd)
    frame = pd.DataFrame({"cycle": cycle[use], "state_index": state_index[use], "source": source[use],
                          "value": obs_value[use], "sd": obs_sd[use]})
    grouped = frame.groupby(["cycle", "state_index", "source"], sort=True)
    group_id = grouped.ngroup().to_numpy()
    stats = grouped.agg(value=("value", "mean"), sd=("sd", "median"), count=("value", "size")).reset_index()
    r = representativeness_fraction
    count = stats["count"].to_numpy()
    group_sd = stats["sd"].to_numpy() * np.sqrt(r**2 + (1.0 - r**2) / count)

    row_group = np.full(n, -1, np.int64)
    row_group[use] = group_id
    g_cycle = stats["cycle"].to_numpy(np.int64)
    per_cycle = np.bincount(g_cycle, minlength=num_cycles) if g_cycle.size else np.zeros(num_cycles, int)
    m = max(int(per_cycle.max(initial=0)), min_slots)
    slot_group = np.full((num_cycles, m), -1, np.int64)
    if g_cycle.size:
        order = np.argsort(g_cycle, kind="stable")
        starts = np.concatenate([[0], np.cumsum(per_cycle)[:-1]])
        slot = np.arange(order.size) - starts[g_cycle[order]]
        slot_group[g_cycle[order], slot] = order
    filled = slot_group >= 0
    gi = np.where(filled, slot_group, 0)
    values = stats["value"].to_numpy()
    sidx = stats["state_index"].to_numpy(np.int64)

    def gather(arr, fill):
        return np.where(filled, arr[gi], fill) if arr.size else np.full(slot_group.shape, fill)

    obs = Observations(
        value=gather(values, np.nan).astype(np.float32),
        error_sd=gather(group_sd, 1.0).astype(np.float32),
        state_index=gather(sidx, 0).astype(np.int32),
        mask=filled, qc_ok=filled.copy())
    return CycleObservations(obs, slot_group, row_group, code, g_cycle, sidx, values, group_sd, count)


def _marked_duplicate(table: xr.Dataset) -> np.ndarray:
    from twin.observations import mark_duplicates
    qc = table["qc"].values.copy()
    qc[qc == flags.SUSPECT] = flags.GOOD  # re-run the duplicate rule on the rows flagged suspect
    return mark_duplicates(table.assign(qc=("obs", qc)))


def row_dispositions(cycle_obs: CycleObservations, slot_disposition: np.ndarray) -> np.ndarray:
    """Disposition of every ledger row: the twin's own code, or the filter's code of its super-observation.

    Args:
        slot_disposition: (T, m) codes returned by the filter for every slot.
    """
    group_code = np.full(cycle_obs.group_cycle.size, disp.MISSING, np.int64)
    filled = cycle_obs.slot_group >= 0
    group_code[cycle_obs.slot_group[filled]] = np.asarray(slot_disposition)[filled]
    out = cycle_obs.disposition.copy()
    to_filter = out < 0
    out[to_filter] = group_code[cycle_obs.row_group[to_filter]]
    return out

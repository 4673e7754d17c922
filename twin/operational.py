"""Operational twin cycles on a store: ``twin init``, ``twin cycle``, ``twin status``, ``twin forecast``.

A cycle, under the store's lock: read the files that are new by content (SHA-256 of the file; rows already in
the ledger are skipped row by row, so a growing export only adds its new rows); qualify the rows not yet
assimilated (QC over the last ``QC_CONTEXT_DAYS`` of the ledger); run every daily analysis whose ±12 h window
the data now cover (or up to ``--until``), one ``run_window`` call per day with the same per-cycle keys as the
hindcast, so N cycles then N more equal 2N in a row bit for bit; record each observation's disposition and
its innovation over the forecast spread (the twin's own check of new data); forecast ``forecast_days`` ahead;
evaluate the alerts; write new versioned files and the manifest last.

Policies:
- Late data (a row whose analysis time has already been cycled) stay in the ledger with disposition ``late``;
  they are not assimilated by the running twin (it does not go back in time) and enter the next reanalysis
  (``twin hindcast`` over the same files assimilates them).
- A file that cannot be read is reported and not registered, so the next cycle tries it again; the rest is
  assimilated.
- Forcing is built causally (``hindcast.forcing_mode: causal``): a day's forcing uses no later observation,
  so what the store cycled does not change when later data arrive. Forecast days carry the last observed
  values forward (up to ``forcing_max_gap_days``), then the fallback of the causal rule.
"""
from __future__ import annotations

import datetime
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from twin import dispositions as disp
from twin import flags
from twin.config import TwinConfig, dump_config, load_config
from twin.errors import InputError
from twin.store import Store, StoreError, file_digest, require_store

QC_CONTEXT_DAYS = 30
SLOT_QUANTUM = 32       # observation slots per cycle are padded to a multiple of this (fewer recompiles)
SUSPECT_Z = 3.0         # |innovation| / expected spread above which a new observation is reported suspect
DRIFT_DAYS = 30         # window of the running mean innovation per series (sensor drift)
DRIFT_LIMIT = 1.0       # |mean normalised innovation| above which a series is reported drifting
LEDGER_EXTRA = {"qc_read": np.int8, "disposition": np.int16, "cycle": np.int32, "ingested": np.int32,
                "twin_z": np.float32, "row_key": np.uint64, "file_digest": str}


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[twin] {message}", file=sys.stderr, flush=True)


def _operational_config(config: TwinConfig) -> TwinConfig:
    hindcast = config.hindcast.model_copy(update={"forcing_mode": "causal"})
    return config.model_copy(update={"hindcast": hindcast})


def _day0(config: TwinConfig) -> np.datetime64:
    if config.hindcast.start is not None:
        return np.datetime64(config.hindcast.start, "D").astype("datetime64[ns]")
    if config.experiment is not None:
        return np.datetime64(config.experiment.start, "D").astype("datetime64[ns]")
    raise StoreError("an operational store needs a start date: set hindcast.start in the config")


def store_layout(config: TwinConfig):
    from twin.state_layout import StateLayout
    num_layers = 2 if any("bottom" in s.layers for s in config.sites) else 1
    return StateLayout.for_config(config, num_layers)


def store_sites(config: TwinConfig, layout):
    from twin.forecast import site_struct, stack_sites
    return stack_sites([site_struct(s, layout.num_layers) for s in config.sites])


# --- init --------------------------------------------------------------------------------------------


def init_store(store_dir: str | Path, config: TwinConfig, *, from_hindcast: str | Path | None = None,
               quiet: bool = False) -> dict[str, Any]:
    """Create a store: resolved config, emulator, initial ensemble, empty ledger, manifest."""
    from emulators.checkpoint import save_checkpoint
    from emulators.process_model import initial_state
    from twin.emulator_source import obtain_emulator
    from twin.forecast import initial_ensemble, state_ar1
    store = Store(store_dir)
    if store.exists():
        raise StoreError(f"{store.root}: a store already exists here (remove it or choose another folder)")
    if config.model.process_params == "truth":
        raise StoreError("model.process_params 'truth' (a perfect-model twin) is a hindcast experiment; an "
                         "operational store runs the process model with its default parameters")
    store.root.mkdir(parents=True, exist_ok=True)
    with store.lock(timeout_s=5):
        if config.experiment is not None:
            from twin.hindcast import experiment_sources
            config, _ = experiment_sources(config, store.root / "experiment", quiet)
        if not config.sites:
            raise StoreError("the config names no sites: add a 'sites' list (name, latitude, longitude)")
        config = _operational_config(config)
        layout = store_layout(config)
        config = _resolve_store_boundaries(config, layout, quiet)
        if config.hindcast.calibrate_chlorophyll:
            # Calibration needs passes over a history the store does not have yet.
            _log("hindcast.calibrate_chlorophyll is a hindcast option: the store takes sites[].chlorophyll_scale "
                 "and chlorophyll_seasonal as given (" + "; ".join(
                     f"{s.name} {dict(s.chlorophyll_scale) or 'none'}, {dict(s.chlorophyll_seasonal) or 'none'}"
                     for s in config.sites)
                 + "); initialise it from a hindcast's resolved_config.yaml to use that run's estimate", quiet)
        day0 = _day0(config)
        emulator = obtain_emulator(config, None, quiet) if config.model.kind == "emulator" else None
        if emulator is not None:
            save_checkpoint(store.path("emulator-0"), emulator)
        key = jax.random.PRNGKey(config.seed)
        cycles_done = 0
        site_state = np.tile(np.asarray(initial_state(layout.num_layers))[None], (len(layout.sites), 1))
        members = initial_ensemble(jax.random.fold_in(key, 0), layout, config.filter.members, site_state,
                                   config.filter.initial_spread, **state_ar1(config, layout))
        if from_hindcast is not None:
            members, cycles_done, day0 = _ensemble_from_hindcast(Path(from_hindcast), layout, config, key)
        text = dump_config(config)
        from twin.observations import atomic_write
        atomic_write(store.path("config.yaml"), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        files = {"state": store.save_arrays("state-0.npz", _state_arrays(members, None, cycles_done)),
                 "ledger": _save_ledger(store, _empty_ledger(), 0),
                 "history": store.save_arrays("history-0.npz", {}),
                 "alerts": store.save_json("alerts-0.json", [])}
        if emulator is not None:
            files["emulator"] = "emulator-0"
        manifest = {"seq": 0, "cycles_done": cycles_done, "day0": str(day0)[:10], "seed": config.seed,
                    "slots": SLOT_QUANTUM, "registry": {}, "files": files, "refits": [],
                    "history_first_cycle": cycles_done,
                    "created": _now(), "last_cycle": None}
        store.write_manifest(manifest)
    _log(f"store {store.root}: {len(layout.sites)} site(s), {layout.dim} state elements, day 0 {str(day0)[:10]}, "
         f"{cycles_done} cycles done", quiet)
    return manifest


def _resolve_store_boundaries(config: TwinConfig, layout, quiet: bool) -> TwinConfig:
    """Each ``boundary_from_data`` site's offshore water from the data its sources hold now, written into the
    store's config (``offshore_water``): the boundary stays fixed while the store cycles, so its compiled
    cycle is reused (re-initialise the store to take a new one). Without data, the generic shelf's."""
    if not any(s.boundary_from_data for s in config.sites):
        return config
    from twin.hindcast import resolve_boundaries
    from twin.observations import flag_duplicates, sort_observations
    from twin.qc import apply_qc
    table, _, errors = read_new_rows(config, {"registry": {}}, _empty_ledger(), (), 0)
    for err in errors:
        _log(f"boundary from data: {err['file']}: {err['error']}", quiet)
    if table is None:
        _log("boundary from data: no observations yet; the generic shelf's offshore water", quiet)
        return config
    table = apply_qc(sort_observations(flag_duplicates(table)), config.qc)
    config, report = resolve_boundaries(config, table, layout.layers)
    for site, values in report.items():
        _log(f"{site} from data: " + (", ".join(f"{k} {v:.3g}" for k, v in values.items()) or "none"), quiet)
    return config


def _ensemble_from_hindcast(directory: Path, layout, config: TwinConfig, key):
    """Members drawn around the last analysis of a hindcast's reanalysis.nc (``members_around``: log-normally,
    the model biases, sensor offsets and parameter factors normally)."""
    path = directory / "reanalysis.nc"
    if not path.exists():
        raise InputError(path, "no reanalysis.nc: --from-hindcast needs a finished hindcast output folder")
    with xr.open_dataset(path, engine="netcdf4") as ds:
        ds = ds.load()
    sites, layers = list(ds["site"].values.astype(str)), list(ds["layer"].values.astype(str))
    mean = np.zeros(layout.dim, np.float32)
    sd = np.zeros(layout.dim, np.float32)
    for v, s, layer in layout.variables():
        if v not in ds or s not in sites or layer not in layers:
            raise InputError(path, f"the hindcast has no {v} at {s}/{layer}: it was not run with this config")
        i = layout.index(v, s, layer)
        mean[i] = float(ds[v].values[-1, sites.index(s), layers.index(layer)])
        sd[i] = float(ds[f"{v}_sd"].values[-1, sites.index(s), layers.index(layer)])
    from twin.forecast import members_around
    noise = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (config.filter.members, layout.dim)))
    members = members_around(mean, sd, layout, noise)
    day0 = np.datetime64(str(ds["time"].values[0])[:10]) - np.timedelta64(1, "D")
    return jnp.asarray(members, jnp.float32), int(ds.sizes["time"]), day0.astype("datetime64[ns]")


def _state_arrays(members, inflation, cycles_done: int) -> dict[str, np.ndarray]:
    from assimilation import initial_inflation_state
    inflation = inflation or initial_inflation_state()
    return {"members": np.asarray(members), "cycles_done": np.asarray(cycles_done),
            **{f"inflation_{k}": np.asarray(v) for k, v in inflation._asdict().items()}}


def load_state(store: Store, manifest):
    from assimilation.types import InflationState
    arrays = store.load_arrays(manifest["files"]["state"])
    inflation = InflationState(**{k: jax.device_put(arrays[f"inflation_{k}"]) for k in InflationState._fields})
    return jax.device_put(arrays["members"]), inflation


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --- ledger ------------------------------------------------------------------------------------------


def _empty_ledger() -> xr.Dataset:
    from twin.observations import empty_observations
    table = empty_observations()
    n = table.sizes["obs"]
    return table.assign({k: ("obs", np.zeros(n, dt if dt is not str else object)) for k, dt in LEDGER_EXTRA.items()})


_CATEGORIES = "__categories"


def _save_ledger(store: Store, ledger: xr.Dataset, seq: int) -> str:
    """The ledger as NumPy arrays: NetCDF's variable-length strings cost seconds per cycle on a large
    ledger. Text columns are stored as int32 codes into their distinct values (a file digest or source
    path repeats on every row of its file: 400 bytes a row as fixed-width text). ``twin status`` and the
    hindcast products give the ledger as CF NetCDF."""
    arrays = {}
    for k, v in ledger.data_vars.items():
        if v.dtype == object:
            codes, categories = pd.factorize(np.asarray([str(x) for x in v.values], dtype=object))
            arrays[k] = codes.astype(np.int32)
            arrays[k + _CATEGORIES] = np.asarray(categories, dtype=str)
        else:
            arrays[k] = v.values
    arrays["time"] = ledger["time"].values
    return store.save_arrays(f"ledger-{seq}.npz", arrays)


def load_ledger(store: Store, manifest) -> xr.Dataset:
    arrays = store.load_arrays(manifest["files"]["ledger"])
    time_ = arrays.pop("time")
    columns = {}
    for k, v in arrays.items():
        if k.endswith(_CATEGORIES):
            continue
        if k + _CATEGORIES in arrays:
            categories = arrays[k + _CATEGORIES].astype(object)
            v = categories[v] if categories.size else np.empty(v.shape, object)
        columns[k] = ("obs", v)
    return xr.Dataset(columns, coords={"time": ("obs", time_)})


def row_keys(table: xr.Dataset) -> np.ndarray:
    """A 64-bit content key per row (site, layer, depth, variable, time, value, native flag)."""
    frame = pd.DataFrame({k: table[k].values for k in ("site", "layer", "depth", "variable", "time", "value",
                                                       "native_qc")})
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64)


def _source_for(path: Path, config: TwinConfig):
    """The config source a file belongs to (``twin.ingest.config_source_of``), else a plain source of the
    detected format."""
    from twin.config import SourceConfig
    from twin.ingest import config_source_of
    return config_source_of(path, config.sources) or SourceConfig(path=str(path))


def _candidate_files(config: TwinConfig, data: tuple[str, ...]) -> list[Path]:
    import glob
    found: list[Path] = []
    for source in config.sources:
        if any(ch in source.path for ch in "*?["):
            found += sorted(Path(p) for p in glob.glob(source.path, recursive=True))
        elif Path(source.path).exists():
            found.append(Path(source.path))
    for item in data:
        p = Path(item)
        found += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    seen, unique = set(), []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def read_new_rows(config: TwinConfig, manifest, ledger: xr.Dataset, data: tuple[str, ...], seq: int):
    """New rows from files not yet registered; returns (table or None, registrations, errors)."""
    from twin.ingest import canonical_site_names, read_source_file
    from twin.observations import concat_observations
    registry = manifest["registry"]
    tables, registered, errors = [], {}, []
    known = set(ledger["row_key"].values.tolist())
    for path in _candidate_files(config, data):
        try:
            digest = file_digest(path)
        except OSError as err:
            errors.append({"file": str(path), "error": f"unreadable: {err}"})
            continue
        if digest in registry or digest in registered:
            continue
        source = _source_for(path, config)
        try:
            table = read_source_file(path, source, config)
        except Exception as err:  # noqa: BLE001 - any reader failure: report, retry next cycle
            errors.append({"file": str(path), "error": str(err)})
            continue
        table = canonical_site_names(table, config)
        keys = row_keys(table)
        new = ~np.isin(keys, list(known)) if known else np.ones(keys.size, bool)
        table = table.isel(obs=np.flatnonzero(new))
        n = table.sizes["obs"]
        table = table.assign(row_key=("obs", keys[new]), file_digest=("obs", np.full(n, digest, object)))
        registered[digest] = {"file": str(path), "rows": int(n), "seq": seq}
        if n:
            tables.append(table)
    if not tables:
        return None, registered, errors
    return concat_observations(tables), registered, errors


def _append(ledger: xr.Dataset, new: xr.Dataset, seq: int) -> xr.Dataset:
    from twin.observations import concat_observations
    n = new.sizes["obs"]
    new = new.assign(qc_read=("obs", new["qc"].values.astype(np.int8)),
                     disposition=("obs", np.full(n, disp.NOT_YET_CYCLED, np.int16)),
                     cycle=("obs", np.full(n, -1, np.int32)), ingested=("obs", np.full(n, seq, np.int32)),
                     twin_z=("obs", np.full(n, np.nan, np.float32)))
    return concat_observations([ledger, new]) if ledger.sizes["obs"] else new


def requalify(ledger: xr.Dataset, config: TwinConfig) -> xr.Dataset:
    """QC of the rows not yet assimilated, in the context of the ledger's last ``QC_CONTEXT_DAYS`` days (the
    hindcast's tests, on the same series); the flags of rows already decided do not change."""
    from twin.observations import flag_duplicates, sort_observations
    from twin.qc import apply_qc
    pending = ledger["disposition"].values == disp.NOT_YET_CYCLED
    if not pending.any():
        return ledger
    times = ledger["time"].values
    start = times[pending].min() - np.timedelta64(QC_CONTEXT_DAYS, "D")
    context = np.flatnonzero(times >= start)
    sub = ledger.isel(obs=context)
    sub = sub.assign(qc=("obs", sub["qc_read"].values), position=("obs", context))
    sub = sort_observations(flag_duplicates(sub))
    sub = apply_qc(sub, config.qc, only_series_of=pending[sub["position"].values])
    qc = ledger["qc"].values.copy()
    position = sub["position"].values
    take = pending[position]
    qc[position[take]] = sub["qc"].values[take]
    return ledger.assign(qc=("obs", qc))


# --- cycle -------------------------------------------------------------------------------------------


def _target_cycles(ledger: xr.Dataset, day0, cycles_done: int, until) -> int:
    """Cycles done after this call: every analysis whose ±12 h window the newest row has passed, or up to
    ``until``; never fewer than now."""
    if until is not None:
        days = (np.datetime64(until, "ns") - day0) / np.timedelta64(1, "D")
        return max(cycles_done, int(np.floor(days)))
    if not ledger.sizes["obs"]:
        return cycles_done
    newest = ledger["time"].values.max()
    days = (newest - day0) / np.timedelta64(1, "D")
    return max(cycles_done, int(np.floor(days - 0.5)))


def store_forcing(config, ledger, layout, day0, num_days):
    from twin.forcing_builder import build_site_forcing
    from twin.forecast import site_struct
    usable = ledger.isel(obs=np.flatnonzero(np.isin(ledger["qc"].values, flags.USABLE_QC)))
    try:
        per_site = [build_site_forcing(usable, s.name, s.latitude, layout.layers, day0, num_days, longitude=s.longitude,
                                       max_gap_days=config.hindcast.forcing_max_gap_days, mode="causal",
                                       river=s.river, model_site=site_struct(s, layout.num_layers))[0]
                    for s in config.sites]
        # NumPy, not device arrays: the series grow by a day each cycle, and stacking or slicing device
        # arrays of a new shape would compile new programs in every cycle's process.
        per_site = [jax.tree.map(np.asarray, f) for f in per_site]
        return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *per_site)
    except ValueError as err:
        raise StoreError(f"cannot build the forcing yet: {err}; feed temperature and salinity data "
                         "(twin cycle STORE --data ...)") from None


def store_model(store: Store, manifest, config: TwinConfig, layout, sites, key: str | None = None):
    """(forecast function, emulator or None, stepper) of the store's model.

    Memoised by ``model_key`` (config and emulator content): the forecast function is a static argument
    of the compiled cycle and forecast, so a new function object every cycle would compile them anew every
    cycle (and fill a long-lived process with executables). ``key``: ``model_key`` when the caller has it."""
    return _store_model(str(store.root), manifest["files"].get("emulator"), key or model_key(store, manifest),
                        config, layout, sites)


def model_key(store: Store, manifest) -> str:
    """What the store's forecast model is made of: its config, its emulator's weights (by content, so
    stores with the same config and emulator share compiled programs) and the emulator's calibrated
    parameter inputs (a refit may change only those; the compiled programs hold them as constants)."""
    import json
    text = store.path("config.yaml").read_text(encoding="utf-8")
    emulator = manifest["files"].get("emulator")
    digest = None
    if emulator is not None:
        metadata = json.loads((store.path(emulator) / "metadata.json").read_text(encoding="utf-8"))
        digest = f"{metadata['arrays_sha256']}|{json.dumps(metadata.get('parameter_values', {}), sort_keys=True)}"
    return f"{digest}|{text}"


_MODELS: dict[str, tuple] = {}


def _store_model(root: str, emulator_name: str | None, key: str, config, layout, sites):
    from twin.forecast import (chlorophyll_scales, configured_process_params, emulator_log_error_sd,
                               emulator_stepper, make_forecast, offshore_seasonal, process_stepper, state_ar1)
    from twin.hindcast import process_log_error_sd
    if key in _MODELS:
        return _MODELS[key]
    if len(_MODELS) >= 4:
        _MODELS.pop(next(iter(_MODELS)))
    if config.model.kind == "process":
        params = configured_process_params(config.model)
        stepper = process_stepper(params, sites, config.model.substeps, offshore_seasonal(config.sites, layout))
        model = make_forecast(stepper, layout, sites, process_log_error_sd(config, layout), params,
                              chlorophyll_scale=chlorophyll_scales(config.sites, layout),
                              **state_ar1(config, layout)), None, None
    else:
        from emulators.checkpoint import load_checkpoint
        emulator = load_checkpoint(Path(root) / emulator_name)
        sd = emulator_log_error_sd(emulator, config.model)
        stepper = emulator_stepper(emulator)
        model = make_forecast(stepper, layout, sites, sd, chlorophyll_scale=chlorophyll_scales(config.sites, layout),
                              **state_ar1(config, layout)), emulator, stepper
    _MODELS[key] = model
    return model


def use_compilation_cache(store_dir: str | Path) -> None:
    """Keep compiled XLA programs in the store: a scheduled cycle is a new process each time, and
    recompiling the window and the forecast would cost more than the cycle itself. Called once, at the
    start of a ``twin cycle``/``twin forecast`` process (the CLI), not by library calls: switching the
    cache folder inside a long-lived process is not something JAX supports (``TWIN_COMPILATION_CACHE=0``
    turns it off; the test suite does, as it calls the CLI in-process on many stores)."""
    import os
    if os.environ.get("TWIN_COMPILATION_CACHE") == "0" or jax.config.jax_compilation_cache_dir:
        return
    store = Store(store_dir)
    jax.config.update("jax_compilation_cache_dir", str(store.path("jax-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_store_config(store: Store) -> TwinConfig:
    return load_config(store.path("config.yaml"))


def run_cycle(store_dir: str | Path, *, until: str | None = None, data: tuple[str, ...] = (),
              quiet: bool = False, lock_timeout_s: float = 60.0) -> dict[str, Any]:
    """One operational cycle (see the module docstring); returns what it did."""
    store = require_store(store_dir)
    started = time.perf_counter()
    with store.lock(lock_timeout_s):
        manifest = store.manifest()
        removed = store.collect_garbage(manifest)
        config = load_store_config(store)
        layout = store_layout(config)
        day0 = np.datetime64(manifest["day0"]).astype("datetime64[ns]")
        seq = manifest["seq"] + 1
        ledger = load_ledger(store, manifest)
        new, registered, errors = read_new_rows(config, manifest, ledger, tuple(data), seq)
        report: dict[str, Any] = {"store": str(store.root), "files_read": len(registered),
                                  "rows_new": 0 if new is None else int(new.sizes["obs"]), "errors": errors,
                                  "late": 0, "cycles": 0, "removed_orphans": removed}
        for e in errors:
            _log(f"could not read {e['file']}: {e['error']} (will retry next cycle)", quiet)
        done = int(manifest["cycles_done"])
        if new is not None:
            ledger = _append(ledger, new, seq)
        target = _target_cycles(ledger, day0, done, until)
        if new is None and target == done:
            report.update(message="nothing new", cycles_done=done, seconds=time.perf_counter() - started)
            return report
        ledger = requalify(ledger, config)
        ledger, late = _mark_late(ledger, day0, done)
        report["late"] = late
        files = dict(manifest["files"])
        history = store.load_arrays(files["history"])
        alerts_history = store.load_json(files["alerts"])
        if target > done:
            ledger, history, alerts_history, outcome = _advance(store, manifest, config, layout, day0, ledger,
                                                                history, alerts_history, done, target, quiet)
            files["state"] = store.save_arrays(f"state-{seq}.npz", outcome.pop("state"))
            report.update(outcome)
            refit = _refit_if_due(store, manifest, config, layout, day0, ledger, history, done, target, seq, quiet)
            if refit is not None:
                files["emulator"], record = refit
                manifest = {**manifest, "refits": [*manifest.get("refits", []), record]}
                report["refit"] = record
        files["ledger"] = _save_ledger(store, ledger, seq)
        files["history"] = store.save_arrays(f"history-{seq}.npz", history)
        files["alerts"] = store.save_json(f"alerts-{seq}.json", alerts_history)
        registry = {**manifest["registry"], **registered}
        manifest = {**manifest, "seq": seq, "cycles_done": target, "registry": registry, "files": files,
                    "slots": report.pop("slots", manifest["slots"]), "last_cycle": _now()}
        store.write_manifest(manifest)
        store.collect_garbage(manifest)
        if target > done:  # what the filter estimates besides the state, as `twin status` gives it
            report.update(augmented_status(store, manifest, config, layout, ledger, history))
    report.update(cycles_done=target, analysis_time=str(day0 + np.timedelta64(target, "D"))[:19],
                  seconds=time.perf_counter() - started)
    return report


def _refit_if_due(store, manifest, config, layout, day0, ledger, history, done, target, seq, quiet):
    """Refit the emulator when a multiple of ``refit.interval_days`` cycles was passed (``twin.refit``:
    confidence-weighted fine-tuning on the store's analyses, kept only if the held-out forecast improves).
    Returns (new emulator folder, record) or None when not due (or when the attempt was not kept, the
    lineage entry is still saved with the current weights)."""
    k = config.refit.interval_days
    if k is None or "emulator" not in manifest["files"] or target // k == done // k:
        return None
    from emulators.checkpoint import save_checkpoint
    from twin.cycle_obs import build_cycle_observations
    from twin.emulator_source import train_config
    from twin.forecast import chlorophyll_scales, make_forecast, state_ar1
    from twin.ingest import sensor_of_rows
    from twin.refit import refit_emulator
    first = int(manifest.get("history_first_cycle", 0))
    sites = store_sites(config, layout)
    forecast, emulator, stepper = store_model(store, manifest, config, layout, sites)
    day_first = day0 + np.timedelta64(first, "D")
    span = target - first
    forcing = jax.tree.map(lambda a: a[first:target], store_forcing(config, ledger, layout, day0, target))
    assimilated = ledger.isel(obs=np.flatnonzero(ledger["disposition"].values == disp.ASSIMILATED))
    cobs = build_cycle_observations(assimilated, layout, day_first, span,
                                    representativeness_fraction=config.filter.representativeness_fraction,
                                    sensor=sensor_of_rows(assimilated, config.sources))
    disposition = np.where(np.asarray(cobs.obs.mask), disp.ASSIMILATED, disp.MISSING)
    deterministic = make_forecast(stepper, layout, sites, np.zeros(layout.model_dim, np.float32),
                                  chlorophyll_scale=chlorophyll_scales(config.sites, layout),
                                  **state_ar1(config, layout, noise=False))
    _log(f"refit of the emulator on {span} analyses", quiet)
    chosen, record = refit_emulator(
        emulator, refit=config.refit, train_defaults=train_config(config), forecast=deterministic,
        analysis_mean=history["analysis_mean"], analysis_sd=history["analysis_sd"], cycle_obs=cobs,
        disposition=disposition, layout=layout, forcing=forcing, day0=day_first, cycle=span - 1,
        key=jax.random.fold_in(jax.random.PRNGKey(int(manifest["seed"])), 2 * 10**7 + target),
        progress=not quiet)
    if record is None:
        return None
    name = f"emulator-{seq}"
    save_checkpoint(store.path(name), chosen)
    return name, {**record.to_dict(), "cycle": target}


def _mark_late(ledger: xr.Dataset, day0, done: int) -> tuple[xr.Dataset, int]:
    from twin.cycle_obs import cycle_of
    code = ledger["disposition"].values.copy()
    late = (code == disp.NOT_YET_CYCLED) & (cycle_of(ledger["time"].values, day0) < done)
    code[late] = disp.LATE
    return ledger.assign(disposition=("obs", code)), int(late.sum())


@jax.jit
def _store_keys(seed, target):
    """(key of the cycles, key of the forecast from the analysis at ``target``), as the hindcast derives
    them from the config's seed; one compiled program instead of four eager random ops per process."""
    base = jax.random.PRNGKey(seed)
    return jax.random.fold_in(base, 1), jax.random.fold_in(base, 10**7 + target)


def _advance(store, manifest, config, layout, day0, ledger, history, alerts_history, done, target, quiet):
    """Cycles ``done`` .. ``target - 1``, the forecast and the alerts."""
    from twin.cycle_obs import build_cycle_observations, row_dispositions
    from twin.engine import EngineState, free_forecast, run_window
    from twin.hindcast import filter_arrays, filter_params
    from twin.programs import stored_call
    sites = store_sites(config, layout)
    forecast_days = config.hindcast.forecast_days
    forcing = store_forcing(config, ledger, layout, day0, target + forecast_days)
    # The window and the forecast run as programs exported to the store (twin.programs); what they close
    # over (model, filter settings) is made of the config and the emulator's weights: ``model_key``.
    static_key = model_key(store, manifest)
    forecast, emulator, _ = store_model(store, manifest, config, layout, sites, key=static_key)
    weights = None if emulator is None else emulator.weights
    members, inflation = load_state(store, manifest)
    pending = np.flatnonzero(ledger["disposition"].values == disp.NOT_YET_CYCLED)
    table = ledger.isel(obs=pending)
    slots = int(manifest["slots"])
    from twin.ingest import sensor_of_rows
    sensor = sensor_of_rows(table, config.sources)
    cobs = build_cycle_observations(table, layout, day0, target, min_slots=slots, sensor=sensor,
                                    representativeness_fraction=config.filter.representativeness_fraction)
    m = cobs.obs.value.shape[1]
    if m > slots:  # more observations in a day than ever before: pad to a new quantum (one recompile)
        slots = -(-m // SLOT_QUANTUM) * SLOT_QUANTUM
        cobs = build_cycle_observations(table, layout, day0, target, min_slots=slots, sensor=sensor,
                                        representativeness_fraction=config.filter.representativeness_fraction)
    params = filter_params(config)
    log_mask = layout.log_mask()
    cycle_key, forecast_key = _store_keys(int(manifest["seed"]), target)
    state = EngineState(members, inflation)
    programs = store.path("programs")

    filter_args = filter_arrays(config, layout)  # constants of the stored program (its key holds the config)

    def window(state, obs, forcing, key, log_mask, first_cycle, weights):
        return run_window(forecast, state, obs, forcing, key, params, log_mask, first_cycle, weights,
                          host_quantiles=False, **filter_args)  # exported: no host call in the program
    outs = []
    _log(f"cycling {target - done} day(s): {str(day0 + np.timedelta64(done + 1, 'D'))[:10]} .. "
         f"{str(day0 + np.timedelta64(target, 'D'))[:10]}", quiet)
    for i in range(done, target):
        obs_i = jax.tree.map(lambda a: a[i:i + 1], cobs.obs)
        forcing_i = jax.tree.map(lambda a: a[i:i + 1], forcing)
        state, out = stored_call(programs, "window", window, static_key, state, obs_i, forcing_i, cycle_key,
                                 log_mask, i, weights)
        outs.append(jax.tree.map(np.asarray, out))
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)
    # Dispositions and the twin's check of every row that reached the filter.
    slot_disp = np.full(cobs.obs.value.shape, disp.MISSING, np.int64)
    slot_disp[done:target] = out.disposition
    codes = row_dispositions(cobs, slot_disp)
    z_slot = np.full(cobs.obs.value.shape, np.nan)
    obs_v, obs_e = np.asarray(cobs.obs.value[done:target]), np.asarray(cobs.obs.error_sd[done:target])
    z_slot[done:target] = (obs_v - out.obs_forecast) / np.sqrt(out.obs_forecast_sd**2 + obs_e**2)
    z_group = np.full(cobs.group_cycle.size, np.nan)
    filled = cobs.slot_group >= 0
    z_group[cobs.slot_group[filled]] = z_slot[filled]
    row_cycle = np.where(cobs.row_group >= 0, cobs.group_cycle[np.maximum(cobs.row_group, 0)], -1)
    decided = (codes != disp.OUTSIDE_PERIOD)
    code_all = ledger["disposition"].values.copy()
    code_all[pending[decided]] = codes[decided]
    z_all = ledger["twin_z"].values.copy()
    z_all[pending] = np.where(cobs.row_group >= 0, z_group[np.maximum(cobs.row_group, 0)], np.nan)
    cycle_all = ledger["cycle"].values.copy()
    cycle_all[pending] = row_cycle
    ledger = ledger.assign(disposition=("obs", code_all), twin_z=("obs", z_all.astype(np.float32)),
                           cycle=("obs", cycle_all.astype(np.int32)))
    history = _extend_history(history, out, forcing, done, target,
                              _parameter_values(emulator) if layout.estimated else None)
    # Forecast and alerts from the newest analysis.
    future = jax.tree.map(lambda a: a[target:target + forecast_days], forcing)
    ens = np.asarray(stored_call(programs, "forecast", lambda m, f, k, w: free_forecast(forecast, m, f, k,
                                 forecast_days, w), static_key, state.members, future, forecast_key, weights))
    analysis_time = day0 + np.timedelta64(target, "D")
    product = write_forecast(store, config, layout, ens, analysis_time)
    records = _alerts(config, layout, ens, analysis_time)
    alerts_history = list(alerts_history) + records
    suspect = int(np.sum(np.abs(z_all[pending]) > SUSPECT_Z))
    counts = np.bincount(out.disposition.ravel(), minlength=6)
    outcome = {"state": _state_arrays(state.members, state.inflation, target), "cycles": target - done,
               "assimilated_slots": int(counts[0]), "rejected_outliers": int(counts[5]), "suspect_rows": suspect,
               "forecast": str(product.relative_to(store.root)), "alerts_raised": [r["name"] for r in records
                                                                                   if r["raised"]],
               "slots": slots}
    return ledger, history, alerts_history, outcome


def _extend_history(history: dict, out, forcing, done: int, target: int, parameter_values=None) -> dict:
    """The store's per-cycle history with cycles ``done`` .. ``target - 1`` appended. ``parameter_values``:
    (P,) the emulator's parameter inputs these cycles stepped with, where the filter estimates some (a kept
    refit may change them). A record that an older store's history lacks starts with NaN rows."""
    rows = {"analysis_mean": out.analysis_mean, "analysis_sd": out.analysis_sd,
            "analysis_quantiles": out.analysis_quantiles,
            "forecast_mean": out.forecast_mean, "forecast_sd": out.forecast_sd,
            "inflation": np.asarray(out.diagnostics.inflation),
            "normalized_innovation": np.asarray(out.diagnostics.normalized_innovation)}
    if parameter_values is not None:
        rows["parameter_values"] = np.tile(np.asarray(parameter_values, np.float32)[None], (target - done, 1))
    for name, value in forcing._asdict().items():
        rows[f"forcing_{name}"] = np.asarray(value)[done:target]
    cycles_before = history["analysis_mean"].shape[0] if history.get("analysis_mean") is not None else 0
    extended = {}
    for name, value in rows.items():
        value = np.asarray(value)
        old = history.get(name)
        if old is None or old.size == 0:
            old = np.full((cycles_before,) + value.shape[1:], np.nan, value.dtype)
        extended[name] = np.concatenate([old, value])
    return extended


def _alerts(config, layout, ens: np.ndarray, analysis_time) -> list[dict]:
    if not config.alerts:
        return []
    from twin.alerts import alert_forecasts, evaluate_alerts
    by_variable = alert_forecasts(config.alerts, ens, layout)
    return [r.as_json() for r in evaluate_alerts(config.alerts, by_variable, analysis_time)]


def write_forecast(store: Store, config, layout, ens: np.ndarray, analysis_time) -> Path:
    """The ensemble forecast (L, N, n) as CF NetCDF: mean, sd and 5/50/95 % per variable, site and layer."""
    from twin.observations import write_netcdf
    from twin.state_layout import STATE_UNITS, STATE_VARIABLES
    lead = np.arange(1, ens.shape[0] + 1)
    times = np.datetime64(analysis_time, "ns") + lead * np.timedelta64(1, "D")
    sites, layers = list(layout.sites), list(layout.layers)
    data = {}
    for v in STATE_VARIABLES:
        idx = np.array([[layout.index(v, s, l) for l in layers] for s in sites])
        x = ens[:, :, idx]  # (L, N, S, K)
        units = STATE_UNITS.get(v, "1")
        dims = ("time", "site", "layer")
        data[v] = (dims, x.mean(1), {"units": units, "long_name": f"{v}, forecast ensemble mean"})
        data[f"{v}_sd"] = (dims, x.std(1, ddof=1), {"units": units, "long_name": f"{v}, forecast ensemble sd"})
        for q in (5, 50, 95):
            data[f"{v}_q{q:02d}"] = (dims, np.percentile(x, q, axis=1),
                                     {"units": units, "long_name": f"{v}, forecast {q} % quantile"})
    ds = xr.Dataset(data, coords={"time": ("time", times, {"standard_name": "time", "axis": "T"}),
                                  "lead_days": ("time", lead), "site": ("site", np.array(sites, object)),
                                  "layer": ("layer", np.array(layers, object))})
    ds.attrs.update({"Conventions": "CF-1.10", "title": f"coastal twin forecast: {config.name}",
                     "analysis_time": str(analysis_time)[:19], "members": ens.shape[1]})
    path = store.path("products") / f"forecast-{str(analysis_time)[:10]}.nc"
    encoding = {k: {"dtype": str} for k in ("site", "layer")}
    return write_netcdf(ds, path, encoding)


# --- status and forecast -----------------------------------------------------------------------------


def store_status(store_dir: str | Path) -> dict[str, Any]:
    """What a scheduler or a person asks of a store."""
    store = require_store(store_dir)
    problems = store.check()
    manifest = store.manifest()
    ledger = load_ledger(store, manifest)
    codes, counts = np.unique(ledger["disposition"].values, return_counts=True)
    by_disposition = {disp.DISPOSITION_NAMES.get(int(c), str(c)): int(k) for c, k in zip(codes, counts)}
    alerts = store.load_json(manifest["files"]["alerts"])
    last_time = max((a["issue_time"] for a in alerts), default=None)
    open_alerts = [a for a in alerts if a["issue_time"] == last_time and a["raised"]]
    lineage = []
    if "emulator" in manifest["files"]:
        import json
        meta = store.path(manifest["files"]["emulator"]) / "metadata.json"
        if meta.exists():
            lineage = json.loads(meta.read_text()).get("lineage", [])
    day0 = np.datetime64(manifest["day0"])
    config = load_store_config(store)
    layout = store_layout(config)
    history = store.load_arrays(manifest["files"]["history"])
    return {"store": str(store.root), "healthy": not problems, "problems": problems,
            "cycles_done": manifest["cycles_done"],
            "last_analysis": str(day0 + np.timedelta64(manifest["cycles_done"], "D")),
            "last_cycle_run": manifest["last_cycle"], "ledger": {"rows": int(ledger.sizes["obs"]),
                                                                  "by_disposition": by_disposition},
            "files_registered": len(manifest["registry"]), "emulator": manifest["files"].get("emulator"),
            "last_refit": next((e for e in reversed(lineage) if e.get("kind") == "refit"), None),
            "open_alerts": open_alerts, "drifting": drifting_series(ledger),
            **augmented_status(store, manifest, config, layout, ledger, history)}


def _parameter_values(emulator) -> np.ndarray | None:
    """(P,) the values of the emulator's parameter inputs, in the order of its ``param/`` features; None for
    the process model."""
    if emulator is None:
        return None
    from twin.forecast import emulator_model_params
    return np.asarray(emulator_model_params(emulator).parameters)


def observed_state_indices(ledger: xr.Dataset, config: TwinConfig, layout) -> np.ndarray:
    """The state elements the store's assimilated observations saw (a sensor's reading, where the twin
    estimates its offset)."""
    from twin.ingest import sensor_of_rows
    rows = ledger.isel(obs=np.flatnonzero(ledger["disposition"].values == disp.ASSIMILATED))
    keys = set(zip(rows["variable"].values.astype(str), rows["site"].values.astype(str),
                   rows["layer"].values.astype(str), sensor_of_rows(rows, config.sources)))
    return np.array(sorted({layout.observation_index(v, s, k, sensor=n or None) for v, s, k, n in keys}), np.int64)


def augmented_status(store: Store, manifest, config: TwinConfig, layout, ledger: xr.Dataset, history: dict
                     ) -> dict[str, Any]:
    """The hindcast's summaries of the augmented elements (``twin.products.augmented_summary``: model biases,
    sensor offsets, estimated parameters) over the store's history, from the first cycle that recorded what
    they need (a store made before they were recorded has NaN rows before it); {} when the state has none or
    no cycle has run."""
    from twin.products import AnalysedRun, ParameterInputs, augmented_summary
    if not layout.estimated_variables() or history.get("analysis_mean") is None:
        return {}
    needed = [history["analysis_mean"], history.get("analysis_quantiles")]
    inputs = None
    if layout.estimated and history.get("parameter_values") is not None:
        from twin.forecast import parameter_input_names, parameter_input_range
        _, emulator, _ = store_model(store, manifest, config, layout, store_sites(config, layout))
        needed.append(history["parameter_values"])
        inputs = ParameterInputs(parameter_input_names(emulator), history["parameter_values"],
                                 *parameter_input_range(emulator))
    recorded = np.ones(history["analysis_mean"].shape[0], bool)
    for a in needed:
        if a is not None:
            recorded &= np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    if not recorded.any():
        return {}
    first = int(np.argmax(recorded))
    quantiles = history.get("analysis_quantiles")
    analysed = AnalysedRun(history["analysis_mean"][first:], history["analysis_sd"][first:],
                           None if quantiles is None else quantiles[first:])
    if inputs is not None:
        inputs = inputs._replace(values=inputs.values[first:])
    since = int(manifest.get("history_first_cycle", 0)) + first
    summary = augmented_summary(config, layout, analysed, observed_state_indices(ledger, config, layout), inputs)
    since_day = np.datetime64(manifest["day0"]) + np.timedelta64(since + 1, "D")
    return {"augmented": summary, "augmented_since": str(since_day)}


def drifting_series(ledger: xr.Dataset) -> list[dict[str, Any]]:
    """Series whose mean normalised innovation over the last ``DRIFT_DAYS`` exceeds ``DRIFT_LIMIT``: the
    observations sit persistently on one side of the twin (a drifting or fouled sensor)."""
    z = ledger["twin_z"].values
    ok = np.isfinite(z)
    if not ok.any():
        return []
    newest = ledger["time"].values[ok].max()
    recent = ok & (ledger["time"].values >= newest - np.timedelta64(DRIFT_DAYS, "D"))
    frame = pd.DataFrame({"site": ledger["site"].values[recent], "layer": ledger["layer"].values[recent],
                          "variable": ledger["variable"].values[recent], "z": z[recent]})
    out = []
    for (site, layer, variable), g in frame.groupby(["site", "layer", "variable"]):
        mean = float(g["z"].mean())
        if abs(mean) > DRIFT_LIMIT and len(g) >= 5:
            out.append({"series": f"{variable}@{site}/{layer}", "mean_normalised_innovation": mean,
                        "rows": len(g)})
    return out


def store_forecast(store_dir: str | Path, days: int, out: str | Path | None = None) -> Path:
    """Ensemble forecast ``days`` ahead from the store's last analysis (reads, never changes the store)."""
    from twin.engine import free_forecast
    store = require_store(store_dir)
    manifest = store.manifest()
    config = load_store_config(store)
    layout = store_layout(config)
    day0 = np.datetime64(manifest["day0"]).astype("datetime64[ns]")
    done = int(manifest["cycles_done"])
    ledger = load_ledger(store, manifest)
    forcing = store_forcing(config, ledger, layout, day0, done + days)
    future = jax.tree.map(lambda a: a[done:done + days], forcing)
    forecast, emulator, _ = store_model(store, manifest, config, layout, store_sites(config, layout))
    members, _ = load_state(store, manifest)
    key = _store_keys(int(manifest["seed"]), done)[1]
    ens = np.asarray(free_forecast(forecast, members, future, key, days,
                                   None if emulator is None else emulator.weights))
    path = write_forecast(store, config, layout, ens, day0 + np.timedelta64(done, "D"))
    if out is not None:
        shutil.copyfile(path, out)
        return Path(out)
    return path

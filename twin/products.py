"""Products of a hindcast: reanalysis.nc (CF), metrics.json, alerts.csv, report.html and the emulator lineage."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr

from twin import dispositions as disp
from twin import flags
from twin.cycle_obs import cycle_of
from twin.engine import QUANTILES
from twin.observations import atomic_write, write_netcdf
from twin.skill import (BURN_IN_CYCLES, analysis_at_observations, climatology_forecast, gaussian_crps,
                        lognormal_interval, mean_error, persistence_forecast, rmse, truth_scores)
from twin.state_layout import OBSERVABLE, bias_name, offset_name, parameter_name, seen_name
from twin.units import CF_STANDARD_NAMES

BURN_IN_DAYS = 30  # the first month of analyses is left out of summaries (as twin.skill.truth_scores)

Z90 = 1.6448536269514722


def reanalysis_dataset(prepared, outputs, dispositions: np.ndarray) -> xr.Dataset:
    """CF dataset: per state variable, mean, sd and quantiles on (time, site, layer); the observation ledger
    with forecast and analysis values in observation space and each row's disposition."""
    layout = prepared.layout
    T = prepared.num_days
    times = prepared.day0 + (np.arange(T) + 1) * np.timedelta64(1, "D")
    sites, layers = list(layout.sites), list(layout.layers)
    data = {}
    mean, sd = np.asarray(outputs.analysis_mean), np.asarray(outputs.analysis_sd)
    quant = np.asarray(outputs.analysis_quantiles)
    for v in layout.state_variables():
        idx = np.array([[layout.index(v, s, l) for l in layers] for s in sites])
        attrs = {"units": layout.units(v), "long_name": f"{v}, analysis ensemble mean",
                 "ancillary_variables": f"{v}_sd {v}_q05 {v}_q50 {v}_q95"}
        if v in CF_STANDARD_NAMES:
            attrs["standard_name"] = CF_STANDARD_NAMES[v]
        dims = ("time", "site", "layer")
        data[v] = (dims, mean[:, idx], attrs)
        data[f"{v}_sd"] = (dims, sd[:, idx], {"units": attrs["units"],
                                              "long_name": f"{v}, analysis ensemble standard deviation"})
        for k, q in enumerate(QUANTILES):
            name = f"{v}_q{int(round(q * 100)):02d}"
            data[name] = (dims, quant[:, k][:, idx], {"units": attrs["units"],
                                                      "long_name": f"{v}, analysis ensemble {q:.0%} quantile"})
    ledger = _ledger(prepared, outputs, dispositions)
    for k, v in ledger.items():
        data[k] = v
    ds = xr.Dataset(data, coords={
        "time": ("time", times, {"standard_name": "time", "axis": "T"}),
        "site": ("site", np.array(sites, dtype=object), {"cf_role": "timeseries_id"}),
        "layer": ("layer", np.array(layers, dtype=object)),
    })
    diag = outputs.diagnostics
    for name in ("innovation_mean", "innovation_variance", "normalized_innovation", "prior_spread",
                 "analysis_spread", "dofs", "inflation"):
        ds[f"diag_{name}"] = ("time", np.asarray(getattr(diag, name)), {"long_name": f"filter {name}"})
    ds["diag_diverged"] = ("time", np.asarray(diag.diverged).astype(np.int8))
    ds.attrs.update({"Conventions": "CF-1.10", "title": f"coastal twin reanalysis: {prepared.config.name}",
                     "featureType": "timeSeries", "source": "twin hindcast (emulator ensemble + Kalman filter)"})
    return ds


def _ledger(prepared, outputs, dispositions) -> dict:
    table, layout = prepared.table, prepared.layout
    n = table.sizes["obs"]
    sidx = np.array([layout.observation_index(v, s, l) for v, s, l in
                     zip(table["variable"].values, table["site"].values, table["layer"].values)], np.int64) \
        if n else np.zeros(0, np.int64)
    cyc = cycle_of(table["time"].values, prepared.day0)
    ok = (sidx >= 0) & (cyc >= 0) & (cyc < prepared.num_days)
    fmean, fsd = np.asarray(outputs.forecast_mean), np.asarray(outputs.forecast_sd)
    amean = np.asarray(outputs.analysis_mean)
    c, i = np.where(ok, cyc, 0), np.where(ok, sidx, 0)
    forecast = np.where(ok, fmean[c, i], np.nan)
    forecast_sd = np.where(ok, fsd[c, i], np.nan)
    analysis = np.where(ok, amean[c, i], np.nan)
    codes = sorted(disp.DISPOSITION_NAMES)
    dim = "obs"
    return {
        "obs_time": (dim, table["time"].values, {"standard_name": "time"}),
        "obs_site": (dim, table["site"].values.astype(str).astype(object)),
        "obs_layer": (dim, table["layer"].values.astype(str).astype(object)),
        "obs_variable": (dim, table["variable"].values.astype(str).astype(object)),
        "obs_value": (dim, table["value"].values, {"long_name": "observed value, canonical units",
                                                   "ancillary_variables": "obs_qc obs_disposition"}),
        "obs_error_sd": (dim, table["error_sd"].values),
        "obs_qc": (dim, table["qc"].values.astype(np.int8),
                   {"flag_values": np.array([1, 2, 3, 4, 9], np.int8),
                    "flag_meanings": "good not_evaluated suspect bad missing"}),
        "obs_native_qc": (dim, table["native_qc"].values.astype(str).astype(object)),
        "obs_source": (dim, table["source"].values.astype(str).astype(object)),
        "obs_disposition": (dim, dispositions.astype(np.int8),
                            {"flag_values": np.array(codes, np.int8),
                             "flag_meanings": " ".join(disp.DISPOSITION_NAMES[c] for c in codes)}),
        "obs_forecast": (dim, forecast, {"long_name": "forecast ensemble mean at the observation"}),
        "obs_forecast_sd": (dim, forecast_sd),
        "obs_analysis": (dim, analysis, {"long_name": "analysis ensemble mean at the observation"}),
    }


def innovation_statistics(ds: xr.Dataset) -> dict:
    """Per series (``variable@site/layer``) and source file, over the assimilated observations: the count, the
    mean and RMS of the innovations y - Hx_f, the RMS of the assumed error sd and of the forecast spread, their
    consistency ``rms / sqrt(spread^2 + error^2)`` (about 1 when both are right), and the observation error sd
    the data imply, sqrt(E[(y - Hx_a)(y - Hx_f)]) (Desroziers et al. 2005; 0 when that mean is negative):
    what a modeller reads to check or tune each source's ``error_sd``. Values in canonical units."""
    assimilated = ds["obs_disposition"].values == disp.ASSIMILATED
    y, f, a = (ds[k].values.astype(np.float64) for k in ("obs_value", "obs_forecast", "obs_analysis"))
    e, s = ds["obs_error_sd"].values.astype(np.float64), ds["obs_forecast_sd"].values.astype(np.float64)
    ok = assimilated & np.isfinite(y) & np.isfinite(f) & np.isfinite(a) & np.isfinite(e) & np.isfinite(s)
    series = np.char.add(np.char.add(np.char.add(ds["obs_variable"].values.astype(str), "@"),
                                     np.char.add(ds["obs_site"].values.astype(str), "/")),
                         ds["obs_layer"].values.astype(str))
    sources = np.array([Path(x).name for x in ds["obs_source"].values.astype(str)])
    out: dict = {}
    for key in sorted(set(series[ok])):
        for source in sorted(set(sources[ok & (series == key)])):
            rows = ok & (series == key) & (sources == source)
            d = y[rows] - f[rows]
            error, spread = float(np.sqrt(np.mean(e[rows] ** 2))), float(np.sqrt(np.mean(s[rows] ** 2)))
            rms = float(np.sqrt(np.mean(d**2)))
            out.setdefault(key, {})[source] = {
                "n": int(rows.sum()), "mean": float(np.mean(d)), "rms": rms, "error_sd": error,
                "forecast_sd": spread, "consistency": rms / float(np.hypot(error, spread)),
                "desroziers_error_sd": float(np.sqrt(max(np.mean((y[rows] - a[rows]) * d), 0.0)))}
    return out


def validation_scores(prepared, outputs) -> dict:
    """Twin forecast of each withheld value (from the last analysis before it) against persistence and the
    day-of-year climatology of the training observations, per ``variable@site/layer``."""
    table, layout = prepared.table, prepared.layout
    withheld = prepared.withheld & ~table["censored"].values
    if not withheld.any():
        return {}
    usable = np.isin(table["qc"].values, flags.USABLE_QC) & np.isfinite(table["value"].values)
    train = usable & ~prepared.withheld
    times, values, errors = table["time"].values, table["value"].values, table["error_sd"].values
    cyc = cycle_of(times, prepared.day0)
    fmean, fsd = np.asarray(outputs.forecast_mean), np.asarray(outputs.forecast_sd)
    keys = np.array([f"{v}@{s}/{l}" for v, s, l in zip(table["variable"].values, table["site"].values,
                                                        table["layer"].values)], dtype=object)
    log_space = layout.log_mask()
    out = {}
    for key in sorted(set(keys[withheld])):
        v, rest = key.split("@")
        s, l = rest.split("/")
        idx = layout.observation_index(v, s, l)
        series = keys == key
        targets = np.flatnonzero(withheld & series & (cyc >= 0) & (cyc < prepared.num_days))
        if targets.size == 0:
            continue
        mu, sd = fmean[cyc[targets], idx], np.hypot(fsd[cyc[targets], idx], errors[targets])
        y = values[targets]
        inside = np.abs(y - mu) <= Z90 * sd
        # The same moments as a lognormal, the filter's own error model for the concentrations it analyses in
        # log space: the normal interval's lower end is below zero wherever the spread is large, and then it
        # covers every low value whatever the forecast.
        lo, hi = lognormal_interval(mu, sd, Z90)
        in_lognormal = (y >= lo) & (y <= hi)
        series_train = train & series
        pers = persistence_forecast(times, values, series_train, targets)
        clim = climatology_forecast(times, values, series_train, targets)
        out[key] = {
            "n": int(targets.size),
            "twin": {"rmse": rmse(mu, y), "crps": float(np.mean(gaussian_crps(mu, sd, y))),
                     "coverage_90": float(inside.mean()),
                     "coverage_90_lognormal": float(in_lognormal.mean()) if log_space[idx] else None,
                     "normal_interval_below_zero": float(np.mean(mu - Z90 * sd < 0))},
            "persistence": {"rmse": rmse(pers, y)},
            "climatology": {"rmse": rmse(clim, y)},
        }
    return out


def truth_metrics(prepared, outputs, baselines: dict, dispositions: np.ndarray) -> dict:
    layout = prepared.layout
    names = layout.names()
    # The model biases and sensor offsets and readings have no truth (NaN): they are not scored.
    scored = [i for i in range(len(names)) if np.isfinite(prepared.truth[:, i]).any()]
    twin = dict(zip(scored, truth_scores(np.asarray(outputs.analysis_mean)[:, scored],
                                         np.asarray(outputs.analysis_sd)[:, scored], prepared.truth[:, scored])))
    cycle_obs = prepared.cycle_obs
    used = assimilated_groups(cycle_obs, dispositions)
    assimilated = set(cycle_obs.group_state_index[used].tolist())
    at_obs = analysis_at_observations(np.asarray(outputs.analysis_mean), prepared.truth,
                                      cycle_obs.group_cycle[used], cycle_obs.group_state_index[used])
    # The error of the values the filter assimilated into each element, as RMS to set beside the analysis RMSE
    # on those cycles: a bottle's own error (it grows with the value), a buoy day's super-observation's.
    g_error = cycle_obs.group_error_sd.astype(np.float64)
    obs_error = {names[i]: float(np.sqrt(np.mean(g_error[used & (cycle_obs.group_state_index == i)] ** 2)))
                 for i in sorted(assimilated)}
    result = {}
    for i, name in ((i, names[i]) for i in scored):
        entry = {"twin": twin[i]}
        for label, series in baselines.items():
            scored_days = (series[BURN_IN_CYCLES:, i], prepared.truth[BURN_IN_CYCLES:, i])
            entry[label] = {"rmse": rmse(*scored_days), "bias": mean_error(*scored_days)}
        if name in obs_error:
            entry["observation_error"] = obs_error[name]
        if i in at_obs:
            entry["twin"].update(at_obs[i])
        result[name] = entry
    unobserved = [names[i] for i in scored if i not in assimilated]
    return {"truth": result, "unobserved": unobserved}


HALF_DAY = np.timedelta64(12, "h")


def analysis_times(prepared) -> np.ndarray:
    """(T,) time of each cycle's analysis, ``day0 + cycle + 1`` days."""
    return prepared.day0 + (np.arange(prepared.num_days) + 1) * np.timedelta64(1, "D")


def alert_observations(table, alert) -> tuple[np.ndarray, np.ndarray]:
    """(times, values) of the usable observations of an alert's variable at its site and layer.

    A below-detection (censored) value is an upper bound: kept only where it settles the outcome (below a
    "below" threshold: an event; at or below an "above" threshold: none).
    """
    variables = [v for v, state in OBSERVABLE.items() if state == alert.variable]
    value = table["value"].values
    sel = (np.isin(table["variable"].values, variables) & (table["site"].values == alert.site)
           & (table["layer"].values == alert.layer) & np.isin(table["qc"].values, flags.USABLE_QC)
           & np.isfinite(value))
    censored = table["censored"].values.astype(bool)
    settled = value < alert.threshold if alert.direction == "below" else value <= alert.threshold
    sel &= ~censored | settled
    return table["time"].values[sel], value[sel]


def alert_verification(prepared, outputs):
    """Verify every configured alert over the hindcast; return (metrics["alerts"], alert history).

    ``outputs.alert_probability`` holds the columns of ``twin.hindcast.alert_specs``: per alert the issued
    probability (observation error included), then in a twin experiment the probability of the state itself.

    Against observations, an issue time is the end of its cycle's observation window (analysis time + 12 h,
    see ``twin.cycle_obs.cycle_of``), so the verifying window (t, t + horizon] holds only observations the
    forecast had not assimilated. Against the truth (twin experiment), the event is the daily true state
    beyond the threshold on some lead day 1..horizon, and the probability verified is the state's (no
    observation error): the forecast of that same event.

    Returns:
        ({alert name: {definition, observed, truth (twin experiment), raised_days}}, pandas DataFrame with
        columns time (analysis time), alert, probability, raised and, in a twin experiment,
        state_probability; one row per cycle and alert).
    """
    import pandas as pd
    from twin.alerts import verify_alert
    alerts = prepared.config.alerts
    if not alerts:
        return {}, None
    probs = np.asarray(outputs.alert_probability, float)
    times = analysis_times(prepared)
    A = len(alerts)
    result, history = {}, []
    for k, alert in enumerate(alerts):
        p = probs[:, k]
        raised = p >= alert.probability
        obs_t, obs_v = alert_observations(prepared.table, alert)
        observed = verify_alert(alert, times + HALF_DAY, p, obs_t, obs_v)
        observed["event"] = "an observation beyond the threshold (probability with observation error)"
        entry = {"definition": alert.model_dump(mode="json"), "observed": observed}
        frame = {"time": times, "alert": alert.name, "probability": p, "raised": raised}
        if prepared.truth is not None:
            state_p = probs[:, A + k]
            i = prepared.layout.index(alert.variable, alert.site, alert.layer)
            entry["truth"] = verify_alert(alert, times, state_p, times, prepared.truth[:, i])
            entry["truth"]["event"] = "the true state beyond the threshold (probability of the state)"
            frame["state_probability"] = state_p
        entry["raised_days"] = int(raised.sum())
        result[alert.name] = entry
        history.append(pd.DataFrame(frame))
    return result, pd.concat(history, ignore_index=True)


class AnalysedRun(NamedTuple):
    """A run's analyses of every state element over T cycles: what the augmented elements' summaries read
    (``twin.engine.WindowOutputs`` has these fields too)."""
    analysis_mean: np.ndarray                 # (T, n)
    analysis_sd: np.ndarray                   # (T, n)
    analysis_quantiles: np.ndarray | None     # (T, 3, n) at QUANTILES; None where not kept


def _ar1_summary(analysed, i: int, sd: float, timescale_days: float) -> dict:
    """The configured AR(1) of element ``i`` and its analysis: mean over the run after the burn-in, its 5-95 %
    range over time, the last value, the root-mean-square analysis sd."""
    mean, spread = np.asarray(analysed.analysis_mean)[:, i], np.asarray(analysed.analysis_sd)[:, i]
    return {"sd": sd, "timescale_days": timescale_days, **_over_time(mean),
            "analysis_sd": float(np.sqrt(np.mean(spread**2)))}


def _after_burn_in(series: np.ndarray) -> np.ndarray:
    """``series`` (T, ...) without its first month, unless the run is too short to spare it."""
    return series[BURN_IN_DAYS:] if series.shape[0] > 2 * BURN_IN_DAYS else series


def _over_time(series: np.ndarray) -> dict:
    """Mean and 5-95 % range over time after the burn-in, and the last value, of a (T,) series."""
    b = _after_burn_in(series)
    return {"mean": float(b.mean()), "q05": float(np.quantile(b, 0.05)), "q95": float(np.quantile(b, 0.95)),
            "last": float(series[-1])}


def model_bias_summary(config, layout, analysed) -> dict:
    """Per model-bias element with a nonzero sd (a log-rate per day; chlorophyll's a log factor of the Chl:N
    ratio): :func:`_ar1_summary`."""
    out = {}
    for site in layout.sites:
        for tracer in layout.biased:
            for layer in layout.layers:
                bias = config.model.bias[tracer]
                if bias.sd(layer) > 0:
                    v = bias_name(tracer)
                    out[f"{v}@{site}/{layer}"] = _ar1_summary(analysed, layout.index(v, site, layer),
                                                              bias.sd(layer), bias.timescale_days)
    return out


class ParameterInputs(NamedTuple):
    """The emulator's parameter inputs as the cycles used them (for the estimated parameters' summary)."""
    names: tuple[str, ...]   # (P,) the emulator's parameter inputs, in order
    values: np.ndarray       # (T, P) the emulator's value each cycle stepped with (a kept refit may change it)
    low: np.ndarray          # (P,) training range: each member's value was kept within it
    high: np.ndarray         # (P,)


def estimated_parameter_summary(config, layout, analysed, inputs: ParameterInputs | None = None) -> dict:
    """Per site and estimated parameter (``model.estimate_parameters``; the log of a factor on the emulator's
    input, named as in the state layout, at its first layer): :func:`_ar1_summary` of the factor's log.

    With ``inputs``, also the parameter itself, the emulator's value times exp(the analysed factor), so that
    it reads the same across a kept refit that changed the emulator's value: ``value`` (mean, q05, q95 over
    time after the first month, last), its ``training_range``, and, where the analysis quantiles were kept,
    ``cycles_at_range_limit``: the fraction of those cycles whose analysis 5 % or 95 % quantile lies beyond
    the range (a twentieth of the members or more stepped with the range's bound instead of their own value).
    """
    mean = np.asarray(analysed.analysis_mean)
    quant = None if analysed.analysis_quantiles is None else np.asarray(analysed.analysis_quantiles)
    out = {}
    for site in layout.sites:
        for name in layout.estimated:
            estimate = config.model.estimate_parameters[name]
            v = parameter_name(name)
            i = layout.index(v, site, layout.layers[0])
            entry = _ar1_summary(analysed, i, estimate.sd, estimate.timescale_days)
            if inputs is not None:
                k = inputs.names.index(name)
                base = inputs.values[:, k]
                entry["value"] = _over_time(base * np.exp(mean[:, i]))
                entry["training_range"] = [float(inputs.low[k]), float(inputs.high[k])]
                if quant is not None:
                    outside = ((base * np.exp(quant[:, 0, i]) < inputs.low[k])
                               | (base * np.exp(quant[:, 2, i]) > inputs.high[k]))
                    entry["cycles_at_range_limit"] = float(_after_burn_in(outside).mean())
            out[f"{v}@{site}/{layout.layers[0]}"] = entry
    return out


def true_sensor_offset(prepared, name: str) -> np.ndarray | None:
    """(T,) the true offset of the twin experiment's buoy oxygen sensor at each analysis time, log of its
    reading over the truth (its drift is ``experiment.oxygen_drift_per_year`` from day 0); None for any other
    offset or outside a twin experiment."""
    exp = prepared.config.experiment
    variable, rest = name.split("@")
    if exp is None or prepared.truth is None or variable != offset_name("oxygen", "buoy"):
        return None
    sea = prepared.truth[:, prepared.layout.index("oxygen", *rest.split("/"))]
    days = np.arange(1, sea.shape[0] + 1)
    return np.log((sea + exp.oxygen_drift_per_year * days / 365.0) / sea)


def sensor_offset_summary(config, layout, analysed, observed, truth=None) -> dict:
    """Per sensor offset (a log factor) at a site and layer where that sensor's observations reached the
    filter (``observed``: the state indices the assimilated observations saw): :func:`_ar1_summary`; where
    ``truth(name)`` gives the true offset (T,) (a twin experiment), with its last value and the RMSE against
    it after the first month (``truth_last``, ``rmse_vs_truth``)."""
    observed = set(int(i) for i in observed)
    out = {}
    for source in config.sources:
        for variable, offset in source.offsets.items():
            for site in layout.sites:
                for layer in layout.layers:
                    if layout.index(seen_name(variable, source.name), site, layer) in observed:
                        v = offset_name(variable, source.name)
                        i = layout.index(v, site, layer)
                        entry = _ar1_summary(analysed, i, offset.sd, offset.timescale_days)
                        true = None if truth is None else truth(f"{v}@{site}/{layer}")
                        if true is not None:
                            est = np.asarray(analysed.analysis_mean)[:, i]
                            entry["truth_last"] = float(true[-1])
                            entry["rmse_vs_truth"] = rmse(est[BURN_IN_DAYS:], true[BURN_IN_DAYS:])
                        out[f"{v}@{site}/{layer}"] = entry
    return out


def augmented_summary(config, layout, analysed, observed, parameter_inputs: ParameterInputs | None = None,
                      truth=None) -> dict:
    """The metrics of the state's augmented elements, those the layout carries: ``model_bias``,
    ``sensor_offsets`` and ``estimated_parameters`` (a hindcast's metrics.json, an operational store's status).
    ``observed``, ``truth``: see :func:`sensor_offset_summary`; ``parameter_inputs``: see
    :func:`estimated_parameter_summary`."""
    out = {}
    if layout.biased:
        out["model_bias"] = model_bias_summary(config, layout, analysed)
    if layout.sensors:
        out["sensor_offsets"] = sensor_offset_summary(config, layout, analysed, observed, truth)
    if layout.estimated:
        out["estimated_parameters"] = estimated_parameter_summary(config, layout, analysed, parameter_inputs)
    return out


def assimilated_groups(cycle_obs, dispositions: np.ndarray) -> np.ndarray:
    """(G,) bool: the super-observations the filter assimilated, from the rows' ``dispositions``."""
    used = np.zeros(cycle_obs.group_cycle.size, bool)
    used[cycle_obs.row_group[dispositions == disp.ASSIMILATED]] = True
    return used


def write_products(work: Path, prepared, outputs, dispositions, baselines: dict, emulator, timings: dict,
                   refits: dict | None = None, chlorophyll_calibration: list | None = None,
                   parameter_inputs: ParameterInputs | None = None) -> dict:
    """Write reanalysis.nc, metrics.json, lineage.json, report.html (and alerts.csv when the config has
    alerts) into ``work``; return the metrics. ``parameter_inputs``: see :func:`estimated_parameter_summary`."""
    from twin.report import write_report
    ds = reanalysis_dataset(prepared, outputs, dispositions)
    encoding = {k: ({"dtype": str} if v.dtype == object else {"zlib": True, "complevel": 4})
                for k, v in ds.variables.items() if v.dtype == object or v.dtype.kind in "fiu"}
    write_netcdf(ds, work / "reanalysis.nc", encoding)
    counts = {disp.DISPOSITION_NAMES[int(c)]: int(k) for c, k in zip(*np.unique(dispositions, return_counts=True))}
    diag = outputs.diagnostics
    metrics = {
        "name": prepared.config.name,
        "period": {"start": str(prepared.day0)[:10], "days": prepared.num_days},
        "filter": prepared.config.filter.model_dump(mode="json"),
        "model": prepared.config.model.kind,
        "dispositions": counts,
        "innovations": {"mean": float(np.mean(np.asarray(diag.innovation_mean))),
                        "normalized_mean": float(np.nanmean(np.asarray(diag.normalized_innovation))),
                        "diverged_cycles": int(np.asarray(diag.diverged).sum()),
                        "by_series": innovation_statistics(ds)},
        "forcing": prepared.forcing_report,
        "timings": timings,
    }
    metrics.update(augmented_summary(prepared.config, prepared.layout, outputs,
                                     # observed: as the store counts them from its assimilated rows
                                     np.unique(prepared.cycle_obs.group_state_index[
                                         assimilated_groups(prepared.cycle_obs, dispositions)]),
                                     parameter_inputs, truth=lambda name: true_sensor_offset(prepared, name)))
    if prepared.truth is not None:
        metrics.update(truth_metrics(prepared, outputs, baselines, dispositions))
    validation = validation_scores(prepared, outputs)
    if validation:
        metrics["validation"] = validation
    if refits is not None:
        metrics["refit"] = refits
    if chlorophyll_calibration:
        metrics["chlorophyll_calibration"] = chlorophyll_calibration
    alerts, alert_history = alert_verification(prepared, outputs)
    if alerts:
        metrics["alerts"] = alerts
        atomic_write(work / "alerts.csv", lambda tmp: alert_history.to_csv(
            tmp, index=False, float_format="%.6g", date_format="%Y-%m-%dT%H:%M:%S"))
    lineage = list(emulator.lineage) if emulator is not None else []
    metrics["emulator_lineage"] = lineage
    text = json.dumps(metrics, indent=2, default=float)
    atomic_write(work / "metrics.json", lambda tmp: tmp.write_text(text))
    atomic_write(work / "lineage.json", lambda tmp: tmp.write_text(json.dumps(lineage, indent=2, default=str)))
    write_report(work / "report.html", prepared, outputs, dispositions, metrics, baselines)
    return metrics

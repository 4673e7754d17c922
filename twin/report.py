"""The hindcast report: one self-contained HTML page (figures embedded as PNG), readable offline or mailed."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from twin import dispositions as disp
from twin.observations import atomic_write
from twin.state_layout import bias_name

_DISPOSITION_STYLE = {disp.ASSIMILATED: ("k", "o", "assimilated"),
                      disp.REJECTED_OUTLIER: ("red", "x", "rejected (outlier)"),
                      disp.BAD_QC: ("orange", "s", "bad or suspect QC"),
                      disp.WITHHELD: ("purple", "D", "withheld (validation)"),
                      disp.DUPLICATE: ("grey", ".", "duplicate")}


def png_html(png: bytes, alt: str) -> str:
    """A PNG embedded in the page (the page works offline and when mailed)."""
    data = base64.b64encode(png).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/></figure>'


def figure_html(fig, alt: str) -> str:
    """A matplotlib figure embedded as PNG (the figure is closed)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return png_html(buf.getvalue(), alt)


def write_html_page(path: Path, title: str, parts: list[str], max_width_px: int = 1400) -> Path:
    """One self-contained HTML page from its parts, written atomically (hindcast, scenario and OSSE reports)."""
    style = (f"body{{font-family:sans-serif;max-width:{max_width_px}px;margin:auto;padding:1em}}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}"
             "img{max-width:100%}figure{margin:0}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>")
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def _site_figure(prepared, outputs, dispositions, baselines, site: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = prepared.layout
    table = prepared.table
    times = prepared.day0 + (np.arange(prepared.num_days) + 1) * np.timedelta64(1, "D")
    variables = ["nitrate", "ammonium", "phosphate", "silicate", "chlorophyll", "oxygen", "phytoplankton",
                 "zooplankton", "detritus"]
    layers = layout.layers
    fig, axes = plt.subplots(len(variables), len(layers), figsize=(6.5 * len(layers), 2.0 * len(variables)),
                             sharex=True, squeeze=False)
    quant = np.asarray(outputs.analysis_quantiles)
    mean = np.asarray(outputs.analysis_mean)
    for r, v in enumerate(variables):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            i = layout.index(v, site, layer)
            ax.fill_between(times, quant[:, 0, i], quant[:, 2, i], color="tab:blue", alpha=0.25, lw=0,
                            label="analysis 5-95 %")
            ax.plot(times, mean[:, i], color="tab:blue", lw=1, label="analysis mean")
            if prepared.truth is not None:
                ax.plot(times, prepared.truth[:, i], color="k", lw=0.8, ls="--", label="truth")
            if "free_run" in baselines:
                ax.plot(times, baselines["free_run"][:, i], color="tab:green", lw=0.7, label="free run")
            sel = ((table["site"].values == site) & (table["layer"].values == layer)
                   & (table["variable"].values == v) & np.isfinite(table["value"].values))
            for code, (color, marker, label) in _DISPOSITION_STYLE.items():
                s = sel & (dispositions == code)
                if s.sum() > 2000:  # a buoy: thin the dots, keep the picture readable
                    s[np.flatnonzero(s)[::max(1, s.sum() // 2000)]] = False
                if s.any():
                    ax.plot(table["time"].values[s], table["value"].values[s], marker, color=color, ms=2.5,
                            ls="none", label=label)
            ax.set_ylabel(v, fontsize=8)
            if r == 0:
                ax.set_title(f"{site} / {layer}")
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.ravel():
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return figure_html(fig, f"time series at {site}")


def _diagnostics_figure(prepared, outputs) -> str:
    import matplotlib.pyplot as plt
    d = outputs.diagnostics
    times = prepared.day0 + (np.arange(prepared.num_days) + 1) * np.timedelta64(1, "D")
    fig, axes = plt.subplots(3, 1, figsize=(11, 6), sharex=True)
    nis = np.asarray(d.normalized_innovation)
    has = np.asarray(d.counts)[:, disp.ASSIMILATED] > 0
    axes[0].plot(times[has], nis[has], ".", ms=3)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel("mean d²/(HPHᵀ+R)")
    axes[0].set_yscale("log")
    axes[1].plot(times, np.asarray(d.prior_spread), label="prior")
    axes[1].plot(times, np.asarray(d.analysis_spread), label="analysis")
    axes[1].set_ylabel("spread (log space)")
    axes[1].legend(fontsize=8)
    counts = np.asarray(d.counts)
    axes[2].plot(times, counts[:, disp.ASSIMILATED], label="assimilated")
    axes[2].plot(times, counts[:, disp.REJECTED_OUTLIER], label="rejected outliers", color="red")
    axes[2].plot(times, np.asarray(d.dofs), label="DFS", color="k", lw=0.8)
    axes[2].set_ylabel("per cycle")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return figure_html(fig, "innovation statistics")


def _ar1_section(prepared, outputs, summary: dict, percent, unit: str, alt: str, truth=None, reference: float = 0.0
                 ) -> tuple[list[list], str]:
    """Rows (element, sd, timescale, mean, 5-95 % over time, last; values through ``percent``) and a figure of
    the analysis mean and 5-95 % band of each element in ``summary`` over time, with ``truth(name)`` (an
    array, or None) dashed where given."""
    import matplotlib.pyplot as plt
    layout = prepared.layout
    times = prepared.day0 + (np.arange(prepared.num_days) + 1) * np.timedelta64(1, "D")
    quant, mean = np.asarray(outputs.analysis_quantiles), np.asarray(outputs.analysis_mean)
    fig, axes = plt.subplots(len(summary), 1, figsize=(11, 1.9 * len(summary) + 0.4), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], summary):
        v, rest = name.split("@")
        i = layout.index(v, *rest.split("/"))
        ax.fill_between(times, percent(quant[:, 0, i]), percent(quant[:, 2, i]), color="tab:purple", alpha=0.25,
                        lw=0)
        ax.plot(times, percent(mean[:, i]), color="tab:purple", lw=0.9, label="analysis")
        true = truth(name) if truth else None
        if true is not None:
            ax.plot(times, percent(true), color="k", lw=0.8, ls="--", label="truth")
            ax.legend(fontsize=7, loc="lower left")
        ax.axhline(reference, color="k", lw=0.6)  # no error, no offset, the emulator's own value
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    rows = [[k, f"{e['sd']:.3g}", f"{e['timescale_days']:.0f}", f"{percent(e['mean']):.2f}",
             f"{percent(e['q05']):.2f} to {percent(e['q95']):.2f}", f"{percent(e['last']):.2f}"]
            for k, e in summary.items()]
    return rows, figure_html(fig, alt)


def _augmented_state_sections(prepared, outputs, metrics: dict) -> list[str]:
    parts = []
    header = ["element", "sd", "timescale (days)", "mean (after the first month)", "5-95 % over time", "last"]
    biases = metrics.get("model_bias") or {}
    rates = {k: v for k, v in biases.items() if not k.startswith(bias_name("chlorophyll") + "@")}
    ratio = {k: v for k, v in biases.items() if k not in rates}
    if rates:
        rows, fig = _ar1_section(prepared, outputs, rates, lambda b: 100 * np.asarray(b),
                                 "% per day", "analysed model biases")
        parts += ["<h2>Model bias</h2>",
                  "<p>The persistent model error the filter estimated (<code>model.bias</code>), in % per day: each "
                  "day the model's value of the tracer is multiplied by exp(b); b is carried in the state as an "
                  "AR(1) with the configured sd and timescale. Positive: the model runs low and the observations "
                  "keep raising it.</p>", html_table(rows, header), fig]
    if ratio:
        rows, fig = _ar1_section(prepared, outputs, ratio, lambda b: 100 * np.expm1(np.asarray(b)),
                                 "% of the ratio", "analysed Chl:N ratio errors")
        parts += ["<h2>Chl:N ratio error</h2>",
                  "<p>How far the model's chlorophyll per unit phytoplankton nitrogen is from the sea's, as the "
                  "filter estimated it (<code>model.bias.chlorophyll</code>), in % (100 (exp(b) - 1)): the "
                  "model's chlorophyll is its diagnostic times exp(b), b carried in the state as an AR(1) with the "
                  "configured sd and timescale. The chlorophyll samples then move phytoplankton only by what this "
                  "factor does not explain.</p>", html_table(rows, header), fig]
    if metrics.get("estimated_parameters"):
        rows, fig = _ar1_section(prepared, outputs, metrics["estimated_parameters"], lambda t: np.exp(np.asarray(t)),
                                 "factor", "analysed parameter factors", reference=1.0)
        parts += ["<h2>Estimated parameters</h2>",
                  "<p>The factors on the emulator's parameter inputs that the filter estimated with the state "
                  "(<code>model.estimate_parameters</code>), as exp(t): each member steps with the emulator's value "
                  "times its own factor, t carried in the state as an AR(1) with the configured sd and timescale, "
                  "and the observations move t through its ensemble covariance with the state. A factor that "
                  "settles away from 1 says what the data ask of the model; it also absorbs the model's other "
                  "errors that this parameter can offset.</p>",
                  html_table(rows, ["element", "sd", "timescale (days)", "mean factor (after the first month)",
                                    "5-95 % over time", "last"]), fig]
        values = {k: e for k, e in metrics["estimated_parameters"].items() if "value" in e}
        if values:
            parts += ["<p>The parameters themselves (the emulator's value in use, which a kept refit may change, "
                      "times the factor), and how often a twentieth of the members or more stepped with the bound "
                      "of the emulator's training range instead of their own value:</p>",
                      html_table([[k, f"{e['value']['mean']:.4g}",
                                   f"{e['value']['q05']:.4g} to {e['value']['q95']:.4g}", f"{e['value']['last']:.4g}",
                                   f"{e['training_range'][0]:.4g} to {e['training_range'][1]:.4g}",
                                   f"{100 * e['cycles_at_range_limit']:.1f} %"] for k, e in values.items()],
                                 ["element", "mean value", "5-95 % over time", "last", "training range",
                                  "cycles at a range limit"])]
    if metrics.get("sensor_offsets"):
        from twin.products import true_sensor_offset
        rows, fig = _ar1_section(prepared, outputs, metrics["sensor_offsets"],
                                 lambda c: 100 * np.expm1(np.asarray(c)), "% of the value", "analysed sensor offsets",
                                 truth=lambda name: true_sensor_offset(prepared, name))
        parts += ["<h2>Sensor offsets</h2>",
                  "<p>How far each sensor named in <code>sources[].offsets</code> reads from the sea, as the filter "
                  "estimated it, in % of the value (100 (exp(c) - 1)); c is carried in the state as an AR(1) with "
                  "the configured sd (of c) and timescale. A slow trend is a drift; the other sources' observations "
                  "of the same variable anchor it.</p>", html_table(rows, header), fig]
    return parts


_ALERT_COLUMNS = [("n", "n"), ("base rate", "base_rate"), ("Brier", "brier"), ("reliability", "reliability"),
                  ("resolution", "resolution"), ("uncertainty", "uncertainty"), ("BSS", "brier_skill_score"),
                  ("hit rate", "hit_rate"), ("false-alarm rate (POFD)", "false_alarm_rate"),
                  ("false-alarm ratio", "false_alarm_ratio")]


def _alert_figures(prepared, outputs, k: int, alert, entry: dict) -> str:
    """Reliability diagrams (observed, truth) and the probability history with the events of alert ``k``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twin.alerts import reliability_figure
    from twin.products import alert_observations, analysis_times
    labels = [label for label in ("observed", "truth") if label in entry]
    fig, axes = plt.subplots(1, len(labels), figsize=(4.6 * len(labels), 4.4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        reliability_figure(entry[label], ax)
        against = "observations" if label == "observed" else "the truth"
        ax.set_title(f"against {against}: {ax.get_title()}", fontsize=8)
    fig.tight_layout()
    parts = [figure_html(fig, f"reliability diagram of {alert.name}")]

    times = analysis_times(prepared)
    probs = np.asarray(outputs.alert_probability)
    fig, ax = plt.subplots(figsize=(11, 3.3))
    ax.plot(times, probs[:, k], color="tab:blue", lw=1, label="issued probability")
    if "truth" in entry:
        A = len(prepared.config.alerts)
        ax.plot(times, probs[:, A + k], color="tab:blue", lw=0.7, ls=":", label="probability of the state")
        i = prepared.layout.index(alert.variable, alert.site, alert.layer)
        x = prepared.truth[:, i]
        beyond = x < alert.threshold if alert.direction == "below" else x > alert.threshold
        ax.fill_between(times, 0, 1, where=beyond, step="mid", color="k", alpha=0.15, lw=0,
                        transform=ax.get_xaxis_transform(), label="true event")
    ax.axhline(alert.probability, color="tab:red", lw=0.8, ls="--", label=f"alert level {alert.probability:g}")
    obs_t, obs_v = alert_observations(prepared.table, alert)
    beyond = obs_v < alert.threshold if alert.direction == "below" else obs_v > alert.threshold
    ax.plot(obs_t[~beyond], np.full((~beyond).sum(), -0.04), "|", color="grey", ms=6, label="observation, no event")
    ax.plot(obs_t[beyond], np.full(beyond.sum(), 1.04), "v", color="tab:red", ms=4, label="observed event")
    ax.set(ylim=(-0.08, 1.08), ylabel=f"P(event within {alert.horizon_days} d)", xlim=(times[0], times[-1]))
    ax.set_title(alert.name, fontsize=9)
    ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    fig.tight_layout()
    parts.append(figure_html(fig, f"probability history of {alert.name}"))
    return "\n".join(parts)


def _alerts_section(prepared, outputs, metrics: dict) -> list[str]:
    alerts = metrics.get("alerts")
    if not alerts:
        return []
    parts = ["<h2>Alerts</h2>",
             "<p>Each cycle's analysis ensemble is run ahead over the alert's horizon (model error included). "
             "The issued probability includes observation error and is verified against the usable "
             "observations: the event is an observation beyond the threshold within (t, t + horizon], t the "
             "end of the cycle's observation window; issue times with no observation in their window are left "
             "out. In a twin experiment the probability of the state itself (no observation error) is also "
             "verified against the daily truth. Windows of consecutive days overlap, so n overstates the "
             "number of independent cases. Hit rate, false-alarm rate (POFD) and false-alarm ratio (FAR) are "
             "those of the warning raised when the probability reaches the alert level.</p>"]
    for k, alert in enumerate(prepared.config.alerts):
        entry = alerts[alert.name]
        rows = [[label] + [np.nan if entry[label][key] is None else entry[label][key] for _, key in _ALERT_COLUMNS]
                for label in ("observed", "truth") if label in entry]
        parts += [f"<h3>{html.escape(alert.name)}: P &ge; {alert.probability:g} within {alert.horizon_days} days</h3>",
                  f"<p>Raised on {entry['raised_days']} of {metrics['period']['days']} days.</p>",
                  html_table(rows, ["verified against"] + [h for h, _ in _ALERT_COLUMNS]),
                  _alert_figures(prepared, outputs, k, alert, entry)]
    return parts


def _or_nan(value) -> float:
    return float("nan") if value is None else float(value)


def html_table(rows: list[list], header: list[str]) -> str:
    """An HTML table; floats to 4 significant digits, non-finite ones as '-'."""
    def fmt(x):
        if isinstance(x, float):
            return "-" if not np.isfinite(x) else f"{x:.4g}"
        return html.escape(str(x))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _parameter_text(values: dict) -> str:
    """``name=value`` pairs of an emulator's calibrated parameter inputs ("defaults" when none)."""
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items()) or "defaults"


def write_report(path: Path, prepared, outputs, dispositions, metrics: dict, baselines: dict) -> Path:
    parts = [f"<h1>Coastal twin hindcast: {html.escape(prepared.config.name)}</h1>",
             f"<p>{metrics['period']['days']} days from {metrics['period']['start']}; "
             f"{prepared.config.filter.method.upper()} with {prepared.config.filter.members} members; "
             f"model: {metrics['model']}.</p>"]
    if "truth" in metrics:
        unobserved = set(metrics["unobserved"])
        rows = []
        for name, e in metrics["truth"].items():
            rows.append([name, "unobserved" if name in unobserved else "observed", e["twin"]["rmse"],
                         e.get("free_run", {}).get("rmse", float("nan")),
                         e.get("process_model", {}).get("rmse", float("nan")),
                         e.get("observation_error", float("nan")),
                         _or_nan(e["twin"].get("rmse_at_observations")), e["twin"]["spread_skill"],
                         _or_nan(e["twin"].get("bias")), _or_nan(e.get("free_run", {}).get("bias"))])
        parts += ["<h2>Skill against the truth (twin experiment)</h2>",
                  "<p>RMSE over every day after a 30-day burn-in; \"at obs.\": the analysis RMSE on the days "
                  "a value of the variable was assimilated, the one to set beside its observation error; bias: "
                  "the mean error over the same days (RMSE<sup>2</sup> = bias<sup>2</sup> + the variance of the "
                  "error).</p>",
                  html_table(rows, ["variable", "", "RMSE twin", "RMSE free run", "RMSE process model",
                                "obs. error", "RMSE twin at obs.", "spread / RMSE", "bias twin",
                                "bias free run"])]
    if "validation" in metrics:
        rows = [[k, e["n"], e["twin"]["rmse"], e["persistence"]["rmse"], e["climatology"]["rmse"],
                 e["twin"]["crps"], e["twin"]["coverage_90"],
                 _or_nan(e["twin"].get("coverage_90_lognormal")), _or_nan(e["twin"].get("normal_interval_below_zero"))]
                for k, e in metrics["validation"].items()]
        parts += ["<h2>Withheld observations</h2>",
                  "<p>The 90 % interval of the forecast with the value's error: normal (mean +- 1.645 sd), and "
                  "the lognormal of the same moments, the filter's own error model for concentrations. Where "
                  "the normal interval's lower end is below zero (last column: the share of values where it "
                  "is), it covers every low value; the lognormal interval does not.</p>",
                  html_table(rows, ["variable", "n", "RMSE twin", "RMSE persistence", "RMSE climatology", "CRPS twin",
                                "90 % coverage", "lognormal 90 % coverage", "normal interval below 0"])]
    parts += _alerts_section(prepared, outputs, metrics)
    parts += ["<h2>Time series</h2>"]
    for site in prepared.layout.sites:
        parts.append(_site_figure(prepared, outputs, dispositions, baselines, site))
    parts += _augmented_state_sections(prepared, outputs, metrics)
    parts += ["<h2>Innovation statistics</h2>", _diagnostics_figure(prepared, outputs)]
    by_series = metrics["innovations"].get("by_series", {})
    if by_series:
        rows = [[k, src, e["n"], e["mean"], e["rms"], e["forecast_sd"], e["error_sd"], e["desroziers_error_sd"],
                 e["consistency"]] for k, per in by_series.items() for src, e in per.items()]
        parts += ["<p>Per series and source, over the assimilated observations: innovations y - Hx<sub>f</sub>, "
                  "the forecast spread and the assumed error at the observations, the error the data imply "
                  "(Desroziers et al. 2005) and rms / sqrt(spread&sup2; + error&sup2;), about 1 when both are "
                  "right.</p>",
                  html_table(rows, ["series", "source", "n", "mean innovation", "RMS innovation", "forecast spread",
                                    "assumed error", "error the data imply", "consistency"])]
    parts += ["<h2>Observation ledger</h2>",
              html_table([[k, v] for k, v in metrics["dispositions"].items()], ["disposition", "count"])]
    lineage = metrics.get("emulator_lineage", [])
    parts += ["<h2>Emulator lineage and refits</h2>",
              html_table([[e.get("kind"), e.get("time"), e.get("data"), e.get("skill_before"), e.get("skill_after"),
                       e.get("kept")] for e in lineage],
                     ["kind", "time", "data", "skill before", "skill after", "kept"]) if lineage
              else "<p>No emulator (process model run).</p>"]
    calibration = metrics.get("chlorophyll_calibration")
    if calibration:
        keys = list(calibration[0]["scale"])
        parts += ["<h2>Chlorophyll calibration</h2>",
                  "<p>Factor on the chlorophyll diagnostic per site and layer, and the mean of the samples over the "
                  "mean forecast at them with that factor (1 is unbiased); the run used the factor after the last "
                  "pass (resolved config, <code>sites[].chlorophyll_scale</code>).</p>",
                  html_table([[h["pass"], *(f"{h['scale'][k]:.3g}" for k in keys),
                               *(f"{h['observed_over_forecast'][k]:.3g}" for k in keys)] for h in calibration],
                             ["pass", *(f"factor {k}" for k in keys), *(f"samples / forecast {k}" for k in keys)])]
        if "seasonal" in calibration[0]:
            def pair(ab):
                return f"{ab[0]:+.3f}, {ab[1]:+.3f}"
            parts += ["<p>Its annual harmonic (<code>sites[].chlorophyll_seasonal</code>): the factor times "
                      "exp(a cos(2&pi;d/365.25) + b sin(2&pi;d/365.25)), d the day of the year; and the harmonic "
                      "of log(sample / forecast) left at the samples with it (0, 0 is unbiased in every "
                      "season).</p>",
                      html_table([[h["pass"], *(pair(h["seasonal"][k]) for k in keys),
                                   *(pair(h["seasonal_residual"][k]) for k in keys)] for h in calibration],
                                 ["pass", *(f"(a, b) {k}" for k in keys), *(f"left {k}" for k in keys)])]
    refit = metrics.get("refit")
    if refit:
        parts += [f"<h3>Refit history (every {refit['interval_days']} days)</h3>",
                  html_table([[r["time"], r["holdout"], r["score_before"], r["score_after"], r["kept"],
                               r.get("fitted", ""), _parameter_text(r.get("parameter_values", {})),
                               r.get("why", ""), r["seconds"]] for r in refit["history"]],
                         ["time", "held out", "forecast score before", "after", "kept", "fitted",
                          "parameter inputs from then on", "why", "seconds"])
                  if refit["history"] else "<p>No refit was attempted (too little data before the first one).</p>"]
        lead = next((k for k in refit if k.startswith("forecast_")), None)
        if lead:
            before, after = refit[lead]["pretrained"], refit[lead]["refit"]
            overall = refit.get("refit_over_pretrained")
            parts += [f"<h3>{lead.split('_')[1]} forecast RMSE against the truth: pretrained vs refit emulator</h3>"]
            if overall:
                parts += [f"<p>Refit over pretrained RMSE, mean over variables: {overall['mean_rmse_ratio']:.3f}; "
                          f"the refit forecasts {overall['variables_better']} of {overall['variables']} "
                          f"variables better.</p>"]
            parts.append(html_table([[k, before[k], after[k]] for k in before], ["variable", "pretrained", "refit"]))
    return write_html_page(path, f"twin hindcast {prepared.config.name}", parts)

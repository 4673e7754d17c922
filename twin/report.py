"""The hindcast report: one self-contained HTML page (figures embedded as PNG), readable offline or mailed."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from twin import dispositions as disp
from twin.observations import atomic_write

_DISPOSITION_STYLE = {disp.ASSIMILATED: ("k", "o", "assimilated"),
                      disp.REJECTED_OUTLIER: ("red", "x", "rejected (outlier)"),
                      disp.BAD_QC: ("orange", "s", "bad or suspect QC"),
                      disp.WITHHELD: ("purple", "D", "withheld (validation)"),
                      disp.DUPLICATE: ("grey", ".", "duplicate")}


def _figure_html(fig, alt: str) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/></figure>'


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
    return _figure_html(fig, f"time series at {site}")


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
    return _figure_html(fig, "innovation statistics")


def _table(rows: list[list], header: list[str]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return "-" if not np.isfinite(x) else f"{x:.4g}"
        return html.escape(str(x))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
                         e.get("observation_error", float("nan")), e["twin"]["spread_skill"]])
        parts += ["<h2>Skill against the truth (twin experiment)</h2>",
                  _table(rows, ["variable", "", "RMSE twin", "RMSE free run", "RMSE process model",
                                "obs. error", "spread / RMSE"])]
    if "validation" in metrics:
        rows = [[k, e["n"], e["twin"]["rmse"], e["persistence"]["rmse"], e["climatology"]["rmse"],
                 e["twin"]["crps"], e["twin"]["coverage_90"]] for k, e in metrics["validation"].items()]
        parts += ["<h2>Withheld observations</h2>",
                  _table(rows, ["variable", "n", "RMSE twin", "RMSE persistence", "RMSE climatology", "CRPS twin",
                                "90 % coverage"])]
    parts += ["<h2>Time series</h2>"]
    for site in prepared.layout.sites:
        parts.append(_site_figure(prepared, outputs, dispositions, baselines, site))
    parts += ["<h2>Innovation statistics</h2>", _diagnostics_figure(prepared, outputs)]
    parts += ["<h2>Observation ledger</h2>",
              _table([[k, v] for k, v in metrics["dispositions"].items()], ["disposition", "count"])]
    lineage = metrics.get("emulator_lineage", [])
    parts += ["<h2>Emulator lineage and refits</h2>",
              _table([[e.get("kind"), e.get("time"), e.get("data"), e.get("skill_before"), e.get("skill_after"),
                       e.get("kept")] for e in lineage],
                     ["kind", "time", "data", "skill before", "skill after", "kept"]) if lineage
              else "<p>No emulator (process model run).</p>"]
    refit = metrics.get("refit")
    if refit:
        parts += [f"<h3>Refit history (every {refit['interval_days']} days)</h3>",
                  _table([[r["time"], r["holdout"], r["score_before"], r["score_after"], r["kept"], r["seconds"]]
                          for r in refit["history"]],
                         ["time", "held out", "forecast score before", "after", "kept", "seconds"])
                  if refit["history"] else "<p>No refit was attempted (too little data before the first one).</p>"]
        lead = next((k for k in refit if k.startswith("forecast_")), None)
        if lead:
            before, after = refit[lead]["pretrained"], refit[lead]["refit"]
            parts += [f"<h3>{lead.split('_')[1]} forecast RMSE against the truth: pretrained vs refit emulator</h3>",
                      _table([[k, before[k], after[k]] for k in before], ["variable", "pretrained", "refit"])]
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}"
             "img{max-width:100%}figure{margin:0}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>twin hindcast "
            f"{html.escape(prepared.config.name)}</title><style>{style}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))

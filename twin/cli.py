"""The `twin` command line. Entry points stay thin: parse, call the library, print, set the exit code."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from twin import __version__
from twin.errors import ConfigError, InputError
from twin.store import StoreBusy, StoreError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_BUSY = 75  # EX_TEMPFAIL: another cycle holds the store; a scheduler retries later
FORMATS = ("somlit", "coasthf", "oceansites", "swmp", "csv", "gridded")


def _cmd_config_check(args) -> int:
    from twin.config import dump_config, load_config
    config = load_config(args.file)
    print(f"# {args.file}: valid")
    print(dump_config(config), end="")
    return EXIT_OK


def _read_inputs(paths, fmt, mapping):
    from twin.ingest import read_paths
    options = {"mapping": mapping} if mapping else {}
    if fmt == "csv" and not mapping:
        raise ConfigError("--format csv", ["--mapping FILE is required for generic CSV"])
    return read_paths(paths, fmt, **options)


def _cmd_data_summary(args) -> int:
    from twin.summary import format_summary, summarise
    table = _read_inputs(args.paths, args.format, args.mapping)
    series = summarise(table)
    print(format_summary(series))
    if args.json:
        print(json.dumps({"series": series}, separators=(",", ":")))
    return EXIT_OK


def _cmd_qc(args) -> int:
    from twin.config import QcConfig, TwinConfig, load_config, write_resolved_config
    from twin.ingest import ingest
    from twin.observations import to_netcdf
    from twin.qc import apply_qc, plot_qc
    from twin.summary import format_summary, summarise

    if args.config:
        config = load_config(args.config)
    else:
        config = TwinConfig()
    if args.paths:
        table = _read_inputs(args.paths, args.format, args.mapping)
    elif config.sources:
        table = ingest(config)
    else:
        raise ConfigError("twin qc", ["give data files, or --config with 'sources'"])
    out = Path(args.out or config.output.directory)
    print(f"qc: {table.sizes['obs']} observations, writing to {out}", file=sys.stderr)
    flagged = apply_qc(table, config.qc if args.config else QcConfig(), progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    to_netcdf(flagged, out / "observations_qc.nc")
    write_resolved_config(config, out)
    if not args.no_plots:
        plots = plot_qc(flagged, out / "plots")
        print(f"qc: {len(plots)} plots in {out / 'plots'}", file=sys.stderr)
    print(format_summary(summarise(flagged)))
    return EXIT_OK


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def augmented_lines(metrics: dict) -> list[str]:
    """One line per augmented element of a hindcast's metrics or a store's status (``model_bias``,
    ``estimated_parameters``, ``sensor_offsets``)."""
    from twin.state_layout import PARAMETER_SUFFIX, bias_name
    lines = []
    for name, e in metrics.get("model_bias", {}).items():
        if name.startswith(bias_name("chlorophyll") + "@"):   # a log factor of the Chl:N ratio, not a rate
            lines.append(f"model Chl:N error {name}: {100 * math.expm1(e['mean']):+.1f} % of the ratio on average "
                         f"(5-95 % over time {100 * math.expm1(e['q05']):+.1f} to {100 * math.expm1(e['q95']):+.1f}), "
                         f"last {100 * math.expm1(e['last']):+.1f}")
            continue
        lines.append(f"model bias {name}: {100 * e['mean']:+.2f} % per day on average (5-95 % over time "
                     f"{100 * e['q05']:+.2f} to {100 * e['q95']:+.2f}), last {100 * e['last']:+.2f}")
    for name, e in metrics.get("estimated_parameters", {}).items():
        parameter = name.split("@")[0].removesuffix(PARAMETER_SUFFIX)
        value = e.get("value")
        limit = e.get("cycles_at_range_limit")
        value_text = "" if value is None else (
            f"; {parameter} {value['mean']:.3g} on average (training range {e['training_range'][0]:.3g}-"
            f"{e['training_range'][1]:.3g}"
            + ("" if limit is None else f"; members at a range limit in {100 * limit:.0f} % of cycles") + ")")
        lines.append(f"estimated {parameter} at {name.split('@')[1].split('/')[0]}: x{math.exp(e['mean']):.3f} the "
                     f"emulator's value on average (5-95 % over time x{math.exp(e['q05']):.3f} to "
                     f"x{math.exp(e['q95']):.3f}), last x{math.exp(e['last']):.3f}{value_text}")
    for name, e in metrics.get("sensor_offsets", {}).items():
        truth = f"; truth {100 * math.expm1(e['truth_last']):+.1f} %" if "truth_last" in e else ""
        lines.append(f"sensor offset {name}: reads {100 * math.expm1(e['last']):+.1f} % of the value at the end "
                     f"({100 * math.expm1(e['mean']):+.1f} % on average{truth})")
    return lines


def _summary_lines(metrics: dict) -> list[str]:
    """The headline of a hindcast: skill against the truth or against withheld observations."""
    lines = [f"hindcast {metrics['name']}: {metrics['period']['days']} days from {metrics['period']['start']}, "
             f"model {metrics['model']}"]
    if "truth" in metrics:
        unobserved = set(metrics["unobserved"])
        lines.append(f"{'variable':<34} {'':>10} {'rmse twin':>10} {'free run':>10} {'process':>10} "
                     f"{'spread/rmse':>11} {'obs. error':>10} {'twin at obs.':>12}")
        for name, e in metrics["truth"].items():
            at_obs = e["twin"].get("rmse_at_observations")
            lines.append(f"{name:<34} {'unobserved' if name in unobserved else 'observed':>10} "
                         f"{e['twin']['rmse']:>10.4g} {e['free_run']['rmse']:>10.4g} "
                         f"{e['process_model']['rmse']:>10.4g} {e['twin']['spread_skill']:>11.2f} "
                         f"{e.get('observation_error', float('nan')):>10.4g} "
                         f"{float('nan') if at_obs is None else at_obs:>12.4g}")
    for name, e in metrics.get("validation", {}).items():
        lines.append(f"withheld {name:<34} n={e['n']:<5} rmse {e['twin']['rmse']:.4g} "
                     f"(persistence {e['persistence']['rmse']:.4g}, climatology {e['climatology']['rmse']:.4g}), "
                     f"90% coverage {e['twin']['coverage_90']:.2f}"
                     + (f" (lognormal {e['twin']['coverage_90_lognormal']:.2f})"
                        if e['twin'].get('coverage_90_lognormal') is not None else ""))
    lines += augmented_lines(metrics)
    refit = metrics.get("refit")
    if refit:
        lines.append(f"refits kept: {refit['kept']} of {len(refit['history'])} (every {refit['interval_days']} days)")
        overall = refit.get("refit_over_pretrained")
        if overall:
            lines.append(f"7-day forecast RMSE against the truth, refit over pretrained emulator: mean ratio "
                         f"{overall['mean_rmse_ratio']:.3f}, better for {overall['variables_better']} of "
                         f"{overall['variables']} variables")
    return lines


def _cmd_hindcast(args) -> int:
    from twin.config import load_config
    from twin.hindcast import run_hindcast
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    config = load_config(path)
    if args.data:
        config = _with_data_path(config, args.data)
    out = Path(args.out or config.output.directory)
    metrics = run_hindcast(config, out, quiet=args.quiet)
    print("\n".join(_summary_lines(metrics)))
    print(f"products in {out}: reanalysis.nc, metrics.json, report.html")
    if args.json:
        print(json.dumps(metrics, default=float, separators=(",", ":")))
    return EXIT_OK


def _with_data_path(config, data: str):
    """Sources re-rooted under ``data``: each source keeps its file name (and the folder above it)."""
    root = Path(data).expanduser().resolve()
    if not root.exists():
        raise ConfigError("--data", [f"{root}: no such folder"])
    sources = []
    for s in config.sources:
        p = Path(s.path)
        candidates = [root / p.parent.name / p.name, root / p.name]
        found = next((c for c in candidates if c.exists() or any(ch in p.name for ch in "*?[")), candidates[0])
        sources.append(s.model_copy(update={"path": str(found)}))
    return config.model_copy(update={"sources": tuple(sources)})


def _cmd_emulator_train(args) -> int:
    from emulators.checkpoint import save_checkpoint
    from twin.config import load_config, write_resolved_config
    from twin.emulator_source import pretrain
    config = load_config(args.config)
    emulator, history = pretrain(config, progress=not args.quiet)
    out = Path(args.out)
    save_checkpoint(out, emulator)
    write_resolved_config(config, out)
    val = history.get("val_loss") or [float("nan")]
    print(f"emulator trained in {history['seconds']:.1f} s (process-model data "
          f"{history.get('data_seconds', float('nan')):.1f} s); final validation loss {val[-1]:.4g}; "
          f"checkpoint {out}")
    return EXIT_OK


def _cmd_emulator_evaluate(args) -> int:
    import jax

    from emulators.checkpoint import load_checkpoint
    from emulators.training import evaluate
    from twin.config import load_config
    from twin.emulator_source import ensemble_spec
    config = load_config(args.config)
    emulator = load_checkpoint(args.checkpoint)
    # A seed never used in training: unseen forcing years.
    result = evaluate(emulator, jax.random.PRNGKey(10_000 + config.emulator.pretrain.seed), ensemble_spec(config),
                      long_run_years=args.long_run_years)
    print(f"{'variable':<28} {'range-normalised RMSE, 1-year free run':>40}")
    for name, value in result["free_run_nrmse"].items():
        flag = "" if value < 0.10 else "  (above the 0.10 goal)"
        print(f"{name:<28} {value:>40.4f}{flag}")
    long_run = result["long_run"]
    print(f"max {result['max_nrmse']:.4f}; {args.long_run_years}-year free run: "
          + ", ".join(f"{k} {v}" for k, v in long_run.items() if not isinstance(v, dict)))
    if args.json:
        print(json.dumps(result, default=float, separators=(",", ":")))
    return EXIT_OK


def _print_report(report: dict, as_json: bool, lines: list[str]) -> None:
    print("\n".join(lines))
    if as_json:
        print(json.dumps(report, default=str, separators=(",", ":")))


def _cmd_init(args) -> int:
    from twin.config import load_config
    from twin.operational import init_store
    config = load_config(Path(args.config) if args.config else DEFAULT_CONFIG)
    manifest = init_store(args.store, config, from_hindcast=args.from_hindcast, quiet=args.quiet)
    print(f"store {args.store} created: day 0 {manifest['day0']}, {manifest['cycles_done']} cycles done")
    return EXIT_OK


def _estimated_lines(report: dict) -> list[str]:
    """A store's augmented elements (``twin.operational.augmented_status``), for `twin cycle` and `twin status`."""
    if not report.get("augmented"):
        return []
    return ([f"  estimated in the state, since {report['augmented_since'][:10]}:"]
            + [f"    {line}" for line in augmented_lines(report["augmented"])])


def _cmd_cycle(args) -> int:
    from twin.operational import run_cycle, use_compilation_cache
    use_compilation_cache(args.store)
    report = run_cycle(args.store, until=args.until, data=tuple(args.data or ()), quiet=args.quiet,
                       lock_timeout_s=args.lock_timeout)
    lines = [f"{report['store']}: {report.get('message', 'cycled')}; {report['files_read']} new file(s), "
             f"{report['rows_new']} new row(s), {report['late']} late, {report['cycles']} cycle(s); "
             f"analysis at {report.get('analysis_time', '-')} ({report['seconds']:.1f} s)"]
    lines += [f"  unreadable (retried next cycle): {e['file']}: {e['error']}" for e in report["errors"]]
    if report.get("alerts_raised"):
        lines.append(f"  ALERTS: {', '.join(report['alerts_raised'])}")
    if report.get("suspect_rows"):
        lines.append(f"  {report['suspect_rows']} new observation(s) suspect against the twin's forecast")
    lines += _estimated_lines(report)
    _print_report(report, args.json, lines)
    return EXIT_OK


def _cmd_status(args) -> int:
    from twin.operational import store_status
    status = store_status(args.store)
    lines = [f"{status['store']}: {'healthy' if status['healthy'] else 'PROBLEMS: ' + '; '.join(status['problems'])}",
             f"  last analysis {status['last_analysis']} after {status['cycles_done']} cycles "
             f"(last run {status['last_cycle_run']})",
             f"  ledger: {status['ledger']['rows']} rows: "
             + ", ".join(f"{k} {v}" for k, v in status["ledger"]["by_disposition"].items()),
             f"  emulator: {status['emulator']}; last refit: "
             f"{(status['last_refit'] or {}).get('time', 'none')}",
             f"  open alerts: {', '.join(a['name'] for a in status['open_alerts']) or 'none'}"]
    lines += [f"  drifting: {d['series']} (mean normalised innovation {d['mean_normalised_innovation']:+.2f} "
              f"over {d['rows']} rows)" for d in status["drifting"]]
    lines += _estimated_lines(status)
    _print_report(status, args.json, lines)
    return EXIT_OK if status["healthy"] else EXIT_USAGE


def _cmd_forecast(args) -> int:
    from twin.operational import store_forecast, use_compilation_cache
    use_compilation_cache(args.store)
    path = store_forecast(args.store, args.days, args.out)
    print(f"forecast {args.days} days: {path}")
    return EXIT_OK


def _cmd_scenario(args) -> int:
    from twin.operational import use_compilation_cache
    from twin.scenario import scenario
    use_compilation_cache(args.store)
    summary = scenario(args.store, args.scenario, args.out, quiet=args.quiet)
    lines = [f"scenarios from the analysis of {summary['start']}, {summary['days']} days, {summary['members']} "
             f"members, model: {summary['model']}: {summary['out']} ({summary['seconds']:.1f} s)"]
    for name, entry in summary["scenarios"].items():
        lines.append(f"  {name}: time-mean difference, mean [5 %, 95 %]")
        for variable, d in entry["differences"].items():
            e = d["time_mean"]
            check = f"  (process model {d['process_model_time_mean']:+.4g})" if "process_model_time_mean" in d else ""
            lines.append(f"    {variable:32s} {e['mean']:+10.4g} [{e['q05']:+.4g}, {e['q95']:+.4g}] {d['units']}"
                         f"{check}")
        lines += [f"    warning: {w}" for w in entry["warnings"]]
        if entry["newly_outside_training_range"]:
            lines.append(f"    outside the emulator's training range (extrapolation): "
                         f"{', '.join(entry['newly_outside_training_range'])}")
    _print_report(summary, args.json, lines)
    return EXIT_OK


def _cmd_sampling(args) -> int:
    from twin.advice import format_store_plan, format_verification, plan_for_store, verify_in_twin_experiment
    from twin.operational import use_compilation_cache
    use_compilation_cache(args.store)
    result = plan_for_store(args.store, args.target, args.horizon, args.candidates, args.budget, args.seed)
    report = {"plan": result.as_json()}
    lines = [format_store_plan(result)]
    if args.verify_trials:
        check = verify_in_twin_experiment(args.store, args.target, args.horizon, budget=args.budget,
                                          num_trials=args.verify_trials, spin_up_days=args.spin_up_days,
                                          candidates_file=args.candidates, random_draws=args.random_draws,
                                          seed=args.seed, truth_path=args.truth)
        report["verification"] = check.as_json()
        lines.append(format_verification(check))
    _print_report(report, args.json, lines)
    return EXIT_OK


def _cmd_osse(args) -> int:
    from twin.config import load_config
    from twin.experiments import format_study, load_experiment, run_study
    config = load_config(args.config)
    if args.data:
        config = _with_data_path(config, args.data)
    experiment = load_experiment(args.experiment)
    out = Path(args.out or f"{config.output.directory}-osse-{Path(args.experiment).stem}")
    study = run_study(config, experiment, out, workers=args.workers, scheduler=args.scheduler,
                      quiet=args.quiet,
                      progress=None if args.quiet else (lambda line: print(f"[osse] {line}", flush=True)))
    print("\n".join(format_study(study)))
    print(f"products in {out}: osse.json, osse.csv, skill_vs_data.png, report.html, one folder per run")
    if args.json:
        print(json.dumps(study, default=float, separators=(",", ":")))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twin",
        description="Digital twin of coastal observatories: ingest and qualify coastal series, "
                    "emulate coastal biogeochemistry, assimilate with ensemble Kalman filters.",
    )
    parser.add_argument("--version", action="version", version=f"twin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_config = sub.add_parser("config", help="configuration files", description="Configuration files.")
    sub_config = p_config.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p_check = sub_config.add_parser(
        "check", help="validate a config and print it resolved",
        description="Validate a YAML config. Prints the resolved configuration (defaults filled, "
                    "paths absolute), or every error with its key path; exit 2 on errors.")
    p_check.add_argument("file", help="YAML configuration file")
    p_check.set_defaults(func=_cmd_config_check)

    p_data = sub.add_parser("data", help="look at data files", description="Look at data files.")
    sub_data = p_data.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p_sum = sub_data.add_parser(
        "summary", help="counts by flag, spans and gaps per site, layer and variable",
        description="Read data files into the canonical observation table and print, per site, depth "
                    "layer and variable: counts of good, suspect, bad, censored (below detection) and "
                    "missing values, first and last time, median sampling interval and longest gap "
                    "(days). With --json the last line is one JSON object {\"series\": [...]}.")
    p_sum.add_argument("paths", nargs="+", metavar="PATH", help="data files (globs allowed)")
    p_sum.add_argument("--format", choices=FORMATS, help="reader to use (default: detected per file)")
    p_sum.add_argument("--mapping", help="YAML column mapping for --format csv")
    p_sum.add_argument("--json", action="store_true", help="end with one JSON line")
    p_sum.set_defaults(func=_cmd_data_summary)

    p_qc = sub.add_parser(
        "qc", help="run QARTOD tests, write flagged table and plots",
        description="Qualify data with the IOOS QARTOD tests that fit each series (gross range, "
                    "climatology, spike, rate of change, flat line, and drift of a high-frequency sensor against "
                    "reference samples), thresholds from the config's 'qc' "
                    "section; aggregates worst-wins into the canonical flag, keeps each test's result, "
                    "writes observations_qc.nc (CF NetCDF) and one plot per site and variable.")
    p_qc.add_argument("paths", nargs="*", metavar="PATH", help="data files (default: the config's sources)")
    p_qc.add_argument("--config", help="YAML config (thresholds, sources)")
    p_qc.add_argument("--format", choices=FORMATS)
    p_qc.add_argument("--mapping", help="YAML column mapping for --format csv")
    p_qc.add_argument("--out", help="output directory (default: the config's output.directory)")
    p_qc.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p_qc.add_argument("--quiet", action="store_true", help="no progress bar")
    p_qc.set_defaults(func=_cmd_qc)

    p_h = sub.add_parser(
        "hindcast", help="reanalysis of years of data (default: the embedded twin experiment)",
        description="Ingest and qualify every source of the config, build forcing, load or pretrain the "
                    "emulator, assimilate every observation with the configured ensemble filter (one compiled "
                    "lax.scan per window), and write reanalysis.nc (CF), metrics.json, the "
                    "resolved config, the emulator lineage and report.html into the output folder. Without "
                    "CONFIG, runs configs/demo.yaml: a twin experiment that needs no data.")
    p_h.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    p_h.add_argument("--out", help="output folder (default: the config's output.directory)")
    p_h.add_argument("--data", help="folder holding the config's data files (overrides their folder)")
    p_h.add_argument("--json", action="store_true", help="end with the metrics as one JSON line")
    p_h.add_argument("--quiet", action="store_true", help="no progress output")
    p_h.set_defaults(func=_cmd_hindcast)

    p_init = sub.add_parser(
        "init", help="create an operational store",
        description="Create a twin store: the resolved config, the emulator checkpoint and lineage, the initial "
                    "ensemble (or the last analysis of --from-hindcast), inflation state, random seed, an empty "
                    "observation ledger and the manifest.")
    p_init.add_argument("store", help="store folder (must not exist yet)")
    p_init.add_argument("--config", help="YAML config (default: the embedded demo)")
    p_init.add_argument("--from-hindcast", help="a hindcast output folder to start from")
    p_init.add_argument("--quiet", action="store_true")
    p_init.set_defaults(func=_cmd_init)
    p_cyc = sub.add_parser(
        "cycle", help="assimilate what is new, forecast, evaluate alerts",
        description="Ingest only what is new (files and rows recognised by content), qualify it, assimilate to "
                    "the newest complete analysis window (or --until), forecast hindcast.forecast_days ahead, "
                    "evaluate the alerts, write products; the manifest is written last, so a killed cycle "
                    "leaves the store as it was. Waits for the lock if another cycle runs.")
    p_cyc.add_argument("store")
    p_cyc.add_argument("--until", help="analyse up to this time (ISO 8601)")
    p_cyc.add_argument("--data", nargs="+", metavar="PATH", help="new data files or folders")
    p_cyc.add_argument("--lock-timeout", type=float, default=60.0, help="seconds to wait for the lock")
    p_cyc.add_argument("--json", action="store_true", help="end with one JSON line")
    p_cyc.add_argument("--quiet", action="store_true")
    p_cyc.set_defaults(func=_cmd_cycle)
    p_st = sub.add_parser("status", help="state of a store",
                          description="Last analysis time, ledger counts by disposition, emulator version, last "
                                      "refit, open alerts, drifting sensors, store health (exit 2 if unhealthy).")
    p_st.add_argument("store")
    p_st.add_argument("--json", action="store_true")
    p_st.set_defaults(func=_cmd_status)
    p_fc = sub.add_parser("forecast", help="ensemble forecast from the last analysis",
                          description="The ensemble forecast from the store's last analysis as CF NetCDF.")
    p_fc.add_argument("store")
    p_fc.add_argument("--days", type=int, default=7)
    p_fc.add_argument("--out", help="copy the NetCDF here")
    p_fc.set_defaults(func=_cmd_forecast)

    p_sc = sub.add_parser(
        "scenario", help="what-if scenarios: changed forcing or parameters beside the baseline",
        description="From the store's last analysis (or the analysis of the file's 'start' date), run the "
                    "ensemble 'days' ahead under the store's forcing (baseline) and under each scenario's "
                    "changes (shift, scale or replace a forcing series over a period, or a process-model "
                    "parameter), same members and same random draws; report the difference of every "
                    "variable with its 90 %% interval, alert probabilities under both, and the days the "
                    "emulator runs outside its training range. Writes scenario.nc (CF), scenario.json, "
                    "report.html and the resolved scenario file into --out, atomically.")
    p_sc.add_argument("store", help="store folder (twin init, twin cycle)")
    p_sc.add_argument("scenario", help="scenario YAML file (see configs/scenarios/)")
    p_sc.add_argument("--out", help="output folder (default: scenario-<file name> next to the store)")
    p_sc.add_argument("--json", action="store_true", help="end with the summary as one JSON line")
    p_sc.add_argument("--quiet", action="store_true")
    p_sc.set_defaults(func=_cmd_scenario)

    p_sa = sub.add_parser(
        "sampling", help="which samples would reduce a target's forecast uncertainty most",
        description="Run the store's ensemble HORIZON days ahead from its last analysis and plan BUDGET samples "
                    "(site x variable x lead day, each with its error) that most reduce the forecast variance of "
                    "the target at the horizon: ensemble covariance formula, greedy with a serial square-root "
                    "update between picks, in log space for concentrations. Prints each pick with the "
                    "expected variance and sd after it. With --verify-trials T, also scores the advice in the "
                    "store's twin experiment: over T analysis days, the target's actual error after the "
                    "plan's samples against as many random candidates (needs the experiment's truth).")
    p_sa.add_argument("store")
    p_sa.add_argument("--target", required=True, metavar="VARIABLE@SITE/LAYER",
                      help="the quantity to pin down, e.g. 'oxygen@SYNTH-B/bottom'")
    p_sa.add_argument("--horizon", type=int, required=True, metavar="DAYS", help="lead day of the target")
    p_sa.add_argument("--candidates", metavar="FILE",
                      help="CSV or YAML of candidates (variable, site, layer, lead_day, error_sd); default: "
                           "every observable variable at every site and layer on lead days 1..DAYS")
    p_sa.add_argument("--budget", type=int, default=3, metavar="K", help="samples in the plan (default 3)")
    p_sa.add_argument("--seed", type=int, default=0,
                      help="forecast noise and verification draws (0: the store's own forecast)")
    p_sa.add_argument("--verify-trials", type=int, default=0, metavar="T",
                      help="also verify against random samples over T days of the twin experiment")
    p_sa.add_argument("--spin-up-days", type=int, default=60, help="first verification day (default 60)")
    p_sa.add_argument("--random-draws", type=int, default=1,
                      help="random choices (and noise draws) averaged per verification trial (default 1)")
    p_sa.add_argument("--truth", help="the experiment's truth.nc (default: STORE/experiment/truth.nc)")
    p_sa.add_argument("--json", action="store_true", help="end with one JSON line")
    p_sa.set_defaults(func=_cmd_sampling)

    p_os = sub.add_parser(
        "osse", help="data denial and refit-interval experiments (skill vs data kept, cost of gaps)",
        description="Rerun the config's hindcast once per run of EXPERIMENT.yaml, with observations denied by "
                    "rule (all, no_buoy, thin_bottles, no_layer, no_variable, no_site, period_gap, random_gaps) "
                    "and/or another refit interval (refit_study). Each run goes to OUT/<run>/; the study "
                    "writes osse.json, osse.csv (run x variable: RMSE and CRPS against the truth in a twin "
                    "experiment, against the config's withheld observations on real stations), "
                    "skill_vs_data.png, refit_interval.png and report.html.")
    p_os.add_argument("config", help="YAML config of the hindcast")
    p_os.add_argument("experiment", help="YAML experiment file (runs, refit_study)")
    p_os.add_argument("--out", help="output folder (default: <output.directory>-osse-<experiment name>)")
    p_os.add_argument("--data", help="folder holding the config's data files (overrides their folder)")
    p_os.add_argument("--workers", type=int, default=1,
                      help="runs in parallel (dask LocalCluster of single-threaded processes; default 1: in turn)")
    p_os.add_argument("--scheduler", help="address of a running dask scheduler (instead of --workers)")
    p_os.add_argument("--json", action="store_true", help="end with osse.json as one JSON line")
    p_os.add_argument("--quiet", action="store_true", help="no progress lines")
    p_os.set_defaults(func=_cmd_osse)

    p_em = sub.add_parser("emulator", help="train and evaluate the neural emulator",
                          description="Train and evaluate the neural emulator of the process model.")
    sub_em = p_em.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p_tr = sub_em.add_parser(
        "train", help="pretrain an emulator on a process-model ensemble",
        description="Run a process-model ensemble for the config's sites (parameters and forcing perturbed "
                    "as emulator.pretrain says), train the Flax emulator on multi-step rollouts with optax, "
                    "and write an atomic checkpoint (weights, normalisation, training ranges, model error, "
                    "config hash, lineage) to --out.")
    p_tr.add_argument("config", help="YAML config (its emulator.pretrain section)")
    p_tr.add_argument("--out", required=True, help="checkpoint folder")
    p_tr.add_argument("--quiet", action="store_true", help="no progress bar")
    p_tr.set_defaults(func=_cmd_emulator_train)
    p_ev = sub_em.add_parser(
        "evaluate", help="skill of an emulator against the process model on unseen forcing years",
        description="One-year free runs of the emulator against the process model on forcing years not seen "
                    "in training: range-normalised RMSE per variable (goal below 0.10); then a long free run "
                    "checked for finite, positive and seasonal behaviour.")
    p_ev.add_argument("checkpoint", help="checkpoint folder")
    p_ev.add_argument("config", help="YAML config (sites and ensemble settings)")
    p_ev.add_argument("--long-run-years", type=int, default=20)
    p_ev.add_argument("--json", action="store_true", help="end with the result as one JSON line")
    p_ev.set_defaults(func=_cmd_emulator_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A group without its subcommand: show that group's help.
        target = {"config": "config", "data": "data", "emulator": "emulator"}.get(
            getattr(args, "command", None) or "")
        if target:
            parser.parse_args([target, "--help"])
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (InputError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreBusy, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUSY if isinstance(exc, StoreBusy) else EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _skip_dask_array_import() -> None:
    """The commands hold no dask arrays, yet xarray imports dask (0.9 s in all, a fifth of a scheduled
    ``twin cycle``) at the first Dataset it builds or indexes, only to ask whether an array is a dask one.
    For this process: record dask arrays as absent in xarray's duck-array registry, and answer "is it a
    dask collection" with no when dask was never imported (then none can exist). Both are private to the
    pinned xarray: if they move, nothing breaks, the command is only slower. (``twin osse --workers``
    uses dask.distributed, not dask arrays.)"""
    try:
        from packaging.version import Version
        from xarray.namedarray import pycompat, utils
        absent = object.__new__(pycompat.DuckArrayModule)
        absent.module, absent.version, absent.type, absent.available = None, Version("0.0.0"), (), False
        pycompat._cached_duck_array_modules.setdefault("dask", absent)
        is_dask_collection = utils.is_dask_collection
        utils.is_dask_collection = lambda x: "dask" in sys.modules and is_dask_collection(x)
    except (ImportError, AttributeError, TypeError):
        pass


def run() -> None:
    """The ``twin`` command: ``main``, then leave without tearing the interpreter down.

    Everything the command writes is on disk by then (fsync, rename, manifest last), and tearing down
    JAX's backend, XLA's executables and the scientific stack takes over a second, a quarter of a
    scheduled ``twin cycle``'s budget. ``main`` itself returns normally, for callers in a process."""
    _skip_dask_array_import()
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

"""The `twin` command line. Entry points stay thin: parse, call the library, print, set the exit code."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from twin import __version__
from twin.errors import ConfigError, InputError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
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
    from twin.config import QcConfig, load_config, write_resolved_config, TwinConfig
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
                    "climatology, spike, rate of change, flat line), thresholds from the config's 'qc' "
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A group without its subcommand: show that group's help.
        target = {"config": "config", "data": "data"}.get(getattr(args, "command", None) or "")
        if target:
            parser.parse_args([target, "--help"])
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (InputError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

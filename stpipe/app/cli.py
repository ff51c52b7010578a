"""The ``stpipe`` command line: each verb loads the config and calls one library function.

Verbs: ``demo``, ``generate``, ``ingest``, ``store rollback``, ``train``, ``evaluate``,
``forecast``, ``verify``, ``compare``, ``nightly``, ``serve`` (``stpipe --help``; the README
explains each).

``main(argv) -> int`` is the entry point (and what tests call). Errors a user can cause
(:class:`stpipe.core.errors.StpipeError`) print one clear line and return a non-zero code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tomllib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stpipe.core.errors import ConfigError, StpipeError

log = logging.getLogger("stpipe")

Command = Callable[[argparse.Namespace], int]


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def _config(args: argparse.Namespace, *, check_paths: bool = False):
    from stpipe.app.config import load_config

    overrides = dict(_parse_override(s) for s in args.set or [])
    return load_config(args.config, check_paths=check_paths, overrides=overrides)


def _cmd_generate(args: argparse.Namespace) -> int:
    from stpipe.io.sources.synthetic import generate_traffic_files, generate_weather_files

    write = generate_weather_files if args.kind == "weather" else generate_traffic_files
    files = write(Path(args.outdir), days=args.days, start=args.start, seed=args.seed)
    log.info("wrote %d daily %s files to %s", len(files), args.kind, args.outdir)
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from stpipe.io.ingestion import ingest

    config = _config(args, check_paths=True)
    report = ingest(config.ingest_job)
    print(report.summary())
    return 0 if not report.refused else 1


def _utc_time(text: str) -> datetime:
    """An ISO time as naive UTC (a time with an offset is converted)."""
    time = datetime.fromisoformat(text)
    return time if time.tzinfo is None else time.astimezone(UTC).replace(tzinfo=None)


def _cmd_store_rollback(args: argparse.Namespace) -> int:
    import numpy as np

    from stpipe.io.manifest import read_manifest
    from stpipe.io.rollback import rollback

    config = _config(args)
    entry = rollback(config.workdir, files=args.files, to=args.to)
    if entry is None:
        print(f"{config.store_path}: no file appended steps after {args.to}; nothing to roll back")
        return 0
    names = ", ".join(f.name for f in entry.files)
    end = np.datetime_as_string(read_manifest(config.store_path).end, "s")
    print(
        f"{config.store_path}: rolled back {len(entry.files)} file(s) ({names}): "
        f"{entry.length_before} → {entry.length_after} steps, now ending at {end}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import run_training

    outcome = run_training(_config(args), resume=not args.restart, progress=not args.quiet)
    if outcome is not None:  # None on the ranks other than 0 under torchrun
        print(outcome.summary())
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import run_evaluation
    from stpipe.learn.lead_table import lead_table

    evaluation = run_evaluation(_config(args), json_path=args.json)
    _print(lead_table(evaluation, role="champion").to_rich())
    if args.json is not None:
        log.info("wrote %s", args.json)
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import run_forecast

    print(run_forecast(_config(args), init_time=args.init_time).summary())
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import verify_forecasts

    results = verify_forecasts(_config(args))
    for result in results:
        print(f"scored the forecast of {result.init_time} by v{result.model_version}")
    print(f"verified {len(results)} forecast(s) whose truth has arrived since")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import compare_versions

    table = compare_versions(_config(args))
    _print(table.to_rich())
    if args.csv is not None:
        log.info("wrote %s", table.to_csv(args.csv))
    if args.json is not None:
        log.info("wrote %s", table.to_json(args.json))
    return 0


def _cmd_nightly(args: argparse.Namespace) -> int:
    from stpipe.app.flows.nightly import nightly_flow

    config = _config(args)
    report = nightly_flow(
        str(config.path),
        overrides=dict(_parse_override(s) for s in args.set or []),
        wait_for_lock=args.wait,
    )
    print(report.markdown())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from stpipe.app.serve import DEFAULT_PREFECT_FILE, serve_deployments

    prefect_file = args.prefect_file or DEFAULT_PREFECT_FILE
    serve_deployments(args.configs, prefect_file=prefect_file, limit=args.limit)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from stpipe.app.demo import run_demo

    overrides = dict(_parse_override(s) for s in args.set or [])
    run_demo(
        args.workdir,
        traffic=args.traffic,
        nights=args.nights,
        overrides=overrides,
        console=_console(),
    )
    return 0


def _console() -> Any:
    """Rich console for the tables; a pipe or log file has no width, so it gets them uncut.

    (Rich would otherwise fit them to 80 columns and elide run ids and values.)
    """
    from rich.console import Console

    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=240)


def _print(renderable: Any) -> None:
    _console().print(renderable)


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="pipeline config (TOML)")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config key (TOML value), e.g. --set train.epochs=2; repeatable",
    )


def _add_store_parser(sub: Any) -> None:
    p = sub.add_parser("store", help="maintain the store: `stpipe store rollback`")
    store_verbs = p.add_subparsers(dest="store_verb", metavar="STORE_VERB", required=True)
    p = store_verbs.add_parser(
        "rollback", help="remove the newest committed files, atomically (the manifest records it)"
    )
    _add_config_arg(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--files", type=int, metavar="N", help="the N newest files")
    which.add_argument(
        "--to",
        type=_utc_time,
        metavar="TIME",
        help="every file that appended steps after TIME (ISO, UTC)",
    )
    p.set_defaults(func=_cmd_store_rollback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stpipe",
        description="Spatiotemporal forecasting pipeline for gridded data.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = sub.add_parser(
        "demo", help="the whole job on a synthetic feed: several nights, champion, forecasts"
    )
    p.add_argument("--workdir", type=Path, default=None, help="default runs/demo-weather")
    p.add_argument("--traffic", action="store_true", help="the TaxiBJ-like traffic feed")
    p.add_argument("--nights", type=int, default=None, help="nights after the first (default 3)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="config override")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("generate", help="write synthetic daily files that look like a real feed")
    p.add_argument("kind", choices=["weather", "traffic"])
    p.add_argument("outdir", help="directory for the daily files")
    p.add_argument("--days", type=int, default=30, help="number of days (default 30)")
    p.add_argument("--start", default="2024-01-01", help="first day, YYYY-MM-DD")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("ingest", help="new source files → Zarr store (idempotent, crash-safe)")
    _add_config_arg(p)
    p.set_defaults(func=_cmd_ingest)

    _add_store_parser(sub)

    p = sub.add_parser("train", help="train, log to MLflow, register, promote if better")
    _add_config_arg(p)
    p.add_argument(
        "--restart", action="store_true", help="ignore a checkpoint of the same run; start over"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="the champion and the baselines on the test split")
    _add_config_arg(p)
    p.add_argument("--json", type=Path, default=None, help="write the scores as JSON here")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("forecast", help="the champion's full-grid forecast → forecast store")
    _add_config_arg(p)
    p.add_argument(
        "--init-time", default=None, help="the last input step (ISO time); default the newest"
    )
    p.set_defaults(func=_cmd_forecast)

    p = sub.add_parser("verify", help="score stored forecasts whose truth has been ingested")
    _add_config_arg(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("compare", help="table of registered versions, metrics and aliases")
    _add_config_arg(p)
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("nightly", help="the Prefect nightly flow: ingest → train → forecast")
    _add_config_arg(p)
    p.add_argument(
        "--wait", action="store_true", help="queue behind a running flow of this pipeline"
    )
    p.set_defaults(func=_cmd_nightly)

    p = sub.add_parser("serve", help="serve deployments/prefect.yaml's schedules from here")
    p.add_argument("configs", nargs="*", help="only the deployments of these configs")
    p.add_argument(
        "--prefect-file", type=Path, default=None, help="default deployments/prefect.yaml"
    )
    p.add_argument("--limit", type=int, default=None, help="most runs executing at once")
    p.set_defaults(func=_cmd_serve)

    return parser


def setup_logging(verbosity: int = 0, quiet: bool = False) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = RichHandler(show_path=False, show_time=False, markup=False, rich_tracebacks=False)
    root = logging.getLogger("stpipe")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except StpipeError as exc:
        print(f"stpipe {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"stpipe {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

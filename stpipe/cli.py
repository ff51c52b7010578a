"""The ``stpipe`` command line: each verb loads the config and calls one library function.

``main(argv) -> int`` is the entry point (and what tests call). Errors a user can cause
(:class:`stpipe.errors.StpipeError`) print one clear line and return a non-zero code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stpipe.errors import ConfigError, StpipeError

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
    from stpipe.config import load_config

    overrides = dict(_parse_override(s) for s in args.set or [])
    return load_config(args.config, check_paths=check_paths, overrides=overrides)


def _cmd_generate(args: argparse.Namespace) -> int:
    from stpipe.sources.synthetic import generate_traffic_files, generate_weather_files

    write = generate_weather_files if args.kind == "weather" else generate_traffic_files
    files = write(Path(args.outdir), days=args.days, start=args.start, seed=args.seed)
    log.info("wrote %d daily %s files to %s", len(files), args.kind, args.outdir)
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from stpipe.store import ingest

    config = _config(args, check_paths=True)
    report = ingest(config)
    print(report.summary())
    return 0 if not report.refused else 1


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="pipeline config (TOML)")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config key (TOML value), e.g. --set train.epochs=2; repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stpipe",
        description="Spatiotemporal forecasting pipeline for gridded data.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

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

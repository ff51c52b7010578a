"""The ``stpipe`` command line: each verb loads the config and calls one library function.

Verbs: ``demo``, ``generate``, ``ingest``, ``store rollback``, ``train``, ``evaluate``,
``forecast``, ``verify``, ``compare``, ``nightly``, ``serve`` (``stpipe --help``; the README
explains each).

``main(argv) -> int`` is the entry point (and what tests call). Errors a user can cause
(:class:`stpipe.core.errors.StpipeError`) print one clear line and return a non-zero code.
Results (tables, summaries, where files went) go to stdout, logs and progress bars to
stderr (:mod:`stpipe.app.console`); ``-q``/``-v`` go before or after the verb.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from rich.table import Table

import stpipe
from stpipe.app.console import BRIEF, NORMAL, QUIET, setup_logging, table_console
from stpipe.core.errors import ConfigError, StpipeError

if TYPE_CHECKING:
    import xarray as xr

    from stpipe.app.config import Config
    from stpipe.forecast.verify import Verification

_SCORE_KEY = re.compile(r"(?P<metric>[a-z]+)_(?P<variable>.+)_lead(?P<lead>\d+)")

Command = Callable[[argparse.Namespace], int]


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` (the value in TOML, else the text itself) as (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"--set {text!r}: expected section.key=value (or section.table.key=value)"
        )
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return dict(parse_override(s) for s in args.set or [])


def _config(args: argparse.Namespace, *, check_paths: bool = False) -> Config:
    from stpipe.app.config import load_config

    return load_config(args.config, check_paths=check_paths, overrides=_overrides(args))


def _cmd_generate(args: argparse.Namespace) -> int:
    from stpipe.io.sources.synthetic import generate_traffic_files, generate_weather_files

    # the generator logs the one line this verb reports: written, kept, the dates
    write = generate_weather_files if args.kind == "weather" else generate_traffic_files
    write(Path(args.outdir), days=args.days, start=args.start, seed=args.seed)
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from stpipe.io.ingestion import ingest

    config = _config(args, check_paths=True)
    report = ingest(config.ingest_job, progress=args.detail > QUIET)
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

    config = _config(args)
    outcome = run_training(config, resume=not args.restart, progress=args.detail > QUIET)
    if outcome is not None:  # None on the ranks other than 0 under torchrun
        print(outcome.summary())
        print(f"plots: {_run_plots(config, outcome.run_id)}")
    return 0


def _run_plots(config: Config, run_id: str) -> str:
    """Where the run's plots are: a folder for a local artifact store, else their URI."""
    from stpipe.app.jobs import tracking_for
    from stpipe.tracking.client import tracking_errors

    tracking = tracking_for(config)
    with tracking_errors(tracking.uri, f"list the plots of run {run_id}"):
        root = tracking.client.get_run(run_id).info.artifact_uri
        names = [Path(a.path).name for a in tracking.client.list_artifacts(run_id, "plots")]
    url = urlparse(root)
    where = f"{unquote(url.path)}/plots" if url.scheme == "file" else f"{root}/plots"
    return f"{where} ({', '.join(names)}), in MLflow run {run_id}"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import run_evaluation
    from stpipe.learn.lead_table import lead_table
    from stpipe.learn.plots import plot_rmse_vs_lead
    from stpipe.learn.scores import headline

    config = _config(args)
    evaluation = run_evaluation(config, json_path=args.json)
    table_console().print(lead_table(evaluation, role="champion").to_rich())
    metric = headline(evaluation)
    version = evaluation.attrs["model_version"]
    plot = plot_rmse_vs_lead(
        evaluation,
        (args.plots or config.workdir / "plots") / f"evaluate-v{version}-{metric}_vs_lead.png",
        metric=metric,
        title=f"champion v{version} vs baselines, {evaluation.attrs['split']} split",
        role="champion",
    )
    print(f"plot: {plot}")
    if args.json is not None:
        print(f"scores: {args.json}")
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import run_forecast

    print(run_forecast(_config(args), init_time=args.init_time).summary())
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import verify_forecasts
    from stpipe.io.store import open_store

    config = _config(args)
    results = verify_forecasts(config)
    truth = open_store(config.store_path)
    if results:
        table_console().print(verification_table(results, truth))
    waiting = _waiting_for_truth(config, truth)
    print(
        f"verified {len(results)} forecast(s) whose truth has arrived since the last check; "
        f"{waiting} forecast(s) still wait for truth"
    )
    return 0


def verification_table(results: Sequence[Verification], truth: xr.Dataset) -> Table:
    """One row per forecast, score and variable (physical units), one column per lead."""
    step_h = int(truth.attrs["time_step_s"]) / 3600
    rows: dict[tuple[str, str, str, str], dict[int, float]] = {}
    for result in results:
        init = str(result.init_time)[:16]
        for key, value in result.scores.items():
            metric, variable, lead = _SCORE_KEY.fullmatch(key).groups()
            rows.setdefault((init, result.model_version, metric, variable), {})[int(lead)] = value
    leads = sorted({lead for cells in rows.values() for lead in cells})
    table = Table(
        title="Forecasts verified against the ingested truth, per lead",
        caption="RMSE is latitude-weighted on lat/lon grids; each model's MLflow run holds "
        "these scores as verify_<score>_<variable>_lead<steps>, step = init time.",
        title_justify="left",
        caption_justify="left",
    )
    for column in ("init time", "model", "score", *(f"+{lead * step_h:g} h" for lead in leads)):
        table.add_column(column, justify="right" if column.startswith("+") else "left")
    for (init, version, metric, variable), cells in rows.items():
        units = truth[variable].attrs.get("units", "") if variable in truth else ""
        table.add_row(
            init,
            f"v{version}",
            f"{metric.upper()} {variable}" + (f" ({units})" if units else ""),
            *(f"{cells[lead]:.4g}" if lead in cells else "-" for lead in leads),
        )
    return table


def _waiting_for_truth(config: Config, truth: xr.Dataset) -> int:
    """Stored forecasts with a valid time the store does not hold yet."""
    from stpipe.forecast.store import INIT, open_forecasts
    from stpipe.forecast.verify import verifiable_inits

    try:
        forecasts = open_forecasts(
            config.forecast_store, storage_options=config.forecast.storage_options
        )
    except StpipeError:  # no forecast store yet: nothing waits
        return 0
    return forecasts.sizes[INIT] - len(verifiable_inits(forecasts, truth["time"].values))


def _cmd_compare(args: argparse.Namespace) -> int:
    from stpipe.app.jobs import compare_versions

    table = compare_versions(_config(args), rescore=args.rescore)
    table_console().print(table.to_rich())
    if args.csv is not None:
        print(f"wrote {table.to_csv(args.csv)}")
    if args.json is not None:
        print(f"wrote {table.to_json(args.json)}")
    return 0


def _cmd_nightly(args: argparse.Namespace) -> int:
    from stpipe.app.flows.nightly import nightly_flow

    config = _config(args)
    report = nightly_flow(str(config.path), overrides=_overrides(args), wait_for_lock=args.wait)
    print(report.markdown())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from stpipe.app.serve import DEFAULT_PREFECT_FILE, serve_deployments

    prefect_file = args.prefect_file or DEFAULT_PREFECT_FILE
    serve_deployments(args.configs, prefect_file=prefect_file, limit=args.limit)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from stpipe.app.demo import run_demo

    run_demo(
        args.workdir,
        traffic=args.traffic,
        nights=args.nights,
        overrides=_overrides(args),
        console=table_console(),
    )
    return 0


def _add_set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config key (TOML value), e.g. --set train.epochs=2 or "
        "--set source.synthetic.days=5; repeatable",
    )


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="pipeline config (TOML)")
    _add_set_arg(p)


def _verbosity(dest_suffix: str = "") -> argparse.ArgumentParser:
    """``-v``/``-q``, for the main parser and again after each verb (its own dests)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-v",
        "--verbose",
        dest=f"verbose{dest_suffix}",
        action="count",
        default=0,
        help="more detail in the logs (repeat for more)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        dest=f"quiet{dest_suffix}",
        action="store_true",
        help="warnings and errors only, no progress bars",
    )
    return p


def _verb(
    sub: Any, name: str, help: str, func: Command, *, config: bool = True
) -> argparse.ArgumentParser:
    """The parser of one verb: ``-v``/``-q`` after it too, and the config file argument."""
    p = sub.add_parser(name, help=help, parents=[_verbosity("_after")])
    if config:
        _add_config_arg(p)
    p.set_defaults(func=func)
    return p


def _add_store_parser(sub: Any) -> None:
    p = sub.add_parser("store", help="maintain the store: `stpipe store rollback`")
    store_verbs = p.add_subparsers(dest="store_verb", metavar="STORE_VERB", required=True)
    p = store_verbs.add_parser(
        "rollback",
        help="remove the newest committed files, atomically (the manifest records it)",
        parents=[_verbosity("_after")],
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
        parents=[_verbosity()],
    )
    parser.add_argument("--version", action="version", version=f"stpipe {stpipe.__version__}")
    parser.set_defaults(detail=NORMAL)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = _verb(
        sub,
        "demo",
        "the whole job on a synthetic feed: several nights, champion, forecasts",
        _cmd_demo,
        config=False,
    )
    p.add_argument("--workdir", type=Path, default=None, help="default runs/demo-weather")
    p.add_argument("--traffic", action="store_true", help="the TaxiBJ-like traffic feed")
    p.add_argument("--nights", type=int, default=None, help="nights after the first (default 3)")
    _add_set_arg(p)
    p.set_defaults(detail=BRIEF)

    p = _verb(
        sub,
        "generate",
        "write synthetic daily files that look like a real feed",
        _cmd_generate,
        config=False,
    )
    p.add_argument("kind", choices=["weather", "traffic"])
    p.add_argument("outdir", help="directory for the daily files")
    p.add_argument("--days", type=int, default=30, help="number of days (default 30)")
    p.add_argument("--start", default="2024-01-01", help="first day, YYYY-MM-DD")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")

    _verb(sub, "ingest", "new source files → Zarr store (idempotent, crash-safe)", _cmd_ingest)
    _add_store_parser(sub)
    p = _verb(sub, "train", "train, log to MLflow, register, promote if better", _cmd_train)
    p.add_argument(
        "--restart", action="store_true", help="ignore a checkpoint of the same run; start over"
    )
    p = _verb(sub, "evaluate", "the champion and the baselines on the test split", _cmd_evaluate)
    p.add_argument("--json", type=Path, default=None, help="write the scores as JSON here")
    p.add_argument(
        "--plots", type=Path, default=None, help="folder for the plot (default WORKDIR/plots)"
    )
    p = _verb(sub, "forecast", "the champion's full-grid forecast → forecast store", _cmd_forecast)
    p.add_argument(
        "--init-time", default=None, help="the last input step (ISO time); default the newest"
    )
    _verb(sub, "verify", "score stored forecasts whose truth has been ingested", _cmd_verify)
    p = _verb(sub, "compare", "table of registered versions, metrics and aliases", _cmd_compare)
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score every version on today's test window, beside the baselines there",
    )
    p = _verb(sub, "nightly", "the Prefect nightly flow: ingest → train → forecast", _cmd_nightly)
    stop = (
        "stop at once if a flow of this pipeline runs (default: queue, [pipeline] lock_timeout_s)"
    )
    p.add_argument("--no-wait", dest="wait", action="store_false", help=stop)
    p = _verb(
        sub,
        "serve",
        "serve deployments/prefect.yaml's schedules from here",
        _cmd_serve,
        config=False,
    )
    p.add_argument("configs", nargs="*", help="only the deployments of these configs")
    p.add_argument(
        "--prefect-file", type=Path, default=None, help="default deployments/prefect.yaml"
    )
    p.add_argument("--limit", type=int, default=None, help="most runs executing at once")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``detail`` is the level of detail of the logs
    (:mod:`stpipe.app.console`): the verb's default, plus one per ``-v``, or QUIET."""
    args = build_parser().parse_args(argv)
    if args.quiet or args.quiet_after:
        args.detail = QUIET
    else:
        args.detail += args.verbose + args.verbose_after
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.detail)
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

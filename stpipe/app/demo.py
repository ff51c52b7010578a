"""``stpipe demo``: the whole pipeline on a synthetic feed, replayed night after night.

1. A config is written into the workdir (``demo.toml``): ``data/configs/weather.toml`` (or
   ``traffic.toml``) with demo-sized settings, reading daily files from ``workdir/feed``.
2. The feed is generated as daily files into ``workdir/archive`` (ERA5-like NetCDF, or
   TaxiBJ-like HDF5): what will arrive, one day per night.
3. The nights are replayed through the Prefect ``nightly_flow`` (ingest → statistics →
   train → evaluate → promote → forecast; Prefect's ephemeral API, no server needed): the
   first night backfills ``history_days``, each later night one new day arrives in the feed.
   The base config's own keys drive it, as they drive the deployed nightly run: ``[split]
   val_days``/``test_days`` roll the split forward with the data (the newest ``test_days``
   are the test split, the ``val_days`` before them the validation window on which
   promotion compares the candidate with the champion), and ``[train] init_from =
   "champion"`` trains the first night in full and fine-tunes the champion each later night.
4. A summary (rich, on the given console) shows each night, the champion per lead beside
   every baseline with its margin over the best (:func:`stpipe.learn.lead_table.lead_table`),
   where the forecast store and plots are, and the commands that open the MLflow and
   Prefect UIs on them (the tools of this interpreter's environment, by absolute path).

Progress (the start and one line per night) is logged by ``stpipe.app.demo``. Prefect keeps
the demo's flow runs in ``<workdir>/.prefect`` (its ``PREFECT_HOME`` for the run), with
its telemetry off. Training uses the GPU when there is one (``[train] device = "auto"``).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stpipe.app.config import apply_overrides
from stpipe.app.resources import EXAMPLE_CONFIGS
from stpipe.core.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from stpipe.app.config import Config
    from stpipe.app.flows.nightly import NightReport

log = logging.getLogger(__name__)

CONFIG_DIR = EXAMPLE_CONFIGS
CONFIG_NAME = "demo.toml"
PREFECT_HOME = ".prefect"  # in the workdir
PREFECT_UI_PORT = 4200


@dataclass(frozen=True)
class DemoPlan:
    """What the demo replays: the base config, the feed, the nights and demo-sized settings
    (the split windows and fine-tuning are the base config's)."""

    base_config: str
    feed: str  # "weather" | "traffic"
    source: dict[str, Any]
    history_days: int
    nights: int
    grid: tuple[int, int]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


# demo-sized settings shared by both feeds: small patches and model, a few short epochs
DEMO_SIZED: dict[str, Any] = {
    "patches": {"size": [16, 16]},
    "model": {"hidden": 24},
    "train": {
        "epochs": 4,
        "finetune_epochs": 2,
        "batch_size": 32,
        "max_batches_per_epoch": 12,
        "patience": 2,
    },
}
WEATHER = DemoPlan(
    base_config="weather.toml",
    feed="weather",
    source={"kind": "netcdf", "paths": "feed/*.nc"},
    history_days=8,
    nights=3,
    grid=(32, 32),
    settings={
        "pipeline": {"name": "demo-weather"},
        **DEMO_SIZED,
        "mlflow": {"experiment": "demo-weather", "model_name": "demo-weather-t2m"},
    },
)
TRAFFIC = DemoPlan(
    base_config="traffic.toml",
    feed="traffic",
    source={"kind": "taxibj", "paths": "feed/*.h5"},
    history_days=14,
    nights=3,
    grid=(32, 32),
    settings={
        "pipeline": {"name": "demo-traffic"},
        **DEMO_SIZED,
        "mlflow": {"experiment": "demo-traffic", "model_name": "demo-traffic-flow"},
    },
)


@dataclass(frozen=True)
class DemoSummary:
    """The replayed nights, the last night's champion, and where everything was written."""

    workdir: Path
    config: Path
    nights: tuple[NightReport, ...]
    plots: tuple[Path, ...]
    mlflow_ui: str  # a command, or the tracking server's URL
    prefect_ui: str  # a command, or the Prefect server's URL
    seconds: float

    @property
    def last(self) -> NightReport:
        return self.nights[-1]

    @property
    def champion_version(self) -> str:
        return self.last.champion_version


def default_workdir(*, traffic: bool = False) -> Path:
    return Path("runs") / ("demo-traffic" if traffic else "demo-weather")


def run_demo(
    workdir: str | Path | None = None,
    *,
    traffic: bool = False,
    nights: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    console: Console | None = None,
) -> DemoSummary:
    """Run the demo in ``workdir`` (default ``runs/demo-weather``), print and return its summary.

    ``nights``: nights after the first (default 3); ``overrides``: config keys
    (``{"train.epochs": 1}``) for a smaller run. A workdir that holds anything but a
    previous demo is refused (ConfigError); a previous demo there is replaced.
    """
    from rich.console import Console

    from stpipe.app.flows.nightly import nightly_flow
    from stpipe.io.sources.synthetic import generate_traffic_files, generate_weather_files

    console = console or Console()
    plan = TRAFFIC if traffic else WEATHER
    nights = plan.nights if nights is None else nights
    workdir = _fresh_workdir(Path(workdir or default_workdir(traffic=traffic)))
    started = time.perf_counter()
    base = tomllib.loads((CONFIG_DIR / plan.base_config).read_text())
    synthetic = base["source"]["synthetic"]
    start = date.fromisoformat(str(synthetic["start"]))
    generate = generate_traffic_files if traffic else generate_weather_files
    log.info(
        "stpipe demo: %s feed, %d days of history then %d night(s) of one new day, in %s",
        plan.feed,
        plan.history_days,
        nights,
        workdir,
    )
    archive = sorted(
        generate(
            workdir / "archive",
            days=plan.history_days + nights,
            start=start,
            seed=synthetic.get("seed", 0),
            grid=plan.grid,
        )
    )
    feed = workdir / "feed"
    feed.mkdir()
    config_path = _write_config(workdir, base, plan, overrides or {})
    reports = []
    with _prefect_settings(workdir / PREFECT_HOME):
        for night in range(nights + 1):
            for f in archive[: plan.history_days + night]:
                if not (feed / f.name).exists():
                    shutil.copy(f, feed / f.name)
            report = nightly_flow(str(config_path))
            reports.append(report)
            log.info("%s", _night_line(night, nights, report))
        prefect_ui = _prefect_ui(workdir / PREFECT_HOME)
    config = _load(config_path)
    plots = _write_plots(reports[-1], workdir / "plots", config=config)
    summary = DemoSummary(
        workdir=workdir,
        config=config_path,
        nights=tuple(reports),
        plots=plots,
        mlflow_ui=_mlflow_ui(config),
        prefect_ui=prefect_ui,
        seconds=time.perf_counter() - started,
    )
    print_summary(summary, console=console)
    return summary


def print_summary(summary: DemoSummary, *, console: Console) -> None:
    """The nights, the champion against the baselines per lead, and where to look next."""
    from rich.table import Table

    from stpipe.learn.lead_table import lead_table

    last = summary.last
    nights = Table(title="Nights replayed", title_justify="left")
    for column in ("night", "data through", "ingested", "version", "decision", "promotion score"):
        nights.add_column(column)
    for i, night in enumerate(summary.nights):
        p = night.training.promotion
        champion = (
            "" if p.champion_score is None else f" vs v{p.champion_version} {p.champion_score:.4g}"
        )
        nights.add_row(
            str(i + 1),
            str(night.ingest.time_range[1])[:16] if night.ingest.time_range else "-",
            f"{len(night.ingest.ingested)} file(s)",
            f"v{night.training.version}",
            p.alias,
            f"{p.metric} on {p.window} {p.candidate_score:.4g}{champion}",
        )
    leads = lead_table(last.champion, role="champion", model_version=last.champion_version)
    console.print(nights, leads.to_rich())
    console.print(
        f"forecast store: {last.forecast.store} (newest init {str(last.forecast.init_time)[:16]})\n"
        f"plots:          {', '.join(str(p) for p in summary.plots)}\n"
        f"config:         {summary.config}\n"
        f"MLflow UI:      {summary.mlflow_ui}\n"
        f"Prefect UI:     {summary.prefect_ui}\n"
        f"wall time:      {summary.seconds:.0f} s",
        soft_wrap=True,  # paths and commands stay whole, ready to copy
    )


def _fresh_workdir(workdir: Path) -> Path:
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / CONFIG_NAME).is_file():
            raise ConfigError(
                f"{workdir}: directory is not empty and holds no previous demo ({CONFIG_NAME}); "
                "choose another --workdir"
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir.resolve()


def _write_config(
    workdir: Path,
    base: dict[str, Any],
    plan: DemoPlan,
    overrides: Mapping[str, Any],
) -> Path:
    import tomli_w

    raw = {section: dict(values) for section, values in base.items()}
    raw["pipeline"]["workdir"] = "."
    raw["source"] = {"variables": base["source"]["variables"], **plan.source}
    for section, values in plan.settings.items():
        raw.setdefault(section, {}).update(values)
    raw = apply_overrides(raw, overrides, origin="stpipe demo --set")
    path = workdir / CONFIG_NAME
    header = (
        f"# stpipe demo: {CONFIG_DIR / plan.base_config} with demo-sized settings, reading the\n"
        "# daily files that arrive in feed/. The split rolls forward with the data.\n"
    )
    path.write_text(header + tomli_w.dumps(raw))
    _load(path)  # fail here, naming the key, if the demo settings do not fit the schema
    return path


def _load(path: Path):
    from stpipe.app.config import load_config

    return load_config(path)


def _night_line(night: int, nights: int, report: NightReport) -> str:
    p = report.training.promotion
    end = str(report.ingest.time_range[1])[:16] if report.ingest.time_range else "-"
    return (
        f"night {night + 1}/{nights + 1}: data through {end}, "
        f"{len(report.ingest.ingested)} file(s) ingested, v{report.training.version} → "
        f"{p.alias} ({p.reason}), forecast from {str(report.forecast.init_time)[:16]}"
    )


def _write_plots(report: NightReport, directory: Path, *, config: Config) -> tuple[Path, ...]:
    """The champion's headline metric per lead beside the baselines, drawn from tonight's
    test split; and the sample maps logged when the champion was trained (its run's)."""
    from stpipe.app.jobs import tracking_for
    from stpipe.learn.plots import plot_rmse_vs_lead
    from stpipe.tracking.client import tracking_errors

    per_lead = plot_rmse_vs_lead(
        report.champion,
        directory / "rmse_vs_lead.png",
        metric=report.per_lead_metric,
        title=f"champion v{report.champion_version} vs baselines, test split",
        role="champion",
        model_version=report.champion_version,
    )
    tracking = tracking_for(config)
    run_id = report.forecast.run_id
    with (
        tempfile.TemporaryDirectory() as tmp,
        tracking_errors(tracking.uri, f"download the sample maps of run {run_id}"),
    ):
        logged = tracking.client.download_artifacts(run_id, "plots/sample_maps.png", tmp)
        maps = Path(shutil.copy(logged, directory / "sample_maps.png"))
    return per_lead, maps


def _tool(name: str) -> list[str]:
    """The command that runs ``name`` of this interpreter's environment as printed (its
    script beside ``sys.executable``; else ``python -m name``), whatever the PATH holds."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", name]


def _mlflow_ui(config: Config) -> str:
    from stpipe.tracking.client import tracking_uri

    uri = tracking_uri(config.mlflow, config.workdir)
    if uri.startswith(("http://", "https://")):
        return uri
    return shlex.join([*_tool("mlflow"), "ui", "--backend-store-uri", uri])


def _prefect_ui(home: Path) -> str:
    """The Prefect server the runs went to, or how to start one on the demo's home."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    if api:
        return api.removesuffix("/api")
    start = shlex.join([*_tool("prefect"), "server", "start", "--port", str(PREFECT_UI_PORT)])
    return (
        f"PREFECT_HOME={shlex.quote(str(home))} {start}, then open "
        f"http://127.0.0.1:{PREFECT_UI_PORT} (flow 'nightly')"
    )


@contextlib.contextmanager
def _prefect_settings(home: Path) -> Iterator[None]:
    """Prefect keeps the demo's runs under ``home``, sends no telemetry, and waits long
    enough for its ephemeral API: on two busy cores it can take longer than the 20 s
    default to start."""
    from prefect.settings import temporary_settings

    with temporary_settings(
        {
            "home": home,
            "server.analytics_enabled": False,
            "server.ephemeral.startup_timeout_seconds": 180,
        }
    ):
        yield

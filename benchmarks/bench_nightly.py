"""The product path at archive scale, stage by stage: what a night costs, and where.

    python benchmarks/bench_nightly.py [--quick] [--days N] [--grid ROWS COLS] [--workdir DIR]

An ERA5-like archive (synthetic hourly t2m, u10, v10 on a ``--grid`` lat/lon grid, daily
NetCDF files) is generated, then run through the same jobs as ``stpipe ingest | train |
evaluate | forecast`` and the Prefect ``nightly_flow``, with MLflow on SQLite in the workdir:

1. ``backfill``: ``stpipe ingest`` of ``--days`` files into an empty store (MB/s of input);
2. ``statistics``: the train-split normalisation statistics (Dask, cached afterwards);
3. ``train``: ``stpipe train`` in full (train → evaluate on test → log → register → promote); its
   samples/s and data wait are the per-epoch figures it logged to MLflow (median of the
   epochs after the first, over every member; nan if the run logged none), set beside
   ``bench_train``'s measurement of the same shape (``Trainer.setup`` + timed steps of the
   same config, no MLflow);
4. ``evaluate``: the champion and every baseline on the test split;
5. ``forecast``: the champion's full-grid forecast of the newest init time → forecast store;
6. ``nightly``: one more daily file arrives; the Prefect ``nightly_flow`` (ingest →
   statistics → fine-tune of the champion (``[train] init_from = "champion"``) → evaluate →
   promote → forecast) end to end.

The split rolls (``[split] val_days/test_days``), so the nightly run trains one day further
and is promoted or not on the same windows as the champion. Prints a table of wall time and
of this process's peak RSS per stage (Linux: the peak is reset as each stage starts, so it
is the stage's own; worker processes not included), then the last line ``device=…
ingest_backfill_mb_per_s=… train_samples_per_s=… bench_train_samples_per_s=…
data_wait_frac=… forecast_s_per_init=… nightly_s=… peak_gpu_mem_gb=… peak_rss_gb=…``.
``--quick``: 10 days on 64×128 (a CPU smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path

DATA = Path(__file__).resolve().parent / "_data"
# what a run writes in its workdir, cleared before the next (the archive is kept)
OUTPUTS = (
    "store.zarr",
    "feed",
    "mlflow.db",
    "mlartifacts",
    "forecasts.zarr",
    "stats",
    "checkpoints",
)


@dataclass
class Stages:
    """Wall seconds per stage, this process's peak RSS during it (GB; Linux, else NaN) and
    what was measured inside them."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_gb: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def timed(self, name: str, run, note=lambda result: ""):
        reset_peak_rss()
        started = time.perf_counter()
        result = run()
        self.seconds[name] = time.perf_counter() - started
        self.peak_rss_gb[name] = peak_rss_gb()
        self.notes[name] = note(result)
        print(
            f"{name}: {self.seconds[name]:.1f} s, peak RSS {self.peak_rss_gb[name]:.2f} GB "
            f"{self.notes[name]}",
            flush=True,
        )
        return result


def reset_peak_rss() -> None:
    """Start this process's peak RSS (VmHWM) afresh at its current RSS (Linux ≥ 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gb() -> float:
    """This process's peak RSS since :func:`reset_peak_rss` (NaN off Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def write_config(workdir: Path, *, grid: tuple[int, int], quick: bool) -> Path:
    import tomli_w

    rows, cols = grid
    raw = {
        "pipeline": {"name": "bench-nightly", "workdir": "."},
        "source": {"kind": "netcdf", "paths": "feed/*.nc", "variables": ["t2m", "u10", "v10"]},
        "patches": {
            "input_steps": 12,
            "leads": [1, 3, 6, 12],
            "size": [min(rows, 32), min(cols, 64)],
            "target_variables": ["t2m"],
        },
        "split": {"val_days": 2 if quick else 7, "test_days": 2 if quick else 7},
        "model": {"name": "scnn_lstm"},
        "train": {
            "epochs": 2 if quick else 4,
            # the first train has no champion and trains in full; the nightly run
            # fine-tunes the champion, as the shipped nightly deployment does
            "init_from": "champion",
            "finetune_epochs": 1 if quick else 2,
            "batch_size": 16 if quick else 64,
            "max_batches_per_epoch": 20 if quick else 400,
            "max_val_batches": 10 if quick else 100,
            "patience": 10,
        },
        "mlflow": {"experiment": "bench-nightly"},
    }
    path = workdir / "nightly.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


def build_archive(workdir: Path, *, days: int, grid: tuple[int, int]) -> list[Path]:
    """``days + 1`` daily files in ``workdir/archive`` (kept between runs of the same shape),
    written by one process per core: each day depends only on its date and the seed."""
    starts = [date(2024, 1, 1) + timedelta(days=k) for k in range(days + 1)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        files = list(pool.map(partial(write_day, workdir / "archive", grid), starts))
    print(f"archive: {len(files)} files in {time.perf_counter() - started:.1f} s", flush=True)
    return sorted(files)


def write_day(outdir: Path, grid: tuple[int, int], day: date) -> Path:
    """The synthetic weather file of ``day`` in ``outdir`` (kept if it exists)."""
    from stpipe.io.sources.synthetic import generate_weather_files

    (path,) = generate_weather_files(outdir, days=1, start=day, grid=grid)
    return path


def arrive(files: list[Path], feed: Path) -> int:
    """Copy ``files`` into the feed (as a nightly transfer would); bytes copied."""
    feed.mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, feed / f.name)
    return sum(f.stat().st_size for f in files)


def logged_throughput(config, run_id: str) -> tuple[float, float]:
    """(samples/s, data wait) that ``stpipe train`` logged: medians over the epochs from the
    second on of its one model, or of every member (``member<i>/samples_per_s``, …)."""
    from stpipe.app.jobs import tracking_for

    client = tracking_for(config).client
    logged = client.get_run(run_id).data.metrics

    def median(key: str) -> float:
        values = []
        for name in (k for k in logged if re.fullmatch(rf"(member\d+/)?{key}", k)):
            history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
            values += [m.value for m in history[1:]] or [m.value for m in history]
        return statistics.median(values) if values else float("nan")

    return median("samples_per_s"), median("data_wait_frac")


def bench_train_throughput(config, *, steps: int) -> float:
    """``bench_train``'s measurement of this config: Trainer.setup + timed steps, no MLflow."""
    from bench_train import timed_steps

    from stpipe.app.jobs import data_context
    from stpipe.learn.context import resolve_device
    from stpipe.learn.train import Trainer, determinism

    device = resolve_device(config.train.device)
    data = data_context(config)
    with determinism(device, seed=config.train.seed):
        trainer = Trainer.setup(
            data, model=config.model, train=config.train, device=device, steps_per_epoch=2 * steps
        )
        timed = timed_steps(trainer, warmup=steps // 4, steps=steps)
    return timed.samples / timed.seconds


def run(workdir: Path, *, days: int, grid: tuple[int, int], quick: bool) -> dict[str, float]:
    from stpipe.app import jobs
    from stpipe.app.config import load_config
    from stpipe.app.flows.nightly import nightly_flow
    from stpipe.io.ingestion import ingest
    from stpipe.learn.stats import compute_stats

    archive = build_archive(workdir, days=days, grid=grid)
    config_path = write_config(workdir, grid=grid, quick=quick)
    config = load_config(config_path)
    stages = Stages()
    size = arrive(archive[:days], workdir / "feed")
    stages.timed(
        "backfill",
        lambda: ingest(config.ingest_job, progress=False),
        lambda r: f"{len(r.ingested)} files, {size / 1e6:.0f} MB",
    )
    stages.timed(
        "statistics",
        lambda: compute_stats(
            config.store_path,
            variables=config.input_variables,
            split=config.split,
            dask=config.dask,
        ),
    )
    outcome = stages.timed(
        "train", lambda: jobs.run_training(config, progress=False), lambda o: o.summary()
    )
    samples_per_s, wait = logged_throughput(config, outcome.run_id)
    bench = bench_train_throughput(config, steps=20 if quick else 200)
    stages.timed("evaluate", lambda: jobs.run_evaluation(config))
    stages.timed("forecast", lambda: jobs.run_forecast(config), lambda o: o.summary())
    arrive(archive[days:], workdir / "feed")
    stages.timed(
        "nightly",
        lambda: nightly_flow(str(config_path)),
        lambda r: r.training.summary() if r.training else "",
    )
    return report(stages, size=size, samples_per_s=samples_per_s, wait=wait, bench=bench)


def report(stages: Stages, *, size: int, samples_per_s: float, wait: float, bench: float):
    import torch

    print(f"\n{'stage':<12} {'seconds':>8} {'peak RSS GB':>12}  notes")
    for name, seconds in stages.seconds.items():
        peak = stages.peak_rss_gb[name]
        print(f"{name:<12} {seconds:>8.1f} {peak:>12.2f}  {stages.notes[name]}")
    gpu = torch.cuda.is_available()
    print(
        f"\nstpipe train inside the job: {samples_per_s:.0f} samples/s, data wait "
        f"{wait:.3f}; bench_train on the same config: {bench:.0f} samples/s "
        f"({samples_per_s / bench:.0%})"
    )
    return {
        "ingest_backfill_mb_per_s": size / 1e6 / stages.seconds["backfill"],
        "train_samples_per_s": samples_per_s,
        "bench_train_samples_per_s": bench,
        "data_wait_frac": wait,
        "forecast_s_per_init": stages.seconds["forecast"],
        "nightly_s": stages.seconds["nightly"],
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0,
        # the stages reset the peak that getrusage reads too: the largest of theirs
        "peak_rss_gb": max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            *(peak for peak in stages.peak_rss_gb.values() if peak == peak),  # NaN off Linux
        ),
    }


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "_")
    return f"cpu-{os.cpu_count()}cores"


def clear_outputs(workdir: Path) -> None:
    """Remove what a run of this script writes in ``workdir`` but the archive (kept between
    runs of the same shape). Checkpoints too: a run key found there resumes, and the train
    stage would time finished members instead of their epochs."""
    for name in OUTPUTS:
        path = workdir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 days on 64×128 (CPU smoke)")
    parser.add_argument("--days", type=int, help="days in the backfill (default 365)")
    parser.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"))
    parser.add_argument("--workdir", type=Path, help="default benchmarks/_data/nightly-…")
    args = parser.parse_args()
    days = args.days or (10 if args.quick else 365)
    grid = tuple(args.grid or ((64, 128) if args.quick else (128, 256)))
    workdir = args.workdir or DATA / f"nightly-{grid[0]}x{grid[1]}-{days}d"
    clear_outputs(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(workdir / ".prefect"))
    # A fresh Prefect home migrates its database when the ephemeral server starts: on a
    # loaded machine that takes longer than Prefect's default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    figures = run(workdir, days=days, grid=grid, quick=args.quick)
    print(f"device={device_name()} " + " ".join(f"{k}={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()

"""The nightly fine-tune against a full retrain: wall time and skill over the best baseline.

    python benchmarks/bench_finetune.py [--quick] [--days N] [--grid ROWS COLS] [--workdir DIR]
        [--finetune EPOCHS LR]

An ERA5-like feed (``stpipe generate weather``'s synthetic hourly t2m, u10, v10 on a
``--grid`` lat/lon grid, daily NetCDF files) and a pipeline with rolling windows (``[split]
val_days = 2, test_days = 2``) and ``[train] init_from = "champion"``, run through the real
jobs (MLflow on SQLite in the workdir):

1. ``first night``: ``--days`` files ingested, a full training (there is no champion yet);
2. one more day arrives and is ingested: every window moves forward a day;
3. ``fine-tune``: ``stpipe train`` starts from the champion, ``finetune_epochs`` at
   ``finetune_lr``;
4. ``retrain``: ``stpipe train`` with ``init_from = "none"``, ``epochs`` at ``lr`` from the
   seeded initialisation, on the same data and windows.

For 3 and 4: the wall time of the job (train → evaluate → log → register → promote), the
training's own seconds (its run's ``train_seconds``) and, per lead, the margin over the best
baseline on the test window, 1 − RMSE / RMSE of the best baseline (> 0: better than every
baseline). Last line: ``finetune_s=… retrain_s=… finetune_train_s=… retrain_train_s=…
finetune_margin_<h>h=… retrain_margin_<h>h=…``. ``--quick``: 8 days on 16×16, tiny model
(a smoke run of a minute or two on a CPU).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

LEADS = [1, 3, 6, 12]


def write_config(
    workdir: Path, *, grid: tuple[int, int], quick: bool, finetune: tuple[int, float] | None
) -> Path:
    import tomli_w

    raw = {
        "pipeline": {"name": "bench-finetune", "workdir": "."},
        "source": {"kind": "netcdf", "paths": "feed/*.nc", "variables": ["t2m", "u10", "v10"]},
        "patches": {
            "input_steps": 12,
            "leads": LEADS,
            "size": [min(grid[0], 16), min(grid[1], 16)],
            "target_variables": ["t2m"],
        },
        "split": {"val_days": 2, "test_days": 2},
        "model": {"name": "scnn_lstm", "hidden": 8 if quick else 16},
        "train": {
            "epochs": 3 if quick else 10,
            "finetune_epochs": finetune[0] if finetune else 1 if quick else 2,
            "finetune_lr": finetune[1] if finetune else 5e-4,
            "batch_size": 16,
            "max_batches_per_epoch": 4 if quick else 15,
            "max_val_batches": 4 if quick else 20,
            "patience": 20,
            "device": "cpu",
            "init_from": "champion",
        },
        "mlflow": {"experiment": "bench-finetune", "model_name": "bench-finetune-t2m"},
    }
    path = workdir / "pipeline.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


def timed_training(config, label: str) -> tuple[float, float, tuple[float, ...]]:
    """The training job's wall seconds, its ``train_seconds`` and its test margins per lead."""
    from stpipe.app.jobs import run_training, tracking_for
    from stpipe.learn import scores

    started = time.perf_counter()
    outcome = run_training(config, progress=False)
    wall = time.perf_counter() - started
    run = tracking_for(config).client.get_run(outcome.run_id)
    margins = scores.margins(outcome.test, scores.headline(outcome.test))
    print(
        f"{label}: {wall:.1f} s (training {run.data.metrics['train_seconds']:.1f} s), "
        f"{outcome.summary()}; margins " + " ".join(f"{m:+.1%}" for m in margins),
        flush=True,
    )
    return wall, run.data.metrics["train_seconds"], margins


def run(
    workdir: Path,
    *,
    days: int,
    grid: tuple[int, int],
    quick: bool,
    finetune: tuple[int, float] | None = None,
) -> dict[str, float]:
    from stpipe.app.config import load_config
    from stpipe.io.ingestion import ingest
    from stpipe.io.sources.synthetic import generate_weather_files

    archive = sorted(
        generate_weather_files(workdir / "archive", days=days + 1, start="2024-01-01", grid=grid)
    )
    feed = workdir / "feed"
    feed.mkdir()
    for f in archive[:days]:
        shutil.copy(f, feed / f.name)
    path = write_config(workdir, grid=grid, quick=quick, finetune=finetune)
    config = load_config(path)
    ingest(config.ingest_job, progress=False)
    timed_training(config, "first night (full, no champion yet)")
    shutil.copy(archive[days], feed / archive[days].name)
    ingest(config.ingest_job, progress=False)
    tuned = timed_training(config, "fine-tune from the champion")
    full = timed_training(load_config(path, overrides={"train.init_from": "none"}), "retrain")
    figures = {
        "finetune_s": tuned[0],
        "retrain_s": full[0],
        "finetune_train_s": tuned[1],
        "retrain_train_s": full[1],
    }
    for name, (_, _, margins) in (("finetune", tuned), ("retrain", full)):
        figures |= {f"{name}_margin_{h}h": m for h, m in zip(LEADS, margins, strict=True)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 days on 16×16, tiny model")
    parser.add_argument("--days", type=int, default=None, help="days before the new one")
    parser.add_argument("--grid", type=int, nargs=2, default=None, metavar=("ROWS", "COLS"))
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument(
        "--finetune",
        nargs=2,
        default=None,
        metavar=("EPOCHS", "LR"),
        help="finetune_epochs and finetune_lr (default: 2 and 5e-4; --quick 1)",
    )
    args = parser.parse_args()
    days = args.days or (8 if args.quick else 14)
    grid = tuple(args.grid or ((16, 16) if args.quick else (32, 32)))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        finetune = (int(args.finetune[0]), float(args.finetune[1])) if args.finetune else None
        figures = run(workdir, days=days, grid=grid, quick=args.quick, finetune=finetune)
    print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()

"""Forecast quality: the trained model against every baseline, per lead, on the test split.

    python benchmarks/bench_quality.py [--quick] [--case weather|traffic|regional|all]
                                       [--model scnn_lstm] [--epochs N] [--seed N]

Each case ingests a synthetic feed through the real path (``stpipe.io.ingestion.ingest``)
into ``benchmarks/_data/``, trains with ``stpipe.learn.train.train_model`` (early stopping on
validation, the device ``auto`` picks) and scores with ``stpipe.learn.evaluate.evaluate_model``
on the test split: RMSE in physical units (latitude-weighted on lat/lon grids), the model
beside persistence, climatology and persistence + climatological change, fitted on the
train split only.

- ``weather``: ``data/configs/weather.toml`` (64×64, t2m/u10/v10 → t2m, leads 1/3/6/12 h);
- ``traffic``: ``data/configs/traffic.toml`` (32×32 inflow/outflow, leads 1–4 half-hours);
- ``regional``: the shape of the held-out real sample: 3 weeks of hourly t2m alone on a
  small regional grid (24×32), leads 1/3/6/12 h, the last 3 days the test split.

``--quick``: fewer days and epochs, to check the script (minutes on 2 cores).
Per case the per-lead table of ``stpipe evaluate`` (:func:`stpipe.learn.lead_table.lead_table`
on the evaluation's headline metric), then ``case=… margin_min=… margin_mean=…`` where
margin = 1 − RMSE_model / min(RMSE of the baselines) per lead (> 0: better than every
baseline).
Last line: ``weather_margin_min=… traffic_margin_min=… regional_margin_min=… beats_all=…``.
Imports stay lazy: no prefect or mlflow needed.
"""

from __future__ import annotations

import argparse
import logging
import time
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from stpipe.app.jobs import data_context, train
from stpipe.learn import scores
from stpipe.learn.lead_table import lead_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "_data"


def _base(name: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "data" / "configs" / f"{name}.toml").read_text())


def case_config(
    name: str, *, quick: bool, epochs: int | None, model: str, seed: int | None = None
) -> dict[str, Any]:
    """The raw config of a case (the shipped config for weather/traffic, with its workdir
    moved under benchmarks/_data); ``seed`` replaces the synthetic feed's seed."""
    if name == "regional":
        raw = _base("weather")
        days = 10 if quick else 21
        raw["source"] = {
            "kind": "synthetic-weather",
            "variables": ["t2m"],
            "synthetic": {"seed": 7, "start": "2024-02-01", "days": days, "grid": [24, 32]},
        }
        raw["patches"] = {"input_steps": 12, "leads": [1, 3, 6, 12], "size": [24, 32]}
        last = days - 3
        raw["split"] = {
            "val_start": f"2024-02-{last - 3 + 1:02d}",
            "test_start": f"2024-02-{last + 1:02d}",
        }
    else:
        raw = _base(name)
        if quick:
            raw["source"]["synthetic"]["days"] = 12
            first = raw["source"]["synthetic"]["start"]
            raw["split"] = {
                "val_start": (first + timedelta(days=8)).isoformat(),
                "test_start": (first + timedelta(days=10)).isoformat(),
            }
    raw["pipeline"]["name"] = f"bench-quality-{name}"
    days = raw["source"]["synthetic"]["days"]
    workdir = f"quality-{name}-{days}d"
    if seed is not None:
        raw["source"]["synthetic"]["seed"] = seed
        workdir += f"-seed{seed}"
    raw["pipeline"]["workdir"] = str(DATA / workdir)
    raw["model"] = raw.get("model", {}) | {"name": model}
    raw["train"] = raw.get("train", {}) | {"device": "auto"}
    if quick:
        raw["train"] |= {"epochs": 2, "max_batches_per_epoch": 20}
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    return raw


def run_case(name: str, raw: dict[str, Any]) -> tuple[Any, float]:
    from stpipe.app.config import config_from_dict
    from stpipe.io.ingestion import ingest
    from stpipe.learn.evaluate import evaluate_model

    config = config_from_dict(raw, origin=f"bench_quality:{name}", base=ROOT)
    report = ingest(config.ingest_job, progress=False)
    if report.refused:
        raise SystemExit(f"ingest refused files: {report.refused}")
    started = time.perf_counter()
    result = train(config, resume=False, progress=False)
    seconds = time.perf_counter() - started
    print(
        f"[{name}] trained {raw['model']['name']} on {result.device}: "
        f"{len(result.history)} epochs in {seconds:.0f} s, best epoch {result.best_epoch} "
        f"(validation score {result.best_score:.3f}, start {result.initial_score:.3f}), "
        f"{result.n_parameters} parameters",
        flush=True,
    )
    return evaluate_model(result.model, data_context(config), split="test"), seconds


def report(name: str, evaluation: Any, *, model: str) -> float:
    """Print the per-lead table and the margin line; return the smallest margin."""
    print(f"[{name}]")
    table = lead_table(evaluation, role=f"model {model}")
    Console(width=240, soft_wrap=True).print(table.to_rich())
    margins = scores.margins(evaluation, scores.headline(evaluation))
    print(
        f"case={name} margin_min={min(margins):.4f} margin_mean={sum(margins) / len(margins):.4f}",
        flush=True,
    )
    return min(margins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer days and epochs")
    parser.add_argument("--case", choices=["all", "weather", "traffic", "regional"], default="all")
    parser.add_argument("--model", default="scnn_lstm", help="[model] name to train")
    parser.add_argument("--epochs", type=int, help="override [train] epochs")
    parser.add_argument("--seed", type=int, help="override the synthetic feeds' seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("distributed", "stpipe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names = ["weather", "traffic", "regional"] if args.case == "all" else [args.case]
    margins = {}
    for name in names:
        raw = case_config(
            name, quick=args.quick, epochs=args.epochs, model=args.model, seed=args.seed
        )
        evaluation, _ = run_case(name, raw)
        margins[name] = report(name, evaluation, model=args.model)
    print(
        " ".join(f"{n}_margin_min={m:.4f}" for n, m in margins.items())
        + f" beats_all={all(m > 0 for m in margins.values())}"
    )


if __name__ == "__main__":
    main()

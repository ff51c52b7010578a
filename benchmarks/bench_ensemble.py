"""Would averaging models of several training seeds be more robust than one model?

    python benchmarks/bench_ensemble.py [--members N] [--seeds N] [--quick] [--jobs N]

The ``regional`` and ``regime`` runs of ``bench_quality.py`` (data seeds 1..``--seeds``, test
days at the end or a week earlier), each trained ``--members`` times (default 4) with
``[train] seed`` 0, 1, … through the same job as ``stpipe train`` with ``[train] members``
= N (early stopping and the per-lead calibration on the validation split, each model
calibrated on its own), then scored on the test split: every model alone, and the mean of
the first k models for k = 2..N as stpipe forms it
(:class:`stpipe.models.ensemble.MemberMean`: a lead where every member falls back to the
same baseline forecasts that baseline bit for bit). Margin = 1 − RMSE / RMSE of the best baseline
at that lead (the headline metric of ``stpipe evaluate``), as in ``bench_quality.py``.

Output: per run, the margins at 1/3/6/12 h of each model and each mean; then per model and
mean, the (case, seed, split, lead) more than 2 % behind the best baseline, the worst margin
at 1–6 h and the mean margin per lead. Last line::

    single_cases=a/b/… mean_cases=c/d/… single_worst_1_6h=… mean_worst_1_6h=…

(single: each model alone, in seed order; mean: of the first 2, 3, … models; worst: the
lowest margin at leads of 6 h or less, over the single models and over the means).
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context

import numpy as np
import torch
from bench_quality import WORSE, Run, ingested, margin_row, regional_runs

from stpipe.app.config import apply_overrides

SHORT_LEADS_H = 6.0


def member_margins(run: Run, members: int) -> tuple[list[float], dict[str, list[float]]]:
    """The leads (hours) and, per model ``seed i`` and mean ``mean of k``, its test margins."""
    from stpipe.app.jobs import data_context, train
    from stpipe.learn.evaluate import evaluate_model
    from stpipe.models.ensemble import MemberMean

    logging.basicConfig(level=logging.WARNING)
    raw = apply_overrides(run.raw, {"train.members": members}, origin="bench_ensemble")
    config = ingested(replace(run, raw=raw))
    models = [member.model for member in train(config, resume=False, progress=False).members]
    data = data_context(config)
    forecasters = {f"seed {i}": model for i, model in enumerate(models)}
    forecasters |= {f"mean of {k}": MemberMean(models[:k]) for k in range(2, members + 1)}
    rows = {
        name: margin_row(run, evaluate_model(forecaster, data, split="test"))
        for name, forecaster in forecasters.items()
    }
    leads = list(next(iter(rows.values())).leads)
    return leads, {name: [float(m) for m in row.margins] for name, row in rows.items()}


def summary(leads: list[float], table: dict[str, list[list[float]]]) -> dict[str, tuple]:
    """Per model or mean: cases below ``WORSE``, worst margin at short leads, mean per lead."""
    short = np.array(leads) <= SHORT_LEADS_H
    out = {}
    for name, rows in table.items():
        margins = np.array(rows)
        out[name] = (
            int((margins < WORSE).sum()),
            float(margins[:, short].min()),
            margins.mean(0),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4, help="training seeds 0..N-1")
    parser.add_argument("--seeds", type=int, default=5, help="data seeds 1..N (default 5)")
    parser.add_argument("--quick", action="store_true", help="fewer days, epochs and batches")
    parser.add_argument("--jobs", type=int, help="runs at a time (default 4 with CUDA, else 1)")
    args = parser.parse_args()
    seeds = range(1, args.seeds + 1)
    runs = [
        run
        for case in ("regional", "regime")
        for run in regional_runs(
            case, seeds=seeds, quick=args.quick, overrides={}, model="scnn_lstm"
        )
    ]
    jobs = args.jobs or (4 if torch.cuda.is_available() else 1)
    table: dict[str, list[list[float]]] = {}
    leads: list[float] = []
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        outcomes = pool.map(member_margins, runs, [args.members] * len(runs))
        for run, (run_leads, margins) in zip(runs, outcomes, strict=True):
            leads = run_leads
            cells = "  ".join(
                f"{name} " + "/".join(f"{100 * m:+.1f}" for m in ms) for name, ms in margins.items()
            )
            print(f"{run.label:<28} {cells}", flush=True)
            for name, ms in margins.items():
                table.setdefault(name, []).append(ms)
    print(f"margin = 1 − RMSE / RMSE of the best baseline, at leads {leads} h")
    results = summary(leads, table)
    for name, (cases, worst, mean) in results.items():
        print(
            f"{name:<10} cases below −2 %: {cases:3d}  worst at ≤ 6 h {100 * worst:+6.1f} %  "
            "mean per lead " + "/".join(f"{100 * m:+.1f}" for m in mean) + " %"
        )
    singles = [v for k, v in results.items() if k.startswith("seed")]
    means = [v for k, v in results.items() if k.startswith("mean")]
    print(
        "single_cases="
        + "/".join(str(c) for c, *_ in singles)
        + " mean_cases="
        + "/".join(str(c) for c, *_ in means)
        + f" single_worst_1_6h={min(w for _, w, _ in singles):.4f}"
        + f" mean_worst_1_6h={min((w for _, w, _ in means), default=float('nan')):.4f}"
    )


if __name__ == "__main__":
    main()

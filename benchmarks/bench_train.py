"""Training throughput and quality: ``scnn_lstm`` vs the ``convlstm`` reference, same code.

    python benchmarks/bench_train.py [--quick] [--case weatherbench|taxibj|all]
                                     [--steps N] [--num-workers N] [--all-configs]

Both models are set up as ``stpipe train`` sets them up (``stpipe.learn.train.Trainer.setup``:
the loaders, AdamW and its schedule, the lead weights of the loss) and trained by its
``train_epoch`` (bf16 autocast, clipping, the lead-weighted masked loss) on stores built through the real ingest
path (``stpipe.io.ingestion.ingest`` of the synthetic feeds) in ``benchmarks/_data/``. Shapes
(OpenSTL's, whose own ConvLSTM trains at the figures below on an H100):

- ``weatherbench``: WeatherBench t2m, 12 → 12 hourly steps on 32×64, batch 16; ConvLSTM
  4×128 hidden, filter 5, patch 2 (OpenSTL: 14.9M params, 139 samples/s fp32, 131 bf16);
  synthetic weather, t2m only, 60 days;
- ``taxibj``: TaxiBJ, 4 → 4 half-hourly steps, 2×32×32 (inflow, outflow), batch 16, same
  ConvLSTM (OpenSTL: 542 samples/s); synthetic traffic, 28 days.

``--quick`` (CPU smoke run, ~1–2 min): grids halved, 6 → 6 / 4 → 4 steps, batch 8,
ConvLSTM 2×32 and ``scnn_lstm`` hidden 16, a few steps.

Per model, per configuration (GPU: fp32 and bf16, each eager and as a CUDA graph
(``[train] cuda_graph``, :class:`stpipe.learn.train.TrainStep`), and bf16 + ``torch.compile``;
``--all-configs`` adds fp32 + compile; CPU: fp32), from a fresh model: ``warmup`` steps
(compilation, cuDNN autotuning, the graph capture, the loader's first blocks), then ``steps`` timed steps (epochs of the same
loader, as ``stpipe train`` runs them: its block cache carries over). samples/s = samples / wall time of the timed
steps, GPU synchronised at the end; data_wait_frac = time blocked in the loader's
``next()`` while the GPU had finished the work queued before it (the device idle for
want of data; :func:`stpipe.learn.context.iterate_on_device`) / that wall time. After the same budget (``warmup + steps`` steps of the same
batch size) each model is scored on the validation split: ``val_rmse`` (mean over leads,
physical units) beside the best baseline's.

Last line (weatherbench case, or the only case run; each model's fastest configuration):
``device=… scnn_samples_per_s=… convlstm_samples_per_s=… data_wait_frac=… peak_gpu_mem_gb=…``
(data_wait_frac of that scnn_lstm configuration; peak memory: the most any run used).
Imports stay lazy: no prefect or mlflow needed; a GPU box needs ``distributed`` and
``h5py`` only to build the stores (or carry ``benchmarks/_data/``: existing stores are
reused without ingesting).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stpipe.app.jobs import data_context
from stpipe.learn.context import resolve_device
from stpipe.learn.train import Trainer, determinism, train_epoch
from stpipe.models import flops_per_sample

DATA = Path(__file__).resolve().parent / "_data"
OPENSTL_H100 = {"weatherbench": "139 fp32 / 131 bf16", "taxibj": "542"}
OPENSTL_H100_FP32 = {"weatherbench": 139.0, "taxibj": 542.0}


@dataclass(frozen=True)
class Case:
    """One benchmark shape: the feed, the patch spec, the batch and the ConvLSTM."""

    name: str
    kind: str  # synthetic-weather | synthetic-traffic
    variables: tuple[str, ...]
    grid: tuple[int, int]
    days: int
    start: str
    input_steps: int
    n_leads: int
    batch_size: int
    convlstm_hidden: tuple[int, ...]
    scnn_hidden: int | None = None  # None: the [model] default

    def config(
        self,
        *,
        model: str,
        precision: str,
        compile_model: bool,
        num_workers: int,
        cuda_graph: bool = False,
    ):
        from stpipe.app.config import config_from_dict

        last_day = _shift(self.start, self.days - 1)
        model_section: dict[str, Any] = {"name": model}
        if model == "convlstm":
            model_section |= {"hidden": list(self.convlstm_hidden), "filter": 5, "patch": 2}
        elif self.scnn_hidden is not None:
            model_section["hidden"] = self.scnn_hidden
        return config_from_dict(
            {
                "pipeline": {"name": f"bench-train-{self.name}", "workdir": str(self.workdir)},
                "source": {
                    "kind": self.kind,
                    "variables": list(self.variables),
                    "synthetic": {"days": self.days, "grid": list(self.grid), "start": self.start},
                },
                "patches": {
                    "input_steps": self.input_steps,
                    "leads": list(range(1, self.n_leads + 1)),
                    "size": list(self.grid),
                },
                # The last 4 days validate (the last one is the test split, unused here).
                "split": {"val_start": _shift(last_day, -3), "test_start": last_day},
                "model": model_section,
                "train": {
                    "batch_size": self.batch_size,
                    "precision": precision,
                    "compile": compile_model,
                    "cuda_graph": cuda_graph,
                    "num_workers": num_workers,
                    "epochs": 1,
                    "device": "auto",
                },
            }
        )

    @property
    def workdir(self) -> Path:
        return DATA / f"train-{self.name}-{self.grid[0]}x{self.grid[1]}-{self.days}d"


def _shift(day: str, days: int) -> str:
    import datetime

    return (datetime.date.fromisoformat(day) + datetime.timedelta(days=days)).isoformat()


CASES = {
    "weatherbench": Case(
        "weatherbench",
        "synthetic-weather",
        ("t2m",),
        (32, 64),
        60,
        "2024-01-01",
        12,
        12,
        16,
        (128, 128, 128, 128),
    ),
    "taxibj": Case(
        "taxibj",
        "synthetic-traffic",
        ("inflow", "outflow"),
        (32, 32),
        28,
        "2024-03-01",
        4,
        4,
        16,
        (128, 128, 128, 128),
    ),
}
QUICK = {
    "weatherbench": replace(
        CASES["weatherbench"],
        grid=(16, 32),
        days=6,
        input_steps=6,
        n_leads=6,
        batch_size=8,
        convlstm_hidden=(32, 32),
        scnn_hidden=16,
    ),
    "taxibj": replace(
        CASES["taxibj"],
        grid=(16, 16),
        days=12,
        batch_size=8,
        convlstm_hidden=(32, 32),
        scnn_hidden=16,
    ),
}


@dataclass(frozen=True)
class Row:
    case: str
    model: str
    precision: str
    compiled: bool
    graphed: bool
    params: int
    gflops_per_sample: float
    samples_per_s: float
    data_wait_frac: float
    step_ms: float
    peak_gpu_mem_gb: float
    val_rmse: float
    best_baseline_rmse: float

    def line(self) -> str:
        return (
            f"case={self.case} model={self.model} precision={self.precision} "
            f"compile={'on' if self.compiled else 'off'} "
            f"cuda_graph={'on' if self.graphed else 'off'} params={self.params} "
            f"gflops_per_sample={self.gflops_per_sample:.3f} "
            f"samples_per_s={self.samples_per_s:.1f} step_ms={self.step_ms:.2f} "
            f"data_wait_frac={self.data_wait_frac:.3f} peak_gpu_mem_gb={self.peak_gpu_mem_gb:.2f} "
            f"val_rmse={self.val_rmse:.4f} best_baseline_rmse={self.best_baseline_rmse:.4f}"
        )


def build_store(case: Case) -> str:
    """Ingest the case's synthetic feed (a no-op when the store is already complete)."""
    from stpipe.io.store import open_store

    config = case.config(model="scnn_lstm", precision="fp32", compile_model=False, num_workers=0)
    expected = case.days * 86_400 // (3600 if case.kind == "synthetic-weather" else 1800)
    try:
        steps = open_store(config.store_path).sizes["time"]
    except Exception:  # no store yet: build it (StoreError), or a broken one (rebuild)
        steps = -1
    if steps == expected:
        return f"reused {config.store_path} ({steps} steps)"
    from stpipe.io.ingestion import ingest

    started = time.perf_counter()
    report = ingest(config.ingest_job, progress=False)
    if report.refused:
        raise SystemExit(f"ingest refused files: {report.refused}")
    return f"ingested {config.store_path} in {time.perf_counter() - started:.1f} s"


def run_config(
    case: Case,
    *,
    model_name: str,
    precision: str,
    compile_model: bool,
    cuda_graph: bool,
    warmup: int,
    steps: int,
    num_workers: int,
) -> Row:
    config = case.config(
        model=model_name,
        precision=precision,
        compile_model=compile_model,
        num_workers=num_workers,
        cuda_graph=cuda_graph,
    )
    cfg = config.train
    device = resolve_device(cfg.device)
    data = data_context(config)
    with determinism(device, seed=cfg.seed):
        # train_model's own setup; the schedule spans the run's steps as one epoch.
        trainer = Trainer.setup(
            data, model=config.model, train=cfg, device=device, steps_per_epoch=warmup + steps
        )
        example = next(iter(trainer.val_loader))
        flops = flops_per_sample(trainer.model, {k: v.to(device) for k, v in example.items()})
        timed = timed_steps(trainer, warmup=warmup, steps=steps)
        val = trainer.validate()
    return Row(
        case=case.name,
        model=model_name,
        precision=precision,
        compiled=compile_model,
        graphed=trainer.step.graphed,
        params=trainer.n_parameters,
        gflops_per_sample=flops / 1e9,
        samples_per_s=timed.samples / timed.seconds,
        data_wait_frac=timed.wait_seconds / timed.seconds,
        step_ms=1e3 * timed.seconds * cfg.batch_size / timed.samples,
        peak_gpu_mem_gb=timed.peak_gpu_mem_gb,
        val_rmse=sum(val.rmse) / len(val.rmse),
        best_baseline_rmse=sum(val.ref_rmse) / len(val.ref_rmse),
    )


@dataclass(frozen=True)
class Timed:
    """The timed steps of a configuration: samples, wall and loader-wait seconds, peak memory."""

    samples: int
    seconds: float
    wait_seconds: float
    peak_gpu_mem_gb: float


def timed_steps(trainer: Trainer, *, warmup: int, steps: int) -> Timed:
    """``warmup`` untimed steps, then ``steps`` timed ones of ``trainer``'s step, epoch after
    epoch of its train loader."""
    import torch

    device, loader, batch_size = trainer.device, trainer.train_loader, trainer.cfg.batch_size
    # One loader for every epoch, as train_model keeps it (its block cache persists);
    # the warmup is the start of epoch 0.
    train_epoch(trainer.step, itertools.islice(loader, warmup))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    samples = 0
    seconds = wait = 0.0
    epoch = 0
    while samples < steps * batch_size:
        epoch += 1
        loader.set_epoch(epoch)
        batches = min(len(loader), steps - samples // batch_size)
        stats = train_epoch(trainer.step, itertools.islice(loader, batches))
        samples += stats.samples
        seconds += stats.seconds
        wait += stats.wait_seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return Timed(samples=samples, seconds=seconds, wait_seconds=wait, peak_gpu_mem_gb=peak)


def environment() -> tuple[str, str]:
    """(short device name for the last line, a description line)."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        name = props.name
        desc = (
            f"gpu={name!r} memory_gb={props.total_memory / 2**30:.1f} "
            f"capability={props.major}.{props.minor} cuda={torch.version.cuda} "
            f"cudnn={torch.backends.cudnn.version()} "
            f"tf32_matmul={torch.backends.cuda.matmul.allow_tf32} "
            f"tf32_cudnn={torch.backends.cudnn.allow_tf32}"
        )
        return name.replace(" ", "_"), desc
    name = f"cpu-{os.cpu_count()}cores"
    return (
        name,
        f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} "
        f"torch_threads={torch.get_num_threads()}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, a few steps (CPU)")
    parser.add_argument("--case", choices=["all", *CASES], default="all")
    parser.add_argument("--steps", type=int, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, help="untimed steps first (compile, autotune)")
    parser.add_argument("--num-workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--all-configs", action="store_true", help="also fp32 + compile")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    cases = QUICK if args.quick else CASES
    names = list(cases) if args.case == "all" else [args.case]
    steps = args.steps or (6 if args.quick else 300)
    warmup = args.warmup or (2 if args.quick else 20)
    configs = configurations(gpu=torch.cuda.is_available(), all_configs=args.all_configs)
    device, description = environment()
    print(f"torch={torch.__version__} device={device} {description}", flush=True)
    print(
        f"steps={steps} warmup={warmup} configs={configs} num_workers={args.num_workers}",
        flush=True,
    )

    rows: list[Row] = []
    for name in names:
        rows += run_case(
            cases[name], configs, warmup=warmup, steps=steps, num_workers=args.num_workers
        )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    print_summary(rows, names, device=device)


def configurations(*, gpu: bool, all_configs: bool) -> list[tuple[str, bool, bool]]:
    """(precision, torch.compile, CUDA graph) per configuration run."""
    configs = [("fp32", False, False)]
    if gpu:
        configs += [("fp32", False, True), ("bf16", False, False), ("bf16", False, True)]
        configs += [("bf16", True, False)]
        if all_configs:
            configs.insert(2, ("fp32", True, False))
    return configs


def run_case(
    case: Case,
    configs: list[tuple[str, bool, bool]],
    *,
    warmup: int,
    steps: int,
    num_workers: int,
) -> list[Row]:
    """Both models in every configuration on ``case``'s store (built first), one line each."""
    print(
        f"[{case.name}] {build_store(case)}; OpenSTL ConvLSTM on an H100: "
        f"{OPENSTL_H100[case.name]} samples/s",
        flush=True,
    )
    rows = []
    for model in ("scnn_lstm", "convlstm"):
        for precision, compiled, graphed in configs:
            started = time.perf_counter()
            row = run_config(
                case,
                model_name=model,
                precision=precision,
                compile_model=compiled,
                cuda_graph=graphed,
                warmup=warmup,
                steps=steps,
                num_workers=num_workers,
            )
            rows.append(row)
            print(f"{row.line()} wall_s={time.perf_counter() - started:.0f}", flush=True)
    return rows


def fastest(rows: list[Row], case: str) -> dict[str, Row]:
    """Each model's fastest configuration on ``case``."""
    return {
        m: max((r for r in rows if r.case == case and r.model == m), key=lambda r: r.samples_per_s)
        for m in ("scnn_lstm", "convlstm")
    }


def print_summary(rows: list[Row], names: list[str], *, device: str) -> None:
    """A summary line per case, then the last line (module docstring)."""
    for name in names:
        per = fastest(rows, name)
        print(
            f"summary case={name} speedup_vs_convlstm="
            f"{per['scnn_lstm'].samples_per_s / per['convlstm'].samples_per_s:.1f}x "
            f"speedup_vs_openstl_convlstm_h100="
            f"{per['scnn_lstm'].samples_per_s / OPENSTL_H100_FP32[name]:.1f}x "
            f"scnn_val_rmse={per['scnn_lstm'].val_rmse:.4f} "
            f"convlstm_val_rmse={per['convlstm'].val_rmse:.4f} "
            f"best_baseline_val_rmse={per['scnn_lstm'].best_baseline_rmse:.4f}",
            flush=True,
        )
    best = fastest(rows, "weatherbench" if "weatherbench" in names else names[0])
    print(
        f"device={device} scnn_samples_per_s={best['scnn_lstm'].samples_per_s:.1f} "
        f"convlstm_samples_per_s={best['convlstm'].samples_per_s:.1f} "
        f"data_wait_frac={best['scnn_lstm'].data_wait_frac:.3f} "
        f"peak_gpu_mem_gb={max(r.peak_gpu_mem_gb for r in rows):.2f}"
    )


if __name__ == "__main__":
    main()

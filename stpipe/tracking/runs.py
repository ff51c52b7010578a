"""What a training run logs: config, lineage, epochs, evaluations, system facts.

All through the pipeline's ``MlflowClient`` with an explicit run id (no active-run state):

- params: the resolved config flattened (``train.epochs`` = ``20``); artifact
  ``config.toml``, loadable with :func:`stpipe.app.config.load_config`;
- dataset inputs (MLflow's ``log_input`` entity): the store once per split, with its path,
  manifest digest and time range as tags and the split as context;
- metrics: per epoch (``train_loss``, ``val_loss``, ``epoch_val_rmse`` per lead …, step =
  epoch); per evaluation ``<split>_<metric>_<forecast>`` with step = lead (steps), so
  MLflow plots a curve over leads, and ``<split>_<summary>_<forecast>`` (lead means); the
  tag ``stpipe.headline_metric`` names the evaluation's headline metric;
- artifacts: ``evaluation/<split>.json`` (:mod:`stpipe.learn.scores`) and the plots;
- system facts: device, torch and Python versions, ``train_samples_per_s`` (mean over
  epochs), parameters, seconds.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import xarray as xr
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag

from stpipe.learn import scores
from stpipe.tracking.client import Tracking, tracking_errors

if TYPE_CHECKING:
    from stpipe.learn.context import DataContext
    from stpipe.learn.train import EpochLog, TrainResult

CONFIG_ARTIFACT = "config.toml"
HEADLINE_TAG = "stpipe.headline_metric"
MAX_PARAM_CHARS = 6000


def start_run(tracking: Tracking, *, run_name: str, tags: Mapping[str, str]) -> str:
    """Create a run in the pipeline's experiment; return its id."""
    with tracking_errors(tracking.uri, "start a run"):
        run = tracking.client.create_run(tracking.experiment_id, run_name=run_name, tags=dict(tags))
    return run.info.run_id


def end_run(tracking: Tracking, run_id: str, *, failed: bool) -> None:
    with tracking_errors(tracking.uri, f"end run {run_id}"):
        tracking.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def log_config(
    tracking: Tracking, run_id: str, *, params: Mapping[str, str], toml_text: str
) -> None:
    """The config as params (``section.key`` → text) and as the ``config.toml`` artifact."""
    params = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in params.items()]
    with tracking_errors(tracking.uri, f"log the config of run {run_id}"):
        for start in range(0, len(params), 100):  # MLflow's limit per request
            tracking.client.log_batch(run_id, params=params[start : start + 100])
        tracking.client.log_text(run_id, toml_text, CONFIG_ARTIFACT)


def log_lineage(tracking: Tracking, run_id: str, data: DataContext, *, name: str) -> dict[str, str]:
    """The store as one dataset input per split; returns the lineage tags (for the version).

    Each split is a dataset ``<name>/<split>`` (MLflow keeps one input per dataset and run)
    with the manifest digest and the store path as source; its input carries the split as
    context, its first and last time, and the lineage tags (store, digest, data range,
    variables, grid, split dates, time step).
    """
    from stpipe.core.card import Grid

    times = data.ds["time"].values
    lineage = {
        "stpipe.store": str(data.store_path),
        "stpipe.store_digest": data.store_digest,
        "stpipe.data_start": str(times[0]),
        "stpipe.data_end": str(times[-1]),
        "stpipe.variables": ",".join(data.spec.input_variables),
        "stpipe.grid": Grid.of(data.ds).describe(),
        "stpipe.val_start": str(data.splits.val_start),
        "stpipe.test_start": str(data.splits.test_start),
        "stpipe.time_step_s": str(data.step_s),
    }
    source = json.dumps({"uri": str(data.store_path)})
    inputs = []
    for split in ("train", "val", "test"):
        a, b = data.splits.index_range(split, times)
        if b <= a:
            continue
        dataset = DatasetEntity(
            name=f"{name}/{split}", digest=data.store_digest, source_type="local", source=source
        )
        tags = {
            "mlflow.data.context": split,
            "time_start": str(times[a]),
            "time_end": str(times[b - 1]),
        } | lineage
        inputs.append(DatasetInput(dataset=dataset, tags=[InputTag(k, v) for k, v in tags.items()]))
    with tracking_errors(tracking.uri, f"log the dataset inputs of run {run_id}"):
        tracking.client.log_inputs(run_id, datasets=inputs)
    return lineage


def epoch_logger(
    tracking: Tracking, run_id: str, *, leads: Sequence[int]
) -> Callable[[EpochLog], None]:
    """The ``on_epoch_end`` hook of :func:`stpipe.learn.train.train_members` (rank 0 calls
    it); ``leads`` (steps) name the per-lead validation RMSEs. A member's epochs (of several)
    are logged under ``member<i>/`` (e.g. ``member1/val_loss``), step the epoch."""

    def log_epoch(entry: EpochLog) -> None:
        now = int(time.time() * 1000)
        prefix = "" if entry.member is None else f"member{entry.member}/"
        values = {
            "train_loss": entry.train_loss,
            "val_loss": entry.val_loss,
            "lr": entry.lr,
            "samples_per_s": entry.samples_per_s,
            "data_wait_frac": entry.data_wait_frac,
            "epoch_seconds": entry.seconds,
        }
        for lead, rmse, ref in zip(leads, entry.val_rmse, entry.val_ref_rmse, strict=True):
            values |= {f"epoch_val_rmse_lead{lead}": rmse, f"epoch_val_ref_rmse_lead{lead}": ref}
        metrics = [Metric(prefix + k, float(v), now, entry.epoch) for k, v in values.items()]
        with tracking_errors(tracking.uri, f"log epoch {entry.epoch} of run {run_id}"):
            tracking.client.log_batch(run_id, metrics=_finite(metrics))

    return log_epoch


def log_evaluation(
    tracking: Tracking, run_id: str, evaluation: xr.Dataset, *, plots: Sequence[Path] = ()
) -> None:
    """Per-lead metrics (step = lead in steps) of ``evaluation`` (:mod:`stpipe.learn.scores`),
    lead means, the headline tag, the JSON and ``plots`` (files, logged under ``plots/``)."""
    now = int(time.time() * 1000)
    split = evaluation.attrs["split"]
    lead_steps = [int(s) for s in evaluation["lead_step"].values]
    metrics = [
        Metric(f"{split}_{name}_{forecast}", value, now, lead)
        for name, by_forecast in scores.metrics_table(evaluation).items()
        for forecast, values in by_forecast.items()
        for lead, value in zip(lead_steps, values, strict=True)
    ]
    metrics += [
        Metric(f"{split}_{name}_{forecast}", value, now, 0)
        for name, by_forecast in scores.summary(evaluation).items()
        for forecast, value in by_forecast.items()
    ]
    tags = [RunTag(HEADLINE_TAG, scores.headline(evaluation))]
    with tracking_errors(tracking.uri, f"log the {split} evaluation of run {run_id}"):
        for start in range(0, len(metrics), 1000):  # MLflow's limit per request
            batch = _finite(metrics[start : start + 1000])
            tracking.client.log_batch(run_id, metrics=batch, tags=tags if start == 0 else [])
        tracking.client.log_dict(run_id, scores.to_dict(evaluation), f"evaluation/{split}.json")
        for path in plots:
            tracking.client.log_artifact(run_id, str(path), "plots")


def log_system(
    tracking: Tracking, run_id: str, result: TrainResult, *, tags: Mapping[str, str] | None = None
) -> None:
    """Device, versions, throughput and size of a finished training, and ``tags``; its
    epochs, best epoch, best validation score and refit epochs (``[train] refit``) at step
    0, and of several members (``[train] members``) each member's at step = its index."""
    history = result.history
    samples_per_s = sum(e.samples_per_s for e in history) / len(history) if history else math.nan
    system = {
        "system.device": result.device,
        "system.torch": torch.__version__,
        "system.python": platform.python_version(),
        "system.platform": platform.platform(),
        "train.run_key": result.run_key,
        "train.stopped_early": str(result.stopped_early).lower(),
    } | dict(tags or {})
    now = int(time.time() * 1000)
    values = {
        "train_samples_per_s": samples_per_s,
        "train_seconds": result.seconds,
        "n_parameters": float(result.n_parameters),
    }
    metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
    for step, run in enumerate(result.members or (result,)):
        metrics += [
            Metric("epochs", float(len(run.history)), now, step),
            Metric("best_epoch", float(run.best_epoch), now, step),
            Metric("best_val_score", run.best_score, now, step),
            Metric("refit_epochs", float(run.refit_epochs), now, step),
        ]
    with tracking_errors(tracking.uri, f"log system facts of run {run_id}"):
        tracking.client.log_batch(
            run_id,
            metrics=_finite(metrics),
            tags=[RunTag(k, v) for k, v in system.items()],
        )


def log_scores(
    tracking: Tracking,
    run_id: str,
    *,
    scores: Mapping[str, float],
    step: int,
    timestamp_ms: int,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Metrics (and tags) of one event, e.g. the promotion or a verification."""
    metrics = [Metric(k, float(v), timestamp_ms, step) for k, v in scores.items()]
    with tracking_errors(tracking.uri, f"log scores to run {run_id}"):
        tracking.client.log_batch(
            run_id, metrics=_finite(metrics), tags=[RunTag(k, v) for k, v in (tags or {}).items()]
        )


def _finite(metrics: list[Metric]) -> list[Metric]:
    # MLflow stores NaN, but its UI and comparisons treat it badly; a missing point is clearer.
    return [m for m in metrics if math.isfinite(m.value)]

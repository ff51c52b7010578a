"""The jobs: stages wired together, as the CLI and the Prefect flows run them.

- :func:`run_training`: train → evaluate (test) → log → register → promote;
- :func:`run_evaluation`: the champion and the baselines on the test split;
- :func:`run_forecast`: the champion → the forecast store, then :func:`verify_forecasts`;
- :func:`verify_forecasts`: score past forecasts whose truth has arrived;
- :func:`compare_versions`: the registered versions side by side.

Training ends with :func:`stpipe.app.promotion.promote`: the candidate against the champion,
serialised by a lock in the workdir, then the version registered with its alias.

Each job connects to MLflow first (:func:`stpipe.tracking.connect`), so an unreachable
server fails the job before any work is done or anything is written; during the job each
MLflow request is retried as ``[mlflow] retries`` and ``retry_backoff_s`` say
(:func:`stpipe.tracking.client.request_retries`), not for MLflow's default minutes.

A training holds a lease on its run in ``<workdir>/run-leases`` while its process lives;
the next training of the workdir marks KILLED a run left RUNNING whose lease no process
holds (its job was killed).
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np
import pandas as pd
import xarray as xr
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from torch import Tensor

from stpipe.app.config import Config
from stpipe.app.finetune import SCRATCH, starting_point
from stpipe.app.promotion import promote
from stpipe.app.rescore import rescore_table
from stpipe.core.card import ModelCard, card_for
from stpipe.core.errors import ConfigError, TrackingError
from stpipe.forecast.access import check_forecast_store
from stpipe.forecast.predict import forecast_grid, input_window_end
from stpipe.forecast.store import (
    MissingForecastStore,
    forecast_attrs,
    open_forecasts,
    write_forecast,
)
from stpipe.forecast.verify import Verification, verifiable_inits, verify_forecast
from stpipe.io.store import open_store, store_digest
from stpipe.learn import scores
from stpipe.learn.context import (
    DataContext,
    Distributed,
    check_split_windows,
    load_data_context,
    make_split_loader,
)
from stpipe.learn.evaluate import SampleMaps, evaluate_model, sample_maps
from stpipe.learn.plots import plot_rmse_vs_lead, plot_sample_maps
from stpipe.learn.train import EpochLog, TrainResult, train_members
from stpipe.tracking import registry, runs
from stpipe.tracking.client import Tracking, connect, request_retries, tracking_errors
from stpipe.tracking.compare import VersionTable, version_table
from stpipe.tracking.locks import abandoned, drop_lease, leased_runs, run_lease
from stpipe.tracking.model import RegisteredForecaster, load_model, log_model
from stpipe.tracking.registry import Promotion, per_lead_metric

log = logging.getLogger(__name__)

VERIFIED_TAG = "stpipe.verified."
RUN_LEASES = "run-leases"

P = ParamSpec("P")
R = TypeVar("R")


def _job(fn: Callable[Concatenate[Config, P], R]) -> Callable[Concatenate[Config, P], R]:
    """``fn(config, ...)`` with MLflow's request retries bounded by ``config``'s ``[mlflow]``."""

    @functools.wraps(fn)
    def job(config: Config, *args: P.args, **kwargs: P.kwargs) -> R:
        with request_retries(config.mlflow):
            return fn(config, *args, **kwargs)

    return job


@dataclass(frozen=True)
class TrainingOutcome:
    """A finished training job: its run, the new version and the promotion decision."""

    run_id: str
    version: str
    promotion: Promotion
    test: xr.Dataset  # the scores on the test split (stpipe.learn.scores)

    def summary(self) -> str:
        p = self.promotion
        champion = "-" if p.champion_score is None else f"{p.champion_score:.4g}"
        return (
            f"run {self.run_id}: registered v{self.version} as {p.alias} ({p.reason}); "
            f"{p.metric} candidate {p.candidate_score:.4g}, champion {champion}"
        )


@dataclass(frozen=True)
class ForecastOutcome:
    """A forecast written: its init time, where, by which version, and what was verified."""

    init_time: np.datetime64
    store: str
    model_version: str
    run_id: str
    replaced: bool
    verified: tuple[Verification, ...]

    def summary(self) -> str:
        action = "replaced" if self.replaced else "wrote"
        return (
            f"{action} the forecast of {np.datetime_as_string(self.init_time, unit='m')} in "
            f"{self.store} with "
            f"v{self.model_version}; verified {len(self.verified)} past forecast(s)"
        )


def data_context(config: Config) -> DataContext:
    """The job's view of the store (opened once, statistics and climatology fitted once)."""
    return load_data_context(
        config.store_path,
        spec=config.patch_spec(),
        splits=config.split,
        climatology_period=config.model.climatology_period,
        dask=config.dask,
    )


def tracking_for(config: Config) -> Tracking:
    """The pipeline's MLflow connection (``[mlflow]``, SQLite in the workdir by default)."""
    return connect(
        config.mlflow,
        workdir=config.workdir,
        experiment=config.experiment_name,
        model_name=config.model_name,
    )


def model_card(config: Config, ds: xr.Dataset) -> ModelCard:
    """The card of the model ``config`` trains on the store ``ds``."""
    return card_for(
        pipeline=config.pipeline.name, model=config.model.name, spec=config.patch_spec(), ds=ds
    )


def train(
    config: Config,
    data: DataContext | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    init_from: Sequence[Mapping[str, Tensor]] = (),
) -> TrainResult:
    """:func:`stpipe.learn.train.train_members` with the settings of ``config`` (no
    tracking); ``init_from``: starting weights per member (none: the seeded ones)."""
    return train_members(
        data or data_context(config),
        model=config.model,
        train=config.train,
        checkpoint_root=config.workdir / "checkpoints",
        resume=resume,
        progress=progress,
        on_epoch_end=on_epoch_end,
        init_from=init_from,
    )


@_job
def run_training(
    config: Config, *, resume: bool = True, progress: bool = True
) -> TrainingOutcome | None:
    """Train ``config``'s model, log everything, register a version and promote it if better.

    Training starts where ``[train] init_from`` says (:mod:`stpipe.app.finetune`: the
    seeded initialisation, or the champion's or a version's weights, fine-tuned). The run
    and the version are tagged with the windows of the split (``stpipe.train_end``: the
    validation window's end with ``[train] refit``, ``stpipe.val_window``,
    ``stpipe.test_window``) and ``stpipe.init_from``.

    Under DDP every rank trains; only rank 0 writes to MLflow and gets the outcome (the
    other ranks return None; they read the starting weights from the registry too).
    """
    registry.check_metric(config.mlflow.metric)
    data = data_context(config)
    check_split_windows(data)  # an empty window fails here, not after the training
    main = Distributed.from_env().is_main
    if not main and config.train.init_from == SCRATCH:
        train(config, data, resume=resume, progress=False)
        return None
    tracking = tracking_for(config)
    start = starting_point(tracking, config, data)
    tuned = config.model_copy(update={"train": start.train})
    if not main:
        train(tuned, data, resume=resume, progress=False, init_from=start.state)
        return None

    leases = config.workdir / RUN_LEASES
    _end_abandoned_runs(tracking, leases)
    started = time.strftime("%Y%m%dT%H%M%S")
    tags = registry.window_tags(data.splits.describe()) | start.tags()
    run_id = runs.start_run(
        tracking,
        run_name=f"{config.pipeline.name}-{started}",
        tags={"stpipe.pipeline": config.pipeline.name, "stpipe.model": config.model.name} | tags,
    )
    failed = True
    with run_lease(leases, run_id):
        try:
            runs.log_config(
                tracking, run_id, params=config.flat_params(), toml_text=config.to_toml()
            )
            lineage = runs.log_lineage(tracking, run_id, data, name=f"{config.pipeline.name}-store")
            result = train(
                tuned,
                data,
                resume=resume,
                progress=progress,
                on_epoch_end=runs.epoch_logger(tracking, run_id, leads=data.spec.leads),
                init_from=start.state,
            )
            if result.refit:  # it trained through the validation window too
                tags |= registry.window_tags(data.splits.through_validation().describe())
            runs.log_system(tracking, run_id, result, tags=tags)
            test = evaluate_model(result.model, data, split="test", device=config.train.device)
            sample = sample_maps(result.model, data, split="test", device=config.train.device)
            with tempfile.TemporaryDirectory() as tmp:
                plots = _plots(test, sample, Path(tmp), metric=config.mlflow.metric)
                runs.log_evaluation(tracking, run_id, test, plots=plots)
            card = model_card(config, data.ds)
            logged = log_model(
                tracking, run_id, result.model, example=_example_batch(data), card=card
            )
            promotion, version = promote(
                tracking, config, data, logged=logged, run_id=run_id, tags=lineage | tags
            )
            failed = False
        finally:
            _end_quietly(tracking, run_id, failed=failed)
    outcome = TrainingOutcome(
        run_id=run_id, version=str(version.version), promotion=promotion, test=test
    )
    return outcome


def _end_abandoned_runs(tracking: Tracking, leases: Path) -> None:
    """Mark KILLED each run still RUNNING whose lease in ``leases`` no process holds."""
    for run_id in leased_runs(leases):
        if not abandoned(leases, run_id):
            continue
        with tracking_errors(tracking.uri, f"end run {run_id}, left running by a dead job"):
            try:
                status = tracking.client.get_run(run_id).info.status
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                status = None  # a run of another tracking store (the workdir's old one)
            if status == "RUNNING":
                tracking.client.set_terminated(run_id, status="KILLED")
                log.warning("run %s was left RUNNING by a job that died: marked KILLED", run_id)
        drop_lease(leases, run_id)


def _end_quietly(tracking: Tracking, run_id: str, *, failed: bool) -> None:
    try:
        runs.end_run(tracking, run_id, failed=failed)
    except TrackingError as exc:
        if not failed:
            raise
        log.warning("could not mark run %s as failed: %s", run_id, exc)


def _example_batch(data: DataContext) -> dict:
    """A batch of two validation patches, the input example of the logged model."""
    loader = make_split_loader(
        data, split="val", batch_size=2, shuffle=False, drop_last=False, max_batches=1
    )
    return next(iter(loader))


def _plots(
    evaluation: xr.Dataset, sample: SampleMaps, directory: Path, *, metric: str
) -> list[Path]:
    """Per lead: the RMSE and the promotion metric's table; and the sample maps."""
    names = dict.fromkeys(["rmse", per_lead_metric(metric, scores.headline(evaluation))])
    paths = [
        plot_rmse_vs_lead(evaluation, directory / f"{name}_vs_lead.png", metric=name)
        for name in names
    ]
    paths.append(plot_sample_maps(sample, directory / "sample_maps.png"))
    return paths


@_job
def run_evaluation(config: Config, *, json_path: str | Path | None = None) -> xr.Dataset:
    """The champion and the baselines on the test split (attr ``model_version``: the
    champion's); written as JSON to ``json_path``."""
    tracking = tracking_for(config)
    data = data_context(config)
    champion, version = _load_champion(tracking, config, data.ds)
    evaluation = evaluate_model(champion, data, split="test", device=config.train.device)
    evaluation.attrs["model_version"] = str(version.version)
    if json_path is not None:
        scores.to_json(evaluation, json_path)
    return evaluation


def _load_champion(
    tracking: Tracking, config: Config, ds: xr.Dataset
) -> tuple[RegisteredForecaster, ModelVersion]:
    """The champion as a forecaster and its registry entry; TrackingError naming both sides
    if the store ``ds`` cannot feed it."""
    version = registry.require_champion(tracking)
    model = load_model(tracking, f"models:/{tracking.model_name}/{version.version}")
    problems = model.card.store_mismatch(ds)
    if problems:
        raise TrackingError(
            f"champion {tracking.model_name} v{version.version} (run {version.run_id}) does "
            f"not fit the store {config.store_path}: {'; '.join(problems)} (model vs store); "
            "train a model on this store with `stpipe train CONFIG`, or set [mlflow] "
            "model_name to a model trained on it"
        )
    return model, version


@_job
def run_forecast(
    config: Config, *, init_time: str | np.datetime64 | None = None
) -> ForecastOutcome:
    """Forecast the whole grid with the champion from the latest complete input window (or
    the one ending at ``init_time``), write it to the forecast store, then verify past
    forecasts whose truth has arrived.

    The init time, MLflow and the forecast store are checked before the forecast is
    computed, so a bad ``init_time``, an unreachable server or store, or a store that cannot
    be written fails the job at once (one-line errors naming what and why).
    """
    wanted = None if init_time is None else _init_time(init_time)
    tracking = tracking_for(config)
    options = config.forecast.storage_options
    check_forecast_store(config.forecast_store, storage_options=options)
    ds = open_store(config.store_path)
    model, version = _load_champion(tracking, config, ds)
    card = model.card
    end = input_window_end(
        ds["time"].values, input_steps=card.input_steps, step_s=card.step_s, init_time=wanted
    )
    forecast = forecast_grid(model, ds, card=card, end=end, overlap=_overlap(config, card))
    forecast.attrs.update(
        forecast_attrs(
            model_name=tracking.model_name,
            model_version=str(version.version),
            run_id=version.run_id,
            store_digest=store_digest(config.store_path),
        ),
        title=f"{config.pipeline.name} forecasts",
        source=f"stpipe, MLflow model {tracking.model_name}",
    )
    written = write_forecast(
        forecast,
        config.forecast_store,
        storage_options=options,
        lock_timeout_s=config.forecast.lock_timeout_s,
    )
    outcome = ForecastOutcome(
        init_time=written.init_time,
        store=config.forecast_store,
        model_version=str(version.version),
        run_id=version.run_id,
        replaced=written.replaced,
        verified=tuple(verify_forecasts(config, tracking=tracking)),
    )
    return outcome


def _init_time(text: str | np.datetime64) -> np.datetime64:
    """``text`` as datetime64[ns] (a time zone is converted to UTC); ConfigError if it is
    not a date-time."""
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        stamp = pd.NaT
    if pd.isna(stamp):
        raise ConfigError(
            f"init time {str(text)!r} is not a date-time; give one like 2024-01-05T12:00"
        )
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return np.datetime64(stamp, "ns")


def _overlap(config: Config, card: ModelCard) -> tuple[int, int]:
    if config.forecast.overlap is not None:
        return config.forecast.overlap
    return ((card.patch_shape[0] - 2 * card.halo) // 4, (card.patch_shape[1] - 2 * card.halo) // 4)


@_job
def verify_forecasts(config: Config, *, tracking: Tracking | None = None) -> list[Verification]:
    """Score every stored forecast whose valid times are all in the store now and that was
    not scored before; log the scores to the run of the model that made it (the champion
    of that day), step = init time in seconds since 1970, and tag the run."""
    tracking = tracking or tracking_for(config)
    try:
        forecasts = open_forecasts(
            config.forecast_store, storage_options=config.forecast.storage_options
        )
    except MissingForecastStore:
        return []
    truth = open_store(config.store_path)
    step_s = int(truth.attrs["time_step_s"])
    done: dict[str, set[str]] = {}
    results = []
    for init in verifiable_inits(forecasts, truth["time"].values):
        one = forecasts.sel(init_time=init).load()
        run_id = str(one["run_id"].values)
        if run_id not in done:
            with tracking_errors(tracking.uri, f"read run {run_id}"):
                tags = tracking.client.get_run(run_id).data.tags
            done[run_id] = {k for k in tags if k.startswith(VERIFIED_TAG)}
        key = VERIFIED_TAG + pd.Timestamp(init).strftime("%Y%m%dT%H%M%S")
        if key in done[run_id]:
            continue
        result = verify_forecast(one, truth, step_s=step_s)
        seconds = int(pd.Timestamp(init).timestamp())
        mean_rmse = float(np.mean([v for k, v in result.scores.items() if k.startswith("rmse")]))
        runs.log_scores(
            tracking,
            run_id,
            scores={f"verify_{k}": v for k, v in result.scores.items()},
            step=seconds,
            timestamp_ms=seconds * 1000,
            tags={key: f"{mean_rmse:.6g}"},
        )
        done[run_id].add(key)
        results.append(result)
    return results


@_job
def compare_versions(config: Config, *, rescore: bool = False) -> VersionTable:
    """The registered versions of ``[mlflow] model_name``: run, date, data range, split
    windows, the promotion metric per lead on each run's test window, aliases and decisions;
    with ``rescore``, every version re-scored on the store's current test window beside the
    baselines there (:mod:`stpipe.app.rescore`)."""
    tracking = tracking_for(config)
    table = version_table(tracking, metric=config.mlflow.metric)
    return rescore_table(tracking, config, data_context(config), table) if rescore else table

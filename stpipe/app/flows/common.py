"""Tasks and helpers the flows share; each task wraps one stpipe function, nothing more.

Retries: tasks that do I/O retry on failures another attempt can cure (an ``OSError``, a
source file refused because it was still being copied, MLflow unreachable); bad config, a
locked or conflicting store fail at once. Results: the training task persists its outcome,
so a retry of the flow run reuses it instead of training again. Caching: the normalisation
statistics are cached under the store's digest, the variables and the split, persisted in
``<workdir>/prefect-results``, so a later run in another process reuses them as long as the
committed data is the same.

One flow run per pipeline at a time: :func:`pipeline_lock` (a file lock in the workdir;
ingest takes the store's own writer lock inside it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.tasks import Task
from prefect.utilities.hashing import hash_objects

from stpipe.app.config import Config, load_config
from stpipe.core.errors import SourceError, StoreError, TrackingError
from stpipe.io.store import store_lock

if TYPE_CHECKING:
    import xarray as xr

    from stpipe.app.jobs import ForecastOutcome, TrainingOutcome
    from stpipe.io.ingestion import IngestReport
    from stpipe.learn.stats import NormStats

Overrides = dict[str, Any]

RESULTS_DIR = "prefect-results"
RUN_LOCK_DIR = "flow-runs"
TRANSIENT_ERRORS = (OSError, TimeoutError, SourceError, TrackingError)


def pipeline_config(config_path: str | Path, overrides: Overrides | None) -> Config:
    """The config a flow run uses: the file plus the run's ``overrides`` (dotted keys)."""
    return load_config(config_path, overrides=overrides)


def results_storage(config: Config) -> Path:
    """Where the flows persist task results and cache records: ``<workdir>/prefect-results``."""
    return config.workdir / RESULTS_DIR


@contextlib.contextmanager
def pipeline_lock(config: Config, *, wait: bool) -> Iterator[None]:
    """Hold the pipeline's run lock: a second flow run waits (``wait``) or fails clearly.

    The lock is :func:`stpipe.io.store.store_lock` on ``<workdir>/flow-runs``, a lock apart
    from the store's own, which ingest takes for its writes inside the run.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store_lock(config.workdir / RUN_LOCK_DIR, wait=wait))
        except StoreError as exc:
            raise StoreError(
                f"pipeline {config.pipeline.name!r} is already running; this run stops "
                f"(pass wait_for_lock=True to queue behind it): {exc}"
            ) from None
        yield


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: only failures that another attempt can cure."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except Exception:
        return False
    return False


@task(
    name="ingest",
    retries=2,
    retry_delay_seconds=[60, 300],
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def ingest_task(config: Config) -> IngestReport:
    """New source files → store (:func:`stpipe.io.ingestion.ingest`).

    With ``[source] on_bad_file = "fail"`` a refused file fails the task with its reason
    (then retried: a file still being copied is complete a minute later); with ``"skip"``
    the report lists it and the run goes on.
    """
    from stpipe.io.ingestion import ingest

    report = ingest(config.ingest_job, progress=False)
    get_run_logger().info("%s", report.summary())
    if report.refused and config.source.on_bad_file == "fail":
        path, reason = report.refused[0]
        raise SourceError(path, reason)
    return report


def _statistics_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    from stpipe.io.store import store_digest

    config: Config = parameters["config"]
    return "stats-" + hash_objects(
        store_digest(config.store_path),
        config.input_variables,
        config.split.model_dump(mode="json"),
    )


@task(
    name="normalisation-statistics",
    cache_key_fn=_statistics_key,
    persist_result=True,
    retries=1,
    retry_delay_seconds=60,
    retry_condition_fn=is_transient,
)
def statistics_task(config: Config) -> NormStats:
    """Train-split statistics of the input variables (:func:`stpipe.learn.stats.compute_stats`).

    Cached by store digest, variables and split: another run on the same committed data
    (a retry, a re-run, tomorrow's run if nothing arrived) gets them without recomputing.
    Call it through :func:`in_workdir` so the cache lives in the pipeline's workdir.
    """
    from stpipe.learn.stats import compute_stats

    stats = compute_stats(
        config.store_path,
        variables=config.input_variables,
        split=config.split,
        dask=config.dask,
    )
    get_run_logger().info(
        "statistics of %s over %s: %s",
        ", ".join(stats.variables),
        " … ".join(stats.time_range),
        ", ".join(f"{v} {stats.mean[v]:.4g} ± {stats.std[v]:.4g}" for v in stats.variables),
    )
    return stats


def in_workdir(task_: Task[Any, Any], config: Config) -> Task[Any, Any]:
    """``task_`` persisting its result (and cache record) under the pipeline's workdir."""
    return task_.with_options(result_storage=results_storage(config))


@task(
    name="train-evaluate-promote",
    retries=1,
    retry_delay_seconds=300,
    retry_condition_fn=is_transient,
    persist_result=True,
)
def training_task(config: Config) -> TrainingOutcome:
    """Train, evaluate on the test split, log, register, promote (:func:`stpipe.app.jobs.run_training`).

    The outcome is persisted (call through :func:`in_workdir`): a retried flow run reuses it
    instead of training again. A retry after a failure resumes from the last checkpoint.
    """
    from stpipe.app.jobs import run_training

    outcome = run_training(config, progress=False)
    get_run_logger().info("%s", outcome.summary())
    return outcome


@task(
    name="evaluate-champion",
    retries=2,
    retry_delay_seconds=[30, 120],
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def evaluation_task(config: Config) -> xr.Dataset:
    """The champion and the baselines on the test split (:func:`stpipe.app.jobs.run_evaluation`)."""
    from stpipe.app.jobs import run_evaluation

    return run_evaluation(config)


@task(
    name="forecast",
    retries=2,
    retry_delay_seconds=[30, 120],
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def forecast_task(config: Config, init_time: str | None = None) -> ForecastOutcome:
    """The champion's forecast → forecast store, then verification (:func:`stpipe.app.jobs.run_forecast`).

    Re-writing an init time replaces it, so a retry after a failed write is safe.
    """
    from stpipe.app.jobs import run_forecast

    outcome = run_forecast(config, init_time=init_time)
    get_run_logger().info("%s", outcome.summary())
    return outcome

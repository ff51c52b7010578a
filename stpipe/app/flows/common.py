"""Tasks and helpers the flows share; each task wraps one stpipe function, nothing more.

Retries: tasks that do I/O retry on failures another attempt can cure (an ``OSError``, a
source file refused because it was still being copied, MLflow unreachable); bad config, a
locked or conflicting store fail at once.

No task persists a Prefect result or looks one up: Prefect reads a stored record with the
serializer the record names, so a record planted in the results folder saying ``pickle``
would run its payload. What is worth keeping is kept as JSON by stpipe itself: the
normalisation statistics by :func:`stpipe.learn.stats.compute_stats` (under the store's
digest, the variables and the split, beside the store, so another run on the same
committed data reuses them), and the training outcome of a flow run under
``<workdir>/flow-outcomes/<flow run id>/`` (so a retried flow run reuses it instead of
training again).

One flow run per pipeline at a time: :func:`pipeline_lock` holds a file lock in the workdir
(one host, or a shared filesystem) and a slot of the Prefect global concurrency limit
``stpipe-<pipeline name>`` (every host reporting to the same Prefect server); a second run
waits for both, up to ``[pipeline] lock_timeout_s``. Ingest takes the store's own writer
lock inside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, TaskRun
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.states import State
from prefect.tasks import Task

from stpipe.app.config import Config, load_config
from stpipe.core.errors import SourceError, StoreError, TrackingError
from stpipe.io.locks import LockTimeout, file_lock
from stpipe.learn import scores

if TYPE_CHECKING:
    import xarray as xr

    from stpipe.app.jobs import ForecastOutcome, TrainingOutcome
    from stpipe.io.ingestion import IngestReport
    from stpipe.learn.stats import NormStats

Overrides = dict[str, Any]

OUTCOMES_DIR = "flow-outcomes"
OUTCOME_FILE = "training.json"
TEST_FILE = "test.json"
OUTCOME_MAX_AGE_S = 30 * 86400
PIPELINE_LOCK = "pipeline.lock"
# A run that may not wait still gives the Prefect server this long to grant a free slot: an
# ephemeral server on 2 busy cores once took over 1 s, and the run reported itself blocked.
NO_WAIT_S = 5.0
TRANSIENT_ERRORS = (OSError, TimeoutError, SourceError, TrackingError)


def pipeline_config(config_path: str | Path, overrides: Overrides | None) -> Config:
    """The config a flow run uses: the file plus the run's ``overrides`` (dotted keys)."""
    return load_config(config_path, overrides=overrides)


@contextlib.contextmanager
def pipeline_lock(config: Config, *, wait: bool) -> Iterator[None]:
    """Hold the pipeline's run lock: a second flow run waits (``wait``, up to ``[pipeline]
    lock_timeout_s``) or fails at once; either way with a one-line StoreError.

    Two locks, taken in this order by every run so that none waits in a cycle:
    ``<workdir>/pipeline.lock`` (a ``flock``: released by the kernel if the holder dies;
    serialises runs on one host, with or without a Prefect server, and names the holder),
    then a slot of the Prefect global concurrency limit :func:`concurrency_limit_name`
    (created with limit 1 if missing; its lease lapses if the holder dies), which serialises
    runs on every host reporting to the same Prefect server.
    """
    timeout_s = config.pipeline.lock_timeout_s if wait else 0.0
    started = time.monotonic()
    deadline = started + timeout_s
    limit = concurrency_limit_name(config.pipeline.name)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(config.workdir / PIPELINE_LOCK, timeout_s=timeout_s))
        except LockTimeout as exc:
            raise StoreError(_busy(config, f"held by {exc.holder}", wait, started)) from None
        _ensure_limit(limit)
        try:
            stack.enter_context(
                concurrency(
                    limit,
                    timeout_seconds=max(deadline - time.monotonic(), NO_WAIT_S),
                    strict=True,
                    holder=_lease_holder(),
                    # A night outlives a brief API outage: a failed lease renewal is logged.
                    raise_on_lease_renewal_failure=False,
                )
            )
        except TimeoutError:
            holder = f"Prefect concurrency limit {limit!r} has no free slot"
            raise StoreError(_busy(config, holder, wait, started)) from None
        yield


def concurrency_limit_name(pipeline: str) -> str:
    """The Prefect global concurrency limit whose one slot a flow run of ``pipeline`` holds."""
    return f"stpipe-{pipeline}"


def _busy(config: Config, holder: str, waited: bool, started: float) -> str:
    name = config.pipeline.name
    if waited:
        return (
            f"pipeline {name!r} is still running ({holder}) after this run waited "
            f"{time.monotonic() - started:.1f} s for it ([pipeline] lock_timeout_s = "
            f"{config.pipeline.lock_timeout_s:g}); this run stops"
        )
    return (
        f"pipeline {name!r} is already running; this run stops (`stpipe nightly` without "
        f"--no-wait, or the flow parameter wait_for_lock=True, queues behind it): {holder}"
    )


def _ensure_limit(limit: str) -> None:
    """Create the global concurrency limit ``limit`` with one slot unless it exists (an
    operator may have changed or deactivated it: that is kept)."""
    with get_client(sync_client=True) as client:
        try:  # read first: a refused create makes the server log a traceback
            client.read_global_concurrency_limit_by_name(limit)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):  # another run created it meanwhile
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=limit, limit=1)
            )


def _lease_holder() -> ConcurrencyLeaseHolder | None:
    """The flow run that holds the slot (shown by Prefect); None outside a flow run."""
    run = FlowRunContext.get()
    if run is None or run.flow_run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=run.flow_run.id)


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


@task(
    name="normalisation-statistics",
    retries=1,
    retry_delay_seconds=60,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def statistics_task(config: Config) -> NormStats:
    """Train-split statistics of the input variables (:func:`stpipe.learn.stats.compute_stats`).

    Cached as JSON beside the store by digest, variables and split: another run on the same
    committed data (a retry, a re-run, tomorrow's run if nothing arrived) reads them
    without recomputing.
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


@task(
    name="train-evaluate-promote",
    retries=1,
    retry_delay_seconds=300,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def training_task(config: Config) -> TrainingOutcome:
    """Train, evaluate on the test split, log, register, promote (:func:`stpipe.app.jobs.run_training`).

    The outcome is kept as JSON under ``<workdir>/flow-outcomes/<flow run id>/``: a retried
    flow run reuses it instead of training again. A retry after a failure resumes from the
    last checkpoint.
    """
    from stpipe.app.jobs import run_training

    context = TaskRunContext.get()
    flow_run_id = context.task_run.flow_run_id if context is not None else None
    record = None if flow_run_id is None else config.workdir / OUTCOMES_DIR / str(flow_run_id)
    outcome = None if record is None else read_outcome(record)
    if outcome is not None:
        get_run_logger().info("reusing the outcome of this flow run in %s", record)
    else:
        outcome = run_training(config, progress=False)
        if record is not None:
            write_outcome(record, outcome)
    get_run_logger().info("%s", outcome.summary())
    return outcome


def write_outcome(directory: Path, outcome: TrainingOutcome) -> None:
    """``outcome`` as JSON in ``directory`` (the test evaluation in its own file, written
    first, so a record is complete once :data:`OUTCOME_FILE` exists); records older than
    :data:`OUTCOME_MAX_AGE_S` beside it are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    scores.to_json(outcome.test, directory / TEST_FILE)
    raw = {"run_id": outcome.run_id, "version": outcome.version}
    tmp = directory / f"{OUTCOME_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(raw | {"promotion": asdict(outcome.promotion)}, indent=1))
    os.replace(tmp, directory / OUTCOME_FILE)
    for old in directory.parent.iterdir():
        if time.time() - old.stat().st_mtime > OUTCOME_MAX_AGE_S:
            shutil.rmtree(old, ignore_errors=True)


def read_outcome(directory: Path) -> TrainingOutcome | None:
    """The outcome written by :func:`write_outcome`, or None if there is none or it does
    not read as one (plain JSON, never unpickled; a damaged record means training again)."""
    from stpipe.app.jobs import TrainingOutcome
    from stpipe.tracking.registry import CHALLENGER, CHAMPION, Promotion

    path = directory / OUTCOME_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        promotion = Promotion(**raw["promotion"])
        if promotion.alias not in (CHAMPION, CHALLENGER):
            raise ValueError(f"alias {promotion.alias!r}")
        return TrainingOutcome(
            run_id=str(raw["run_id"]),
            version=str(raw["version"]),
            promotion=promotion,
            test=scores.from_json(directory / TEST_FILE),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        get_run_logger().warning("%s is not a training outcome (%s); training again", path, exc)
        return None


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

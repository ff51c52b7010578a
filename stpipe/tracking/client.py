"""Reaching MLflow: a pipeline's tracking URI, retries, errors, and no leaked global state.

Default backend: SQLite in the workdir (``sqlite:///<workdir>/mlflow.db``, artifacts under
``<workdir>/mlartifacts``; MLflow 3 deprecates its file store); ``[mlflow] tracking_uri``
points at a server instead, which also holds the registry, or at another database. New
experiments keep their artifacts (:func:`artifact_root`) under ``[mlflow]
artifact_location``, else beside a SQLite database's file, never in the directory a job
happens to start in (MLflow's ``./mlruns``).

The default layout moves and copies with its workdir (``mv``, ``cp -a``): MLflow records
absolute artifact locations (of the experiment, each run, logged model and model version),
so :func:`connect` rewrites those under another ``.../mlartifacts`` to this workdir's when
it opens a workdir that has moved, or a copy (which then writes into its own artifacts, not
the original's).

A job bounds MLflow's own HTTP retries by ``[mlflow] retries`` and ``retry_backoff_s`` for
its duration (:func:`request_retries`); MLflow's default retries a request for minutes.

Everything goes through one ``MlflowClient(tracking_uri=..., registry_uri=...)`` per
pipeline. The few MLflow calls that exist only as process-wide ("fluent") functions, such as
``mlflow.pytorch.log_model``, run inside :func:`fluent_scope`, which sets the URIs under a
lock and restores them afterwards, so two pipelines in one process (Prefect runs flows in
threads) never see each other's server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import mlflow
import requests
import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import Experiment
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlLoggedModel, SqlRun

from stpipe.core.errors import TrackingError
from stpipe.tracking.settings import MlflowSection, sqlite_path

log = logging.getLogger(__name__)
# MLflow logs the traceback of every SQL error it then raises; stpipe reports the error
# itself, in one line (tracking_errors), so a failed write shows no page of SQLAlchemy text.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

T = TypeVar("T")

PROBE_TIMEOUT_S = 5.0
MAX_HTTP_RETRIES = 10  # the most MLflow accepts (_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT)
_RETRY_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
ARTIFACTS_DIR = "mlartifacts"
# Where MLflow's SQL schema keeps artifact locations: (table, column).
_ARTIFACT_COLUMNS = (
    (SqlExperiment, "artifact_location"),
    (SqlRun, "artifact_uri"),
    (SqlLoggedModel, "artifact_location"),
    (SqlModelVersion, "source"),
    (SqlModelVersion, "storage_location"),
)
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_SQLITE_FULL = "database or disk is full"
_fluent_lock = threading.RLock()
_retry_lock = threading.Lock()
_retry_scopes: list[dict[str, str]] = []  # the open scopes' values, oldest first
_retry_env_before: dict[str, str | None] = {}


@dataclass(frozen=True)
class Tracking:
    """A pipeline's connection: the URI, a client bound to it, its experiment and model."""

    uri: str
    client: MlflowClient
    experiment_id: str
    model_name: str


def tracking_uri(settings: MlflowSection, workdir: Path) -> str:
    """``[mlflow] tracking_uri``, or ``sqlite:///<workdir>/mlflow.db``."""
    return settings.tracking_uri or f"sqlite:///{workdir.resolve() / 'mlflow.db'}"


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def connect(
    settings: MlflowSection, *, workdir: Path, experiment: str, model_name: str
) -> Tracking:
    """Reach the tracking backend of ``[mlflow]`` and get (or create) ``experiment``.

    Without a ``tracking_uri`` the backend is SQLite in ``workdir``, its artifact
    locations rewritten if the workdir was moved or copied (module docstring);
    ``model_name`` is the registered model the pipeline's versions go to.

    A server is probed (``GET /health``) up to ``[mlflow] retries`` times, waiting
    ``retry_backoff_s`` · 2^k between attempts; then :class:`TrackingError`. Nothing is
    written before the server has answered.
    """
    uri = tracking_uri(settings, workdir)
    if _is_remote(uri):
        with_retries(
            lambda: _probe(uri),
            what=f"reach the MLflow server {uri}",
            attempts=settings.retries,
            backoff_s=settings.retry_backoff_s,
        )
    else:
        workdir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = experiment
    with tracking_errors(uri, f"open experiment {name!r}"):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = artifact_root(settings, workdir, name)
            experiment_id = client.create_experiment(name, artifact_location=artifacts)
        elif experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"{uri}: experiment {name!r} is deleted; restore it (`mlflow experiments "
                "restore`) or set [mlflow] experiment to another name"
            )
        else:
            experiment_id = experiment.experiment_id
            if not settings.tracking_uri:
                _follow_workdir(uri, workdir, experiment)
    return Tracking(uri=uri, client=client, experiment_id=experiment_id, model_name=model_name)


def artifact_root(settings: MlflowSection, workdir: Path, experiment: str) -> str | None:
    """Artifact root of a new experiment: under ``[mlflow] artifact_location`` when set, else
    beside the SQLite database (the workdir's, or the file of a ``sqlite:`` URI); None for
    a server (its ``--artifacts-destination``) and the file store (its own folder)."""
    if settings.artifact_location:
        return f"{settings.artifact_location.rstrip('/')}/{experiment}"
    if not settings.tracking_uri:
        return _local_artifacts(workdir, experiment)
    database = sqlite_path(settings.tracking_uri)
    return None if database is None else _local_artifacts(Path(database).parent, experiment)


def _local_artifacts(folder: Path, experiment: str) -> str:
    """Artifact root of a new experiment kept on this machine:
    ``<folder>/mlartifacts/<experiment>``, ``folder`` the workdir or the SQLite file's."""
    return (folder.resolve() / ARTIFACTS_DIR / experiment).as_uri()


def _follow_workdir(uri: str, workdir: Path, experiment: Experiment) -> None:
    """Point the artifact locations of the SQLite store ``uri`` at ``workdir`` if they are
    under the ``mlartifacts`` folder of another (a moved or copied workdir).

    The old folder is read off ``experiment``'s location; every location under it (of any
    experiment, run, logged model or model version in the store) is rewritten in one
    transaction. Locations elsewhere are left alone.
    """
    root = (workdir.resolve() / ARTIFACTS_DIR).as_uri()
    expected = _local_artifacts(workdir, experiment.name)
    tail = expected.removeprefix(root)
    location = experiment.artifact_location or ""
    old_root = location.removesuffix(tail)
    if location == expected or old_root == location or not old_root.endswith(f"/{ARTIFACTS_DIR}"):
        return
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            rewritten = 0
            for model, name in _ARTIFACT_COLUMNS:
                column = model.__table__.c[name]
                under_old = sqlalchemy.func.substr(column, 1, len(old_root) + 1) == f"{old_root}/"
                rest = sqlalchemy.func.substr(column, len(old_root) + 1)
                result = connection.execute(
                    sqlalchemy.update(model.__table__)
                    .where(under_old)
                    .values({name: sqlalchemy.literal(root).concat(rest)})
                )
                rewritten += result.rowcount
    finally:
        engine.dispose()
    log.info(
        "the workdir moved from %s: %d artifact locations now under %s", old_root, rewritten, root
    )


def _probe(uri: str) -> None:
    response = requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
    response.raise_for_status()


def with_retries(call: Callable[[], T], *, what: str, attempts: int, backoff_s: float) -> T:
    """``call()``, retried on connection errors with exponential backoff; then TrackingError."""
    for attempt in range(attempts):
        try:
            return call()
        except (requests.RequestException, OSError, MlflowException) as exc:
            if attempt == attempts - 1:
                raise TrackingError(
                    f"cannot {what} after {attempts} attempts: {_short(exc)}; is the server "
                    "running and [mlflow] tracking_uri right?"
                ) from exc
            wait = backoff_s * 2**attempt
            log.warning("cannot %s (%s); retrying in %.1f s", what, _short(exc), wait)
            time.sleep(wait)
    raise TrackingError(f"cannot {what}: [mlflow] retries is {attempts}, must be at least 1")


@contextlib.contextmanager
def tracking_errors(uri: str, what: str) -> Iterator[None]:
    """Turn MLflow, connection and file-system failures (artifacts are files under a local
    backend) into a TrackingError naming ``what`` and ``uri``."""
    try:
        yield
    except (MlflowException, requests.RequestException, OSError) as exc:
        raise TrackingError(f"{uri}: cannot {what}: {_short(exc)}") from exc


@contextlib.contextmanager
def fluent_scope(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``uri`` for the block.

    Serialised by a lock; on exit the URIs and their environment variables are back exactly
    as they were. Through MLflow's public API only: the environment variables
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``) when they decide the URIs; if code
    in this process pinned a URI with ``mlflow.set_tracking_uri`` (or
    ``set_registry_uri``), which outranks the variable, it is pinned to ``uri`` for the
    block and back to its old value after.
    """
    with _fluent_lock:
        saved_env = {name: os.environ.get(name) for name in _URI_ENV}
        pinned_tracking = pinned_registry = None
        try:
            os.environ.update(dict.fromkeys(_URI_ENV, uri))
            if mlflow.get_tracking_uri() != uri:
                pinned_tracking = mlflow.get_tracking_uri()
                mlflow.set_tracking_uri(uri)
            if mlflow.get_registry_uri() != uri:
                pinned_registry = mlflow.get_registry_uri()
                mlflow.set_registry_uri(uri)
            yield
        finally:
            if pinned_tracking is not None:
                mlflow.set_tracking_uri(pinned_tracking)
            if pinned_registry is not None:
                mlflow.set_registry_uri(pinned_registry)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def http_retry_env(settings: MlflowSection) -> dict[str, str]:
    """MLflow's HTTP retry variables for ``[mlflow] retries`` attempts per request and
    ``retry_backoff_s``: MLflow waits 0, 2f, 4f, … s between attempts for a whole-second
    factor f, so f is ``retry_backoff_s / 2`` rounded (at most 10 retries)."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(min(settings.retries - 1, MAX_HTTP_RETRIES)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(int(settings.retry_backoff_s / 2 + 0.5)),
    }


@contextlib.contextmanager
def request_retries(settings: MlflowSection) -> Iterator[None]:
    """Bound MLflow's retries of each HTTP request by ``settings`` for the block.

    MLflow reads them from process-wide environment variables (:func:`http_retry_env`):
    while scopes overlap (jobs in threads) the newest open one applies; when the last one
    closes the variables are back exactly as they were.
    """
    values = http_retry_env(settings)
    with _retry_lock:
        if not _retry_scopes:
            _retry_env_before.update({name: os.environ.get(name) for name in _RETRY_ENV})
        _retry_scopes.append(values)
        os.environ.update(values)
    try:
        yield
    finally:
        with _retry_lock:
            _retry_scopes.remove(values)
            restore = _retry_scopes[-1] if _retry_scopes else _retry_env_before
            for name in _RETRY_ENV:
                value = restore.get(name)
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _short(exc: BaseException) -> str:
    """One line for ``exc``: the operating system's or SQLite's reason beneath MLflow's and
    SQLAlchemy's wrapping when there is one (what to fix: a full disk, a permission), else
    the first line of ``exc`` itself."""
    reason = next(filter(None, map(_os_reason, _chain(exc))), None)
    if reason is not None:
        return reason
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _os_reason(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{os.strerror(exc.errno).lower()}"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).strip()
        # SQLITE_FULL: the file cannot grow (a full disk, or a file size limit)
        return (
            "no space left on device (SQLite: database or disk is full)"
            if text == _SQLITE_FULL
            else f"SQLite: {text}"
        )
    return None

"""The ``[mlflow]`` section: where runs and models are tracked and how to reach it."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, PositiveInt, field_validator, model_validator

from stpipe.core.settings import Settings

# The SQLAlchemy backends MLflow tracks to (mlflow.store.db.db_types.DATABASE_ENGINES; not
# imported: importing mlflow takes seconds and every command loads the config), each with
# an optional driver (``postgresql+psycopg2``).
DATABASE_ENGINES = ("postgresql", "mysql", "sqlite", "mssql")
_DATABASE_SCHEME = re.compile(rf"(?:{'|'.join(DATABASE_ENGINES)})(?:\+\w+)?")
ACCEPTED_URIS = (
    "leave it empty (SQLite in the workdir) or give an absolute path, file:///PATH, "
    "sqlite:////PATH.db, postgresql|mysql|mssql://HOST/DB, http(s)://HOST[:PORT] or "
    "databricks[://PROFILE]"
)
_CWD = "would depend on the directory the job starts in"


def _server(parts: SplitResult) -> str | None:
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        return "has a port that is not a number"
    return None if parts.hostname else "names no host"


def _file(parts: SplitResult) -> str | None:
    if parts.netloc not in ("", "localhost"):
        return f"names the host {parts.netloc!r}; file:// URIs are local"
    return None if parts.path.startswith("/") else f"is a relative path, which {_CWD}"


def _database(parts: SplitResult) -> str | None:
    if not parts.scheme.startswith("sqlite"):
        return _server(parts) or (None if parts.path.strip("/") else "names no database")
    if not parts.path.strip("/"):
        return "is an in-memory database, lost when the process ends"
    return None if parts.path.startswith("//") else f"is a relative path, which {_CWD}"


def _databricks(parts: SplitResult) -> str | None:
    return None if parts.netloc else "names no profile"


# URI scheme → the problem of a URI of that scheme (None: MLflow can track there).
_SCHEMES: dict[str, Callable[[SplitResult], str | None]] = {
    "http": _server,
    "https": _server,
    "file": _file,
    "databricks": _databricks,
}


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow cannot keep a pipeline's runs at ``uri`` (None: it can).

    Accepted are the backends of MLflow 3 that hold runs and the registry: SQLite (the
    default, in the workdir), other SQL databases, a server, Databricks and the deprecated
    file store; local paths must be absolute, as a job may start in any directory.
    """
    if not uri or uri == "databricks":
        return None
    if uri != uri.strip():
        return "has leading or trailing spaces"
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme:
        if uri.startswith("/"):
            return None
        return f"is neither a URI nor an absolute path (a relative path {_CWD})"
    if _DATABASE_SCHEME.fullmatch(scheme):
        return _database(parts)
    if scheme not in _SCHEMES:
        return f"has the scheme {scheme}:, where MLflow cannot keep runs"
    return _SCHEMES[scheme](parts)


def sqlite_path(uri: str) -> str | None:
    """The database file of a ``sqlite:////PATH`` tracking URI ("/PATH"), else None."""
    parts = urlsplit(uri)
    if not parts.scheme.lower().startswith("sqlite") or not parts.path.startswith("//"):
        return None
    return parts.path[1:]


def is_other_database(uri: str) -> bool:
    """Whether ``uri`` is a SQL database other than SQLite (no folder of its own)."""
    scheme = urlsplit(uri).scheme.lower()
    return bool(_DATABASE_SCHEME.fullmatch(scheme)) and not scheme.startswith("sqlite")


class MlflowSection(Settings):
    tracking_uri: str = Field(default="", description="Empty: sqlite in workdir.")
    artifact_location: str = Field(
        default="",
        description="Where new experiments keep their artifacts (the logged models), e.g. "
        "s3://bucket/stpipe or an absolute shared path; each experiment gets a folder of its "
        "name there. Empty: <workdir>/mlartifacts, beside a SQLite database's file, or a "
        "server's own; needed with any other database (MLflow would write under ./mlruns "
        "of whatever directory a job starts in).",
    )
    experiment: str = ""
    model_name: str = ""
    metric: str = Field(
        default="rmse_wmean",
        description="Promotion metric, lower is better: 'rmse_wmean' (latitude-weighted RMSE "
        "on lat/lon grids, RMSE elsewhere) or '<rmse|mae|rmse_lat_weighted|mse_openstl|"
        "mae_openstl>_mean', each the mean over leads on the validation split.",
    )
    baseline_tolerance: float = Field(
        default=0.02,
        ge=0,
        description="Promotion refuses a candidate worse than the best baseline (persistence, "
        "climatology, persistence + climatological change) at any lead on the validation "
        "window by more than this fraction of that baseline's error ('inf': never).",
    )
    retries: PositiveInt = Field(
        default=4,
        description="Attempts to reach a tracking server before a job starts, and per "
        "MLflow request during a job (MLflow's own default retries for minutes).",
    )
    retry_backoff_s: float = Field(
        default=1.0, ge=0, description="Wait before the 2nd attempt; doubles each time."
    )

    @field_validator("tracking_uri")
    @classmethod
    def _trackable(cls, uri: str) -> str:
        problem = tracking_uri_problem(uri)
        if problem is not None:
            raise ValueError(f"{uri!r} {problem}; {ACCEPTED_URIS}")
        return uri

    @field_validator("artifact_location")
    @classmethod
    def _absolute(cls, location: str) -> str:
        if location and not (location.startswith("/") or urlsplit(location).netloc):
            raise ValueError(
                f"{location!r} is neither an absolute path nor a URI with a host or bucket "
                f"(a relative path {_CWD})"
            )
        return location

    @model_validator(mode="after")
    def _artifacts_have_a_home(self) -> MlflowSection:
        if is_other_database(self.tracking_uri) and not self.artifact_location:
            raise ValueError(
                f"artifact_location is needed with the database {self.tracking_uri!r}: "
                "without it MLflow writes the models under ./mlruns of whatever directory "
                "a job starts in; give a store every machine reads (s3://BUCKET/PREFIX or "
                "an absolute shared path)"
            )
        return self

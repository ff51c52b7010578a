"""``[mlflow]`` (stpipe.tracking.settings): a tracking URI where MLflow cannot keep runs is
refused when the config loads, in one line naming the key, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.store.db.db_types import DATABASE_ENGINES as MLFLOW_DATABASE_ENGINES

from stpipe.app.cli import main
from stpipe.app.config import load_config
from stpipe.core.errors import ConfigError
from stpipe.tracking.settings import ACCEPTED_URIS, DATABASE_ENGINES, is_other_database
from tests.app.test_config import MINIMAL, write

CWD = "would depend on the directory the job starts in"


def with_uri(tmp_path: Path, uri: str) -> Path:
    return write(tmp_path, MINIMAL + f"\n[mlflow]\ntracking_uri = '{uri}'\n")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("ftp://host/runs", "has the scheme ftp:, where MLflow cannot keep runs"),
        ("localhost:5000", "has the scheme localhost:, where MLflow cannot keep runs"),
        ("127.0.0.1:5000", f"is neither a URI nor an absolute path (a relative path {CWD})"),
        ("not a uri", f"is neither a URI nor an absolute path (a relative path {CWD})"),
        ("http://", "names no host"),
        ("http://host:port", "has a port that is not a number"),
        (" http://host:5000", "has leading or trailing spaces"),
        ("sqlite://", "is an in-memory database, lost when the process ends"),
        ("sqlite:///mlflow.db", f"is a relative path, which {CWD}"),
        ("postgresql://host", "names no database"),
        ("mysql:///runs", "names no host"),
        ("file:mlruns", f"is a relative path, which {CWD}"),
        ("file://host/mlruns", "names the host 'host'; file:// URIs are local"),
        ("databricks://", "names no profile"),
    ],
)
def test_a_tracking_uri_mlflow_cannot_keep_runs_at_is_refused_in_one_line(
    tmp_path: Path, uri: str, problem: str
) -> None:
    path = with_uri(tmp_path, uri)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: [mlflow] tracking_uri: {uri!r} {problem}; {ACCEPTED_URIS}"


def test_stpipe_train_with_an_ftp_tracking_uri_stops_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = with_uri(tmp_path, "ftp://host/runs")
    before = sorted(tmp_path.rglob("*"))
    assert main(["train", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"stpipe train: error: {path}: [mlflow] tracking_uri: 'ftp://host/runs' has the scheme "
        f"ftp:, where MLflow cannot keep runs; {ACCEPTED_URIS}"
    ]
    assert sorted(tmp_path.rglob("*")) == before
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org/team",
        "sqlite:////var/lib/stpipe/mlflow.db",
        "sqlite+pysqlite:////var/lib/stpipe/mlflow.db",
        "postgresql://user:secret@db.example.org:5432/mlflow",
        "postgresql+psycopg2://db.example.org/mlflow",
        "mysql://db.example.org/mlflow",
        "mssql+pyodbc://db.example.org/mlflow",
        "/var/lib/stpipe/mlruns",
        "file:///var/lib/stpipe/mlruns",
        "file://localhost/var/lib/stpipe/mlruns",
        "databricks",
        "databricks://team-profile",
    ],
)
def test_the_backends_mlflow_tracks_to_load(tmp_path: Path, uri: str) -> None:
    artifacts = "\nartifact_location = '/srv/mlartifacts'\n" if is_other_database(uri) else ""
    path = write(tmp_path, MINIMAL + f"\n[mlflow]\ntracking_uri = '{uri}'{artifacts}\n")
    assert load_config(path).mlflow.tracking_uri == uri


@pytest.mark.parametrize(
    "uri", ["postgresql://db.example.org/mlflow", "mysql+pymysql://db.example.org/mlflow"]
)
def test_another_database_needs_an_artifact_location_every_machine_reads(
    tmp_path: Path, uri: str
) -> None:
    path = with_uri(tmp_path, uri)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{path}: [mlflow]: artifact_location is needed with the database {uri!r}: "
    )
    assert "\n" not in str(info.value)
    located = write(
        tmp_path, MINIMAL + f"\n[mlflow]\ntracking_uri = '{uri}'\nartifact_location = 's3://b/p'\n"
    )
    assert load_config(located).mlflow.artifact_location == "s3://b/p"


def test_a_relative_artifact_location_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[mlflow]\nartifact_location = 'mlartifacts'\n")
    with pytest.raises(ConfigError, match="artifact_location: 'mlartifacts' is neither an abs"):
        load_config(path)


def test_the_database_schemes_are_mlflows() -> None:
    assert sorted(DATABASE_ENGINES) == sorted(MLFLOW_DATABASE_ENGINES)

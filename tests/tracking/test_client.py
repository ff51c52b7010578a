"""Reaching MLflow (stpipe.tracking.client): the tracking URI, process-wide URIs left as they
were, retries against an unreachable server, errors shortened to their cause."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from stpipe.app.jobs import data_context, tracking_for
from stpipe.core.errors import TrackingError
from stpipe.learn.context import check_split_windows
from stpipe.tracking.client import Tracking, fluent_scope, tracking_errors, tracking_uri
from tests.app.test_jobs import pipeline
from tests.tracking.conftest import make_config

REPO = Path(__file__).resolve().parents[2]


def test_default_backend_is_sqlite_in_the_workdir_with_artifacts_beside_it(
    tracking: Tracking, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    assert tracking_uri(config.mlflow, config.workdir) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    remote = make_config(tmp_path, mlflow={"tracking_uri": "http://127.0.0.1:5000"})
    assert tracking_uri(remote.mlflow, remote.workdir) == "http://127.0.0.1:5000"
    experiment = tracking.client.get_experiment(tracking.experiment_id)
    assert experiment.name == "unit"
    assert experiment.artifact_location.endswith("/mlartifacts/unit")


def test_artifacts_stay_beside_a_given_sqlite_database_whatever_directory_a_job_starts_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "shared" / "mlflow.db"
    database.parent.mkdir()
    started_in = tmp_path / "cron"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    config = make_config(tmp_path / "work", mlflow={"tracking_uri": f"sqlite:///{database}"})
    tracking = tracking_for(config)
    run = tracking.client.create_run(tracking.experiment_id)
    tracking.client.log_text(run.info.run_id, "kept", "note.txt")

    expected = (database.parent / "mlartifacts" / "unit").as_uri()
    assert tracking.client.get_experiment(tracking.experiment_id).artifact_location == expected
    assert (database.parent / "mlartifacts" / "unit" / run.info.run_id / "artifacts").is_dir()
    assert list(started_in.iterdir()) == [], "nothing under ./mlruns of the start directory"


def test_artifacts_go_under_artifact_location_when_it_is_set(tmp_path: Path) -> None:
    store = tmp_path / "bucket"
    config = make_config(
        tmp_path / "work",
        mlflow={
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": str(store),
        },
    )
    tracking = tracking_for(config)
    experiment = tracking.client.get_experiment(tracking.experiment_id)
    assert experiment.artifact_location == f"{store}/unit"


def test_fluent_scope_leaves_the_process_wide_uris_as_they_were(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with fluent_scope(tracking.uri):
        assert mlflow.get_tracking_uri() == tracking.uri
        assert mlflow.get_registry_uri() == tracking.uri
    assert mlflow.get_tracking_uri() == elsewhere
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_fails_after_retries_and_writes_nothing(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = make_config(
        tmp_path / "work", mlflow={"tracking_uri": url, "retries": 3, "retry_backoff_s": 0.01}
    )
    with pytest.raises(
        TrackingError, match=rf"cannot reach the MLflow server {url} after 3 attempts"
    ):
        tracking_for(config)
    assert not (tmp_path / "work").exists()


def test_fluent_scope_follows_the_environment_again_afterwards(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'before.db'}")
    with fluent_scope(tracking.uri):
        pass
    later = f"sqlite:///{tmp_path / 'later.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", later)
    assert mlflow.get_tracking_uri() == later, "the scope left no URI pinned"
    assert mlflow.get_registry_uri() == later


PINNED = """
import json, os, sys
import mlflow
from stpipe.tracking.client import fluent_scope
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_registry_uri(sys.argv[2])
os.environ["MLFLOW_TRACKING_URI"] = "env-tracking"
with fluent_scope(sys.argv[3]):
    inside = [mlflow.get_tracking_uri(), mlflow.get_registry_uri()]
print(json.dumps({
    "inside": inside,
    "after": [mlflow.get_tracking_uri(), mlflow.get_registry_uri()],
    "env": [os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")],
}))
"""


def test_fluent_scope_restores_uris_that_the_process_pinned(tmp_path: Path) -> None:
    # A process of its own: a URI pinned by mlflow.set_tracking_uri stays for its lifetime.
    tracking_db, registry_db, scope = (
        f"sqlite:///{tmp_path / name}" for name in ("t.db", "r.db", "scope.db")
    )
    result = subprocess.run(
        [sys.executable, "-c", PINNED, tracking_db, registry_db, scope],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "inside": [scope, scope],
        "after": [tracking_db, registry_db],
        "env": ["env-tracking", registry_db],
    }


# --- errors ----------------------------------------------------------------------------------


def test_a_file_error_under_an_mlflow_call_is_one_line_naming_the_file(tmp_path: Path) -> None:
    # local artifacts are files: MLflow passes the OSError of a failed write through
    missing = tmp_path / "gone" / "config.toml"
    with pytest.raises(TrackingError) as info, tracking_errors("sqlite:///x.db", "log the config"):
        missing.write_text("x")
    assert str(info.value) == (
        f"sqlite:///x.db: cannot log the config: {missing}: no such file or directory"
    )


FILL_AND_TRAIN = """
import contextlib, io, json, sqlite3, sys
from pathlib import Path
from stpipe.app.cli import main
from stpipe.app.config import load_config
from stpipe.app.jobs import data_context, tracking_for
from stpipe.tracking import registry

config_path, uri, full = sys.argv[1], sys.argv[2], Path(sys.argv[3])
tracking = tracking_for(load_config(config_path, overrides={"mlflow.tracking_uri": uri}))
with open(full / "filler", "wb", buffering=0) as filler:
    with contextlib.suppress(OSError):  # ENOSPC: the file system is full
        while True:
            filler.write(bytes(1 << 16))
err = io.StringIO()
with contextlib.redirect_stderr(err):
    rc = main(["train", config_path, "--set", f"mlflow.tracking_uri={uri}"])
(full / "filler").unlink()
with sqlite3.connect(full / "mlflow.db") as db:
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
runs = tracking.client.search_runs([tracking.experiment_id])
print(json.dumps({
    "rc": rc,
    "err": err.getvalue(),
    "integrity": integrity,
    "runs": [r.info.run_id for r in runs],
    "versions": len(registry.versions(tracking)),
}))
"""


def can_mount_tmpfs() -> bool:
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs user namespaces (unshare -rm)")
def test_a_full_disk_during_stpipe_train_is_one_line_naming_the_database(
    tmp_path: Path, snapshot
) -> None:
    """MLflow's SQLite database on a full file system (a 4 MiB tmpfs, mounted in a user
    namespace): the job fails in one line naming the database and the cause, with no
    SQLAlchemy traceback, and leaves the database and the data store as they were."""
    config = pipeline(tmp_path / "pipe")
    check_split_windows(data_context(config))  # statistics and NaN scan cached: no log line
    store = snapshot(config.store_path)
    full = tmp_path / "full"
    full.mkdir()
    uri = f"sqlite:///{full / 'mlflow.db'}"
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {full} && exec {sys.executable} -c "
        f"{shlex.quote(FILL_AND_TRAIN)} {config.path} {uri} {full}"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["rc"] == 2
    assert outcome["err"].splitlines() == [
        f"stpipe train: error: {uri}: cannot start a run: no space left on device "
        "(SQLite: database or disk is full)"
    ]
    assert outcome["integrity"] == "ok"
    assert outcome["runs"] == [] and outcome["versions"] == 0
    assert snapshot(config.store_path) == store
    assert not (config.workdir / "checkpoints").exists()

"""Reaching MLflow (stpipe.tracking.client): the tracking URI, process-wide URIs left as they
were, retries against an unreachable server, errors shortened to their cause."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import mlflow
import pytest

from stpipe.app.jobs import tracking_for
from stpipe.core.errors import TrackingError
from stpipe.tracking.client import Tracking, fluent_scope, tracking_uri
from tests.tracking.conftest import make_config


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

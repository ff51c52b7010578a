"""Train → register → promote → forecast through a real ``mlflow server`` on a loopback port
(SQLite backend, artifacts served by the server); then the server goes away."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from stpipe.app import jobs
from stpipe.app.jobs import tracking_for
from stpipe.core.errors import TrackingError
from stpipe.forecast.store import open_forecasts
from stpipe.tracking import registry
from tests.app.test_jobs import pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` in its own process group, so stopping it stops its workers too."""

    def __init__(self, root: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (root / "server.log").open("wb")
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ]
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return
            except (requests.ConnectionError, requests.Timeout):  # up, not yet answering
                time.sleep(0.25)
        raise RuntimeError(f"mlflow server at {self.url} not ready after {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def test_train_register_promote_forecast_through_a_tracking_server(
    server: Server, tmp_path: Path
) -> None:
    config = pipeline(
        tmp_path / "pipe",
        mlflow=f'tracking_uri = "{server.url}"\nretries = 2\nretry_backoff_s = 0.1',
    )

    trained = jobs.run_training(config, progress=False)
    outcome = jobs.run_forecast(config)

    assert trained.promotion.promoted
    assert not (config.workdir / "mlflow.db").exists(), "nothing tracked locally"
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    version = client.get_model_version_by_alias("tiny-t2m", "champion")
    assert str(version.version) == trained.version and version.run_id == trained.run_id
    assert version.tags["stpipe.decision"] == "champion"
    assert client.get_run(trained.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert list((tmp_path / "artifacts").rglob("model.pt2")), "the server stored the model"
    forecasts = open_forecasts(config.forecast_store)
    assert str(forecasts["model_version"].values[0]) == trained.version
    assert np.isfinite(forecasts["t2m"].values).all()
    assert outcome.run_id == trained.run_id
    assert registry.aliases(tracking_for(config)) == {"champion": trained.version}

    server.stop()
    runs_before = len(list((tmp_path / "artifacts").rglob("MLmodel")))
    with pytest.raises(
        TrackingError,
        match=rf"cannot reach the MLflow server {server.url} "
        r"after 2 attempts",
    ):
        jobs.run_training(config, progress=False)
    assert len(list((tmp_path / "artifacts").rglob("MLmodel"))) == runs_before

"""Jobs that die or lose their tracking server: a killed training's run does not stay
RUNNING, and a server gone during a job fails it within the ``[mlflow]`` retry bound."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stpipe.app import jobs
from stpipe.app.jobs import tracking_for
from stpipe.core.errors import TrackingError
from stpipe.tracking import runs
from stpipe.tracking.client import request_retries
from stpipe.tracking.locks import run_lease
from stpipe.tracking.settings import MlflowSection
from tests.app.test_jobs import pipeline

REPO = Path(__file__).resolve().parents[2]


def wait_for(condition, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def running_runs(config) -> list[str]:
    tracking = tracking_for(config)
    found = tracking.client.search_runs(
        [tracking.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    return [r.info.run_id for r in found]


@pytest.mark.slow
def test_a_killed_training_run_is_marked_killed_by_the_next_training(tmp_path: Path) -> None:
    # given: a training killed (SIGKILL) while its run is open
    config = pipeline(tmp_path)
    command = ["-m", "stpipe.app.cli", "-q", "train", str(config.path)]
    proc = subprocess.Popen(
        [sys.executable, *command, "--set", "train.epochs=1000"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: running_runs(config), timeout_s=120, what="the training's run")
        time.sleep(1)  # past start_run, into training
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (killed,) = running_runs(config)
    # and: a run of a job that is alive (this process holds its lease)
    tracking = tracking_for(config)
    alive = runs.start_run(tracking, run_name="alive", tags={})

    with run_lease(config.workdir / jobs.RUN_LEASES, alive):
        # when: the next training starts
        outcome = jobs.run_training(config, progress=False)

        # then: the killed run is KILLED, the live one still RUNNING, the new one FINISHED
        assert tracking.client.get_run(killed).info.status == "KILLED"
        assert tracking.client.get_run(alive).info.status == "RUNNING"
        assert tracking.client.get_run(outcome.run_id).info.status == "FINISHED"
    assert not list((config.workdir / jobs.RUN_LEASES).iterdir()), "leases left behind"


class HealthOnce:
    """A loopback port that answers one ``GET /health`` and then closes: a tracking server
    that goes away right after a job has probed it."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self._serve_once, daemon=True)
        self.thread.start()

    def _serve_once(self) -> None:
        self.server.handle_request()
        self.server.server_close()


def test_a_server_gone_during_a_job_fails_it_within_the_retry_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    server = HealthOnce()
    config = pipeline(
        tmp_path, mlflow=f'tracking_uri = "{server.url}"\nretries = 2\nretry_backoff_s = 0.5'
    )

    started = time.monotonic()
    with pytest.raises(TrackingError, match=rf"{server.url}: cannot open experiment 'tiny'"):
        jobs.compare_versions(config)
    elapsed = time.monotonic() - started

    # 2 attempts, MLflow's backoff 0 s then 1 s (whole seconds) plus up to 1 s jitter each;
    # MLflow's own default (7 retries, backoff factor 2) takes minutes
    assert elapsed < 15, f"failed after {elapsed:.1f} s"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ, "the job's bound leaked"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) != 0


def test_retry_bounds_overlap_and_leave_the_environment_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)

    def env() -> tuple[str | None, str | None]:
        return (
            os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"),
            os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"),
        )

    first = request_retries(MlflowSection(retries=4, retry_backoff_s=1.0))
    second = request_retries(MlflowSection(retries=30, retry_backoff_s=0.0))
    first.__enter__()
    assert env() == ("3", "1")
    second.__enter__()
    assert env() == ("10", "0"), "MLflow accepts at most 10 retries"
    first.__exit__(None, None, None)  # jobs in threads end in any order
    assert env() == ("10", "0")
    second.__exit__(None, None, None)
    assert env() == ("7", None)

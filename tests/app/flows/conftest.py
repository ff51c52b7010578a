"""One Prefect test server (temporary SQLite database) for every flow test of the session,
and a tiny weather pipeline whose first night the tests share.

This directory has no ``__init__.py`` on purpose: as a package it would be imported as
``flows`` and shadow the real ``flows`` package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DAYS = 7  # in the archive; the feed starts with the first DAYS - 1

TINY_CONFIG = """
[pipeline]
name = "tiny-weather"
workdir = "work"

[source]
kind = "netcdf"
paths = "feed/*.nc"
variables = ["t2m", "u10", "v10"]

[patches]
input_steps = 6
leads = [1, 3]
size = [16, 16]
target_variables = ["t2m"]

[split]
val_start = 2024-01-04
test_start = 2024-01-05

[model]
hidden = 8

[train]
epochs = 1
members = 1
batch_size = 8
max_batches_per_epoch = 2
device = "cpu"
"""


@dataclass(frozen=True)
class TinyPipeline:
    """A pipeline config over ``feed/`` and the daily files (``archive``) that can arrive."""

    config: Path
    feed: Path
    archive: tuple[Path, ...]

    @property
    def workdir(self) -> Path:
        return self.config.parent / "work"

    def arrive(self, *files: Path) -> None:
        for f in files:
            shutil.copy(f, self.feed / f.name)


def make_pipeline(root: Path, *, days: int = DAYS, arrived: int = DAYS - 1) -> TinyPipeline:
    """A tiny weather pipeline in ``root``: ``days`` daily 16×16 files, ``arrived`` in the feed."""
    from stpipe.io.sources.synthetic import generate_weather_files

    archive = sorted(
        generate_weather_files(root / "archive", days=days, start="2024-01-01", grid=(16, 16))
    )
    (root / "feed").mkdir()
    pipeline = TinyPipeline(root / "pipeline.toml", root / "feed", tuple(archive))
    pipeline.config.write_text(TINY_CONFIG)
    pipeline.arrive(*archive[:arrived])
    return pipeline


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    """The harness's API URL; flows called in tests (and subprocesses given it) report there."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture
def new_pipeline(tmp_path: Path):
    """``new_pipeline(days=, arrived=)``: a tiny weather pipeline in a fresh directory."""
    count = iter(range(1_000))
    return lambda **kw: make_pipeline(tmp_path / f"pipeline{next(count)}", **kw)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> TinyPipeline:
    return make_pipeline(tmp_path_factory.mktemp("tiny-pipeline"))


@pytest.fixture(scope="session")
def first_night(tiny_pipeline: TinyPipeline):
    """The NightReport of the tiny pipeline's first night (6 days in the feed)."""
    from stpipe.app.flows.nightly import nightly_flow

    return nightly_flow(str(tiny_pipeline.config))


@pytest.fixture
def flow_process(prefect_api: str):
    """Start ``python -c code`` reporting to the test server; returns the Popen."""

    def start(code: str, *, cwd: Path) -> subprocess.Popen[str]:
        env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_LEVEL": "INFO"}
        return subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    return start

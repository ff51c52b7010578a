"""A training whose train, validation or test window holds no complete sample fails before
it trains or touches MLflow: one line naming the window and its dates, the workdir as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from stpipe.app import jobs
from stpipe.app.config import Config, load_config
from stpipe.core.errors import StoreError
from stpipe.learn.context import check_split_windows
from tests.app.test_jobs import pipeline


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """6 days of hourly data from 2024-01-01; val from 01-04, test from 01-05."""
    config = pipeline(tmp_path_factory.mktemp("windows"))
    # the statistics and the NaN scan cached in the workdir, as by any job before
    check_split_windows(jobs.data_context(config))
    return config


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"split.test_end": "2024-01-05T05:00:00"},
            "the test window [2024-01-05T00:00:00, 2024-01-05T05:00:00) holds no complete "
            "sample: one needs 7 regular steps without NaN (input_steps 4 + max lead 3) on one "
            "of 3×3 patch positions, and the window holds 5 steps (2024-01-05T00:00:00 … "
            "2024-01-05T04:00:00) in 1 gap-free run(s); move the [split] dates or ingest more "
            "data",
        ),
        (
            {"split.test_start": "2024-01-04T06:00:00"},
            "the val window [2024-01-04T00:00:00, 2024-01-04T06:00:00) holds no complete "
            "sample: one needs 7 regular steps without NaN (input_steps 4 + max lead 3) on one "
            "of 3×3 patch positions, and the window holds 6 steps (2024-01-04T00:00:00 … "
            "2024-01-04T05:00:00) in 1 gap-free run(s); move the [split] dates or ingest more "
            "data",
        ),
        (
            {"split.train_start": "2024-01-03T20:00:00"},
            "the train window [2024-01-03T20:00:00, 2024-01-04T00:00:00) holds no complete "
            "sample: one needs 7 regular steps without NaN (input_steps 4 + max lead 3) on one "
            "of 3×3 patch positions, and the window holds 4 steps (2024-01-03T20:00:00 … "
            "2024-01-03T23:00:00) in 1 gap-free run(s); move the [split] dates or ingest more "
            "data",
        ),
    ],
)
def test_an_empty_window_fails_the_training_before_anything_is_trained_or_logged(
    ingested: Config, overrides: dict[str, str], message: str
) -> None:
    config = load_config(ingested.path, overrides=overrides)
    jobs.data_context(config)  # caches this train window's statistics (not the check's doing)
    before = tree(config.workdir)
    with pytest.raises(StoreError) as info:
        jobs.run_training(config, progress=False)
    assert str(info.value) == f"{config.store_path}: {message}"
    assert tree(config.workdir) == before, "no run, checkpoint or artifact was written"
    assert not (config.workdir / "mlflow.db").exists()

"""A workdir with the default local tracking (SQLite + artifacts beside it) can be moved or
copied: MLflow records absolute artifact locations, which stpipe rewrites when it opens a
workdir that is no longer where they point."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stpipe.app import jobs
from stpipe.app.config import load_config
from stpipe.app.jobs import tracking_for
from stpipe.forecast.store import open_forecasts
from stpipe.tracking import registry
from tests.app.test_jobs import pipeline, register_baseline

pytestmark = pytest.mark.slow


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root``: relative path → mtime_ns."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_a_moved_workdir_forecasts_with_its_champion(tmp_path: Path) -> None:
    config = pipeline(tmp_path / "before")
    trained = jobs.run_training(config, progress=False)

    subprocess.run(["mv", str(tmp_path / "before"), str(tmp_path / "after")], check=True)
    moved = load_config(tmp_path / "after" / "pipeline.toml")
    outcome = jobs.run_forecast(moved)

    assert outcome.model_version == trained.version
    assert str(open_forecasts(moved.forecast_store)["model_version"].values[0]) == trained.version
    tracking = tracking_for(moved)
    experiment = tracking.client.get_experiment(tracking.experiment_id)
    assert experiment.artifact_location == (moved.workdir / "mlartifacts" / "tiny").as_uri()
    run = tracking.client.get_run(trained.run_id)
    assert run.info.artifact_uri.startswith((moved.workdir / "mlartifacts").as_uri() + "/")
    config_text = Path(tracking.client.download_artifacts(trained.run_id, "config.toml"))
    assert load_config(config_text).model.name == "convlstm"


def test_training_in_a_copy_leaves_the_original_untouched(tmp_path: Path) -> None:
    original = pipeline(tmp_path / "original")
    assert register_baseline(original, offset=2.0).promoted
    subprocess.run(["cp", "-a", str(tmp_path / "original"), str(tmp_path / "copy")], check=True)
    before = tree(original.workdir)

    copy = load_config(tmp_path / "copy" / "pipeline.toml")
    trained = jobs.run_training(copy, progress=False)

    assert tree(original.workdir) == before, "training in the copy wrote into the original"
    assert registry.aliases(tracking_for(original)) == {"champion": "1"}
    assert trained.version == "2"
    tracking = tracking_for(copy)
    logged = tracking.client.get_run(trained.run_id).info.artifact_uri
    assert logged.startswith((copy.workdir / "mlartifacts").as_uri() + "/")
    assert list((copy.workdir / "mlartifacts").rglob("model.pt2")), "the copy holds its models"
    assert jobs.run_forecast(copy).model_version == registry.aliases(tracking)["champion"]

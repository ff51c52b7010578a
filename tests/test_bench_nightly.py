"""benchmarks/bench_nightly.py: the training throughput it reads back from the run that
``stpipe train`` logged, with one model or several members (a real MLflow on SQLite), and
what it clears before a run."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

from mlflow.entities import Metric

from stpipe.app.jobs import tracking_for
from tests.tracking.conftest import make_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
spec = importlib.util.spec_from_file_location("bench_nightly", BENCHMARKS / "bench_nightly.py")
bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _run_with(config, series: dict[str, list[float]]) -> str:
    tracking = tracking_for(config)
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    metrics = [
        Metric(key, value, 0, step)
        for key, values in series.items()
        for step, value in enumerate(values)
    ]
    tracking.client.log_batch(run_id, metrics=metrics)
    return run_id


def test_the_throughput_is_the_median_of_every_members_epochs_after_the_first(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    members = _run_with(
        config,
        {
            "member0/samples_per_s": [1.0, 10.0, 12.0],  # the first epoch warms up: left out
            "member1/samples_per_s": [2.0, 30.0, 40.0],
            "member0/data_wait_frac": [0.9, 0.1, 0.2],
            "member1/data_wait_frac": [0.9, 0.3, 0.4],
            "member0/train_samples_per_s": [99.0, 99.0],  # not a per-epoch figure
        },
    )
    assert bench.logged_throughput(config, members) == (21.0, 0.25)
    one = _run_with(config, {"samples_per_s": [5.0, 7.0], "data_wait_frac": [0.5]})
    assert bench.logged_throughput(config, one) == (7.0, 0.5)
    none = _run_with(config, {"val_loss": [1.0]})
    assert all(math.isnan(v) for v in bench.logged_throughput(config, none))


def test_a_rerun_clears_every_output_with_the_checkpoints_and_keeps_the_archive(
    tmp_path: Path,
) -> None:
    for folder in ("archive", "store.zarr", "feed", "mlartifacts", "checkpoints/run-key"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "part").write_text("x")
    (tmp_path / "mlflow.db").write_text("x")
    bench.clear_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"]
    assert (tmp_path / "archive" / "part").is_file()

"""benchmarks/bench_references.py: the reference the calibration leans on, chosen as the
calibration chooses it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # bench_references imports bench_quality
spec = importlib.util.spec_from_file_location(
    "bench_references", BENCHMARKS / "bench_references.py"
)
bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def errors(**better: float) -> dict[str, float]:
    """Mean squared errors of the baselines on the train days."""
    base = {
        "persistence": 3.0,
        "climatology": 5.0,
        "persistence_clim_change": 1.2,
        "advection": 1.0,
    }
    return base | better


def test_the_calibration_leans_on_the_least_wrong_baseline_on_the_train_days():
    assert bench.calibration_choice(errors()) == "advection"
    assert bench.calibration_choice(errors(persistence_clim_change=0.9)) == (
        "persistence_clim_change"
    )
    # climatology is no reference with a climatology of a few weeks, however good
    assert bench.calibration_choice(errors(climatology=0.1)) == "advection"

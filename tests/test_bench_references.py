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

MEAN = "mean(persistence_clim_change, advection)"


def errors(*, mean: float = 1.1, climatology: float = 5.0) -> dict[str, float]:
    """Mean squared errors of the references on one period (advection the best baseline)."""
    return {
        "persistence": 3.0,
        "climatology": climatology,
        "persistence_clim_change": 1.2,
        "advection": 1.0,
        MEAN: mean,
    }


def test_the_calibration_leans_on_the_best_baseline_or_a_mean_that_holds_on_both_periods():
    assert bench.calibration_choice(errors(), errors()) == "advection"
    # the mean beats every baseline on validation and on the train days: the mean
    assert bench.calibration_choice(errors(mean=0.9), errors(mean=0.95)) == MEAN
    # ... on validation only, by a hair, and trails by far on the train days: advection
    assert bench.calibration_choice(errors(mean=0.99), errors(mean=2.0)) == "advection"
    # climatology is no reference with a climatology of a few weeks, however good
    assert bench.calibration_choice(errors(climatology=0.1), errors(climatology=0.1)) == "advection"

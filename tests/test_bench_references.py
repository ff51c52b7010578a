"""benchmarks/bench_references.py: the reference the calibration leans on, chosen as the
calibration chooses it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

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


def test_damping_is_the_least_squares_factor_of_the_anomaly():
    anomaly = np.array([1.0, -2.0, 3.0])
    assert bench.damping(anomaly, 0.5 * anomaly) == 0.5
    # noise orthogonal to the anomaly leaves the factor
    assert bench.damping(anomaly, 0.25 * anomaly + np.array([2.0, 1.0, 0.0])) == 0.25


def test_damped_advection_fits_its_factor_on_the_train_days_only():
    rng = np.random.default_rng(0)
    terms = {}
    for split, factor in (("train", 0.5), ("test", 1.0)):
        stacked = rng.normal(size=(4, 3, 2, 2))  # p, C(t), C(t0), A
        advection = stacked[1] - stacked[2] + stacked[3]
        terms[split] = (stacked, stacked[1] + factor * (advection - stacked[1]))
    level = {split: np.zeros((3, 2, 2)) for split in terms}
    truth, (stacked, _) = terms["test"][1], terms["test"]
    # φ = 0.5 from the train days; the test days' truth keeps the whole anomaly
    expected = np.sqrt(np.mean((0.5 * (truth - stacked[1])) ** 2))
    assert np.isclose(bench.damped_rmse(terms, level), expected)

"""benchmarks/bench_ensemble.py: the summary per model and mean (the mean itself is
stpipe's MemberMean, tested in tests/models/test_ensemble.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # bench_ensemble imports bench_quality
spec = importlib.util.spec_from_file_location("bench_ensemble", BENCHMARKS / "bench_ensemble.py")
bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_summary_counts_cases_below_minus_two_percent_and_the_worst_short_lead() -> None:
    leads = [1.0, 6.0, 12.0]
    table = {
        "seed 0": [[0.1, -0.05, -0.3], [0.0, -0.02, 0.2]],  # -2 % exactly is not worse
        "mean of 2": [[0.05, 0.0, -0.021], [0.01, 0.02, 0.0]],
    }
    out = bench.summary(leads, table)
    cases, worst, mean = out["seed 0"]
    assert (cases, worst) == (2, -0.05)
    np.testing.assert_allclose(mean, [0.05, -0.035, -0.05])
    assert out["mean of 2"][:2] == (1, 0.0), "12 h is not a short lead"
    assert pytest.approx(out["mean of 2"][2]) == [0.03, 0.01, -0.0105]

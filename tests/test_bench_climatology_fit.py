"""benchmarks/bench_climatology_fit.py --quick: every block size and stpipe's own rule fit the
same blend weights, and the last line gives the figures it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_climatology_fit.py"


def test_the_quick_run_times_each_block_size_and_ends_with_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, check=True
    )
    lines = done.stdout.strip().splitlines()
    assert sum(" stpipe " in line for line in lines) == 2, "stpipe's rule on both feeds"
    assert sum(" 16 MiB " in line for line in lines) == 2
    last = dict(pair.split("=") for pair in lines[-1].split())
    assert list(last) == [
        "fit_s_small",
        "fit_s_large",
        "speedup_small",
        "speedup_large",
        "max_weight_diff",
    ]
    assert all(float(value) > 0 for key, value in last.items() if key != "max_weight_diff")
    assert float(last["max_weight_diff"]) < 1e-8
    assert all(re.search(r"weights ±\d", line) for line in lines[:-1])

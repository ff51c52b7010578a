"""The climatology fit's blocks: what ``Climatology.fit`` costs per size of its blocks.

    python benchmarks/bench_climatology_fit.py [--quick]

Every job that reads the store (``stpipe train``, ``evaluate``, the nightly flow) fits the
climatology of the train split once: slot means and the lag moments behind the blend weights
of the advection baseline (:mod:`stpipe.models.climatology`), one dask task per block of
cells with all its times. Two hourly t2m feeds (a diurnal cycle plus noise, in memory): 24
days of 64×64 (the shipped ``weather.toml``'s train split) and 120 days of 128×256. For each
feed and block size (MiB of input per block) it prints the fit's seconds and the ratio to
blocks of 16 MiB (stpipe's before it bounded a lag's temporaries, ``LAG_PASS_BYTES``), and the
largest difference of the blend weights from those (blocks share one stride, so they agree to
rounding); "stpipe" is its own rule. The last line: ``fit_s_small=… fit_s_large=…
speedup_small=… speedup_large=… max_weight_diff=…`` of stpipe's rule, the speedups against
16 MiB blocks. ``--quick``: smaller feeds (a smoke run).
"""

from __future__ import annotations

import argparse
import time

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

import stpipe.models.climatology as climatology

SIZES_MIB = (16, 8, 4, 2, 1)  # fixed block sizes; the first is stpipe's before
STPIPE = "stpipe"  # stpipe's own rule: FIT_BLOCK_BYTES and LAG_PASS_BYTES as they are


def feed(days: int, grid: tuple[int, int], seed: int) -> xr.Dataset:
    """Hourly t2m on a lat/lon ``grid``: a diurnal cycle plus noise, float32 in dask, computed
    (in daily chunks, as the store holds them) so that the fits time only themselves."""
    rows, cols = grid
    steps = days * 24
    hours = np.arange(steps) % 24
    cycle = da.from_array(5 * np.sin(2 * np.pi * hours / 24), chunks=24)[:, None, None]
    noise = da.random.default_rng(seed).normal(size=(steps, rows, cols), chunks=(24, rows, cols))
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), (280 + cycle + noise).astype("float32"))},
        coords={
            "time": pd.date_range("2024-01-01", periods=steps, freq="h"),
            "lat": np.linspace(60, 40, rows),
            "lon": np.linspace(-10, 20, cols),
        },
    ).persist()


def fit_at(ds: xr.Dataset, size: float | str) -> tuple[float, np.ndarray]:
    """Seconds of one fit with blocks of ``size`` MiB (or :data:`STPIPE`), and its blend
    weights."""
    defaults = climatology.FIT_BLOCK_BYTES, climatology.LAG_PASS_BYTES
    if size != STPIPE:
        climatology.FIT_BLOCK_BYTES, climatology.LAG_PASS_BYTES = int(size * 2**20), 2**62
    try:
        started = time.perf_counter()
        fit = climatology.Climatology.fit(ds, variables=["t2m"], period="day", step_s=3600)
        return time.perf_counter() - started, fit.blend_weights
    finally:
        climatology.FIT_BLOCK_BYTES, climatology.LAG_PASS_BYTES = defaults


def compare(
    name: str, ds: xr.Dataset, sizes: tuple[float | str, ...]
) -> tuple[dict[float | str, float], float]:
    """Print each size's fit time against the first size's; seconds per size and the largest
    difference of the blend weights from the first size's."""
    fit_at(ds, sizes[0])  # warm-up: imports and dask's thread pool
    seconds: dict[float | str, float] = {}
    largest = 0.0
    reference = None
    for mib in sizes:
        seconds[mib], weights = fit_at(ds, mib)
        reference = weights if reference is None else reference
        diff = float(np.abs(weights - reference).max())
        largest = max(largest, diff)
        ratio = seconds[sizes[0]] / seconds[mib]
        label = mib if mib == STPIPE else f"{mib:g} MiB"
        print(f"{name:<14} {label:>8} {seconds[mib]:7.2f} s  ×{ratio:4.2f}  weights ±{diff:.1e}")
    return seconds, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller feeds (smoke run)")
    args = parser.parse_args()
    feeds = {"small": (24, (64, 64)), "large": (120, (128, 256))}
    if args.quick:
        feeds = {"small": (4, (16, 16)), "large": (8, (32, 32))}
    before = SIZES_MIB[0]
    seconds, diffs = {}, []
    for label, (days, grid) in feeds.items():
        name = f"{days}d {grid[0]}x{grid[1]}"
        seconds[label], diff = compare(name, feed(days, grid, 0), (*SIZES_MIB, STPIPE))
        diffs.append(diff)
    small, large = seconds["small"], seconds["large"]
    print(
        f"fit_s_small={small[STPIPE]:.3f} fit_s_large={large[STPIPE]:.3f} "
        f"speedup_small={small[before] / small[STPIPE]:.3f} "
        f"speedup_large={large[before] / large[STPIPE]:.3f} "
        f"max_weight_diff={max(diffs):.2e}"
    )


if __name__ == "__main__":
    main()

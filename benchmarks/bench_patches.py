"""Patch loading: stpipe's chunk-aware loader vs xbatcher's BatchGenerator vs raw Zarr reads.

    python benchmarks/bench_patches.py [--quick] [--workers N]

The store (built once into ``benchmarks/_data/``, through ``stpipe ingest`` of the
synthetic ERA5-like feed, 128×128 cells, t2m/u10/v10 hourly, chunks of the store's own
layout: 24 steps × 128×128, Blosc-zstd): full 425 days = 10,200 steps = 2.0 GB float32;
``--quick`` 21 days. The same patches on every side: 3 variables × 18 consecutive steps ×
32×32 cells (stpipe: 12 inputs + leads 1…6; time stride 1, spatial stride 32, so
xbatcher has ``input_dims={time: 18, lat: 32, lon: 32}, input_overlap={time: 17}``).
Each side runs in its own subprocess (so its peak RSS is its own):

- stpipe: one full epoch of ``make_loader(split="all", batch_size=64, shuffle=True)`` on
  in-process threads (``--workers N``: N forkserver DataLoader workers, two epochs: the
  first pays the workers' start-up);
- xbatcher 0.4: ``BatchGenerator`` over ``open_store`` (Dask-backed), each patch
  ``.load()``-ed, for 20 s (quick: 8 s) — its order is sequential, its best case;
- raw: every chunk of the 3 variables read once with Zarr, no patching (the decode limit).

MB are the patch bytes delivered (x and y: 18 × 3 × 32 × 32 float32 per patch = the
xbatcher patch); read amplification = uncompressed bytes of the chunks stpipe decoded /
bytes it delivered. Last line: ``patches_per_s=… mb_per_s=… xbatcher_per_s=… ratio=…
raw_mb_per_s=… read_amplification=… peak_rss_mb=…``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "_data"
VARIABLES = ["t2m", "u10", "v10"]
GRID = (128, 128)
INPUT_STEPS, LEADS, SIZE = 12, [1, 2, 3, 4, 5, 6], 32


def config(days: int):
    from stpipe.app.config import config_from_dict

    return config_from_dict(
        {
            "pipeline": {"name": "bench-patches", "workdir": str(DATA / f"patches-{days}d")},
            "source": {
                "kind": "synthetic-weather",
                "variables": VARIABLES,
                "synthetic": {"days": days, "grid": list(GRID), "start": "2023-01-01"},
            },
            "patches": {
                "input_steps": INPUT_STEPS,
                "leads": LEADS,
                "size": [SIZE, SIZE],
                "nan_policy": "mask",
                "time_features": True,
            },
            "split": {"val_start": "2030-01-01", "test_start": "2030-01-02"},
        }
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side_build(days: int) -> dict:
    from stpipe.io.ingestion import ingest
    from stpipe.io.store import open_store

    cfg = config(days)
    report = ingest(cfg.ingest_job, progress=False)
    ds = open_store(cfg.store_path)
    return {
        "store": str(cfg.store_path),
        "steps": ds.sizes["time"],
        "gb": sum(ds[v].size * 4 for v in VARIABLES) / 1e9,
        "chunks": list(ds[VARIABLES[0]].encoding["chunks"]),
        "ingested": len(report.ingested),
    }


def side_stpipe(days: int, workers: int) -> dict:
    from stpipe.learn.loader import make_loader

    cfg = config(days)
    loader = make_loader(
        cfg.patch_spec(),
        cfg.store_path,
        split="all",
        batch_size=64,
        shuffle=True,
        drop_last=False,
        num_workers=workers,
    )
    epochs = []
    for epoch in range(2 if workers else 1):
        loader.set_epoch(epoch)
        started = time.perf_counter()
        patches = sum(len(batch["t0"]) for batch in loader)
        epochs.append((patches, time.perf_counter() - started))
    patches, seconds = epochs[-1]
    counters = loader.counters
    return {
        "patches": patches,
        "seconds": seconds,
        "first_epoch_s": epochs[0][1],
        "bytes": patches * (INPUT_STEPS + len(LEADS)) * len(VARIABLES) * SIZE * SIZE * 4,
        "read_amplification": counters.read_amplification,
        "bytes_read": counters.bytes_read,
        "summary": counters.summary(),
        "blocks": len(loader.dataset.layout.counts),
        "peak_rss_mb": peak_rss_mb(),
    }


def side_xbatcher(days: int, seconds: float) -> dict:
    import warnings

    import xbatcher

    from stpipe.io.store import open_store

    warnings.simplefilter("ignore")
    ds = open_store(config(days).store_path)[VARIABLES]
    span = INPUT_STEPS + LEADS[-1]
    started = time.perf_counter()
    generator = xbatcher.BatchGenerator(
        ds,
        input_dims={"time": span, "lat": SIZE, "lon": SIZE},
        input_overlap={"time": span - 1},
    )
    setup = time.perf_counter() - started
    patches = 0
    started = time.perf_counter()
    for patch in generator:
        patch.load()
        patches += 1
        if time.perf_counter() - started > seconds:
            break
    return {
        "patches": patches,
        "seconds": time.perf_counter() - started,
        "setup_s": setup,
        "total": len(generator),
        "peak_rss_mb": peak_rss_mb(),
    }


def side_raw(days: int) -> dict:
    import zarr

    group = zarr.open_group(str(config(days).store_path), mode="r", use_consolidated=True)
    nbytes = 0
    started = time.perf_counter()
    for name in VARIABLES:
        array = group[name]
        for t in range(0, array.shape[0], array.chunks[0]):
            nbytes += array[t : t + array.chunks[0]].nbytes
    return {"bytes": nbytes, "seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


SIDES = {"build": side_build, "stpipe": side_stpipe, "xbatcher": side_xbatcher, "raw": side_raw}


def run(side: str, *args: object) -> dict:
    command = [sys.executable, __file__, "--side", side, *map(str, args)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="21 days instead of 425")
    parser.add_argument("--workers", type=int, default=0, help="stpipe DataLoader workers")
    parser.add_argument("--side", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        name, *rest = args.side
        print(json.dumps(SIDES[name](*(json.loads(a) for a in rest))))
        return
    days = 21 if args.quick else 425
    store = run("build", days)
    print(
        f"store {store['store']}: {store['steps']} steps, {store['gb']:.2f} GB float32, "
        f"chunks {store['chunks']}"
    )
    raw = run("raw", days)
    ours = run("stpipe", days, args.workers)
    xb = run("xbatcher", days, 8.0 if args.quick else 20.0)
    patches_per_s = ours["patches"] / ours["seconds"]
    xbatcher_per_s = xb["patches"] / xb["seconds"]
    raw_mb_per_s = raw["bytes"] / 1e6 / raw["seconds"]
    print(
        f"stpipe: {ours['patches']} patches in {ours['seconds']:.1f} s "
        f"({ours['blocks']} blocks; first epoch {ours['first_epoch_s']:.1f} s); "
        f"{ours['summary']}; chunk bytes decoded per store byte "
        f"{ours['bytes_read'] / raw['bytes']:.3f}"
    )
    print(
        f"xbatcher: {xb['patches']} of {xb['total']} patches in {xb['seconds']:.1f} s "
        f"(setup {xb['setup_s']:.1f} s), peak RSS {xb['peak_rss_mb']:.0f} MB; raw: "
        f"{raw['bytes'] / 1e6:.0f} MB in {raw['seconds']:.1f} s"
    )
    print(
        f"patches_per_s={patches_per_s:.1f} "
        f"mb_per_s={ours['bytes'] / 1e6 / ours['seconds']:.1f} "
        f"xbatcher_per_s={xbatcher_per_s:.1f} ratio={patches_per_s / xbatcher_per_s:.1f} "
        f"raw_mb_per_s={raw_mb_per_s:.1f} "
        f"read_amplification={ours['read_amplification']:.3f} "
        f"peak_rss_mb={ours['peak_rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()

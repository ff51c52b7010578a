"""Ingest throughput: stpipe's ingest vs the naive xarray append, on the same daily files.

    python benchmarks/bench_ingest.py [--quick]

Full: 60 daily ERA5-like NetCDF files, 256×256, 3 variables (t2m, u10, v10), hourly;
``--quick``: 12 files. The files are generated once into ``benchmarks/_data/``. Each side
ingests them, one file at a time in date order, into a fresh Zarr v3 store, in its own
subprocess (so peak RSS is its own):

- stpipe: ``stpipe.io.ingestion.ingest`` with ``kind = "netcdf"``, then the same call again
  on the unchanged files (the no-op re-run of a nightly job);
- naive: ``xr.open_mfdataset([file])[variables].to_zarr(store, mode="a",
  append_dim="time")`` per file (the first with ``mode="w"``).

MB are uncompressed float32 bytes of the ingested variables. Last line:
``stpipe_mb_per_s=… naive_mb_per_s=… ratio=… noop_rerun_s=… peak_rss_mb=…``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

DATA = Path(__file__).resolve().parent / "_data"
VARIABLES = ["t2m", "u10", "v10"]
GRID = (256, 256)

STPIPE_RUN = textwrap.dedent(
    """
    import json, resource, sys, time
    from stpipe.app.config import config_from_dict
    from stpipe.io.ingestion import ingest

    files, workdir, variables = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    address = ""
    if sys.argv[4] == "processes":
        from distributed import LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
        address = cluster.scheduler_address
    config = config_from_dict({
        "pipeline": {"name": "bench", "workdir": workdir},
        "source": {"kind": "netcdf", "paths": files, "variables": variables},
        "dask": {"address": address},
        "patches": {"input_steps": 12, "leads": [1], "size": [32, 32]},
        "split": {"val_start": "2030-01-01", "test_start": "2030-01-02"},
    })
    t0 = time.perf_counter()
    report = ingest(config.ingest_job, progress=False)
    t1 = time.perf_counter()
    rerun = ingest(config.ingest_job, progress=False)
    t2 = time.perf_counter()
    assert not report.refused and len(rerun.skipped) == len(report.ingested), rerun.summary()
    print(json.dumps({"seconds": t1 - t0, "bytes": report.bytes_ingested, "noop_s": t2 - t1,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)

NAIVE_RUN = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    import xarray as xr

    warnings.simplefilter("ignore")
    files, store, variables = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    t0 = time.perf_counter()
    nbytes = 0
    for i, path in enumerate(files):
        ds = xr.open_mfdataset([path])[variables]
        nbytes += sum(v.size * 4 for v in ds.data_vars.values())
        if i == 0:
            ds.to_zarr(store, mode="w", zarr_format=3)
        else:
            ds.to_zarr(store, mode="a", append_dim="time")
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "bytes": nbytes,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


GENERATE = textwrap.dedent(
    """
    import json, sys
    from stpipe.io.sources.synthetic import generate_weather_files

    files = generate_weather_files(sys.argv[1], days=int(sys.argv[2]), start="2024-01-01",
                                   seed=0, grid=tuple(json.loads(sys.argv[3])))
    print(json.dumps([str(f) for f in files]))
    """
)


def input_files(days: int) -> list[Path]:
    """The daily files, generated once (in a subprocess: this process stays small, so the
    children's peak RSS is their own)."""
    outdir = DATA / f"weather-{GRID[0]}x{GRID[1]}"
    return [Path(p) for p in run_json(GENERATE, str(outdir), str(days), json.dumps(GRID))]


def run_json(code: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 files instead of 60")
    parser.add_argument(
        "--processes",
        action="store_true",
        help="also run stpipe on a LocalCluster of 2 worker processes (threads vs processes)",
    )
    args = parser.parse_args(argv)
    days = 12 if args.quick else 60
    files = input_files(days)
    runs = DATA / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    variables = json.dumps(VARIABLES)
    glob = str(files[0].parent / "era5_*.nc")
    naive = run_json(
        NAIVE_RUN, json.dumps([str(f) for f in files]), str(runs / "naive.zarr"), variables
    )
    ours = run_json(STPIPE_RUN, glob, str(runs / "stpipe"), variables, "threads")
    if args.processes:
        procs = run_json(STPIPE_RUN, glob, str(runs / "stpipe-processes"), variables, "processes")
        print(f"stpipe on 2 worker processes: {procs['bytes'] / 1e6 / procs['seconds']:.1f} MB/s")
    ours_mb_s = ours["bytes"] / 1e6 / ours["seconds"]
    naive_mb_s = naive["bytes"] / 1e6 / naive["seconds"]
    print(
        f"{len(files)} files, {ours['bytes'] / 1e6:.0f} MB float32: stpipe "
        f"{ours['seconds']:.1f} s, naive {naive['seconds']:.1f} s; "
        f"peak RSS stpipe {ours['peak_rss_mb']:.0f} MB, naive {naive['peak_rss_mb']:.0f} MB"
    )
    print(
        f"stpipe_mb_per_s={ours_mb_s:.1f} naive_mb_per_s={naive_mb_s:.1f} "
        f"ratio={ours_mb_s / naive_mb_s:.2f} noop_rerun_s={ours['noop_s']:.3f} "
        f"peak_rss_mb={ours['peak_rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()

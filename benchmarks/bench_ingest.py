"""Ingest throughput: stpipe vs the naive per-file append vs one parallel open_mfdataset.

    python benchmarks/bench_ingest.py [--quick] [--compare] [--repeat N]

Full: 60 daily ERA5-like NetCDF files, 256×256, 3 variables (t2m, u10, v10), hourly;
``--quick``: 12 files. The files are generated once into ``benchmarks/_data/``. Each side
ingests the same files into a fresh Zarr v3 store, in its own subprocess:

- stpipe: ``stpipe.io.ingestion.ingest`` with ``kind = "netcdf"`` (its workers chosen by
  the machine, start-up included), then the same call again on the unchanged files (the
  no-op re-run of a nightly job);
- naive: ``xr.open_mfdataset([file])[variables].to_zarr(store, mode="a",
  append_dim="time")`` per file in date order (the first with ``mode="w"``);
- mfdataset: what a skilled user runs for a backfill: a ``LocalCluster`` of single-thread
  worker processes, one per core, then ``xr.open_mfdataset(files, parallel=True)
  [variables].to_zarr(store)`` once (timed from when the cluster is up: its start-up is
  printed apart).

``--repeat N`` runs the three sides N times, in turn (stpipe, naive, mfdataset, then again),
and reports each side's median throughput and the ratios of the medians (and every round's
figures): on a shared machine one run of each is one sample of a wide spread (the naive
append ran 112-154 MB/s over four runs on the 16-core machine).

``--compare`` also runs stpipe with its workers forced to threads, forced to processes
(``STPIPE_INGEST_WORKERS``), and on a Dask LocalCluster of single-thread processes through
``[dask] address`` (cluster start-up not timed), for the rule in
:mod:`stpipe.io.ingest_workers`.

Each stpipe run also prints its CPU time (its process tree's), where the ingest loop's
own time went (``ingest loop seconds``: waiting for workers' decodes and writes, checking
and planning, committing, resizing; the loop is the serial part of an ingest) and, with
worker processes, when they were ready.

MB are uncompressed float32 bytes of the ingested variables. Each side's store size (its
files' bytes) is printed too: stpipe stores float32 under Blosc+lz4 (by default); the other
two keep the files' int16 packing (xarray writes a variable's source encoding back) under
zstd, half the bytes before compression. Peak RSS is stpipe's process
tree (its worker processes' RSS added, sampled every 0.1 s from the benchmark's process, not
the measured one; pages the forked workers share count in each, so it is an upper bound);
the proportional set size (PSS, sampled every 0.5 s) divides each shared page among the
processes that map it, so the tree's PSS is the memory it holds (Linux; 0 elsewhere).
Last line: ``stpipe_mb_per_s=… naive_mb_per_s=… mfdataset_mb_per_s=… ratio_naive=…
ratio_mfdataset=… noop_rerun_s=… peak_rss_mb=… peak_pss_mb=… rounds=…``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

DATA = Path(__file__).resolve().parent / "_data"
VARIABLES = ["t2m", "u10", "v10"]
GRID = (256, 256)

STPIPE_RUN = textwrap.dedent(
    """
    import json, logging, os, resource, sys, time
    from stpipe.app.config import config_from_dict
    from stpipe.io.ingestion import ingest

    files, workdir = json.loads(sys.argv[1]), sys.argv[2]
    variables, cluster = json.loads(sys.argv[3]), sys.argv[4]
    address = ""
    if cluster == "dask-processes":
        from distributed import LocalCluster
        cores = len(os.sched_getaffinity(0))
        local = LocalCluster(n_workers=cores, threads_per_worker=1, dashboard_address=":0")
        address = local.scheduler_address
    config = config_from_dict({
        "pipeline": {"name": "bench", "workdir": workdir},
        "source": {"kind": "netcdf", "paths": files, "variables": variables},
        "dask": {"address": address},
        "patches": {"input_steps": 12, "leads": [1], "size": [32, 32]},
        "split": {"val_start": "2030-01-01", "test_start": "2030-01-02"},
    })
    class Stages(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "seconds:" in message or "ready after" in message:
                stages.append(message)

    stages = []
    for name in ("stpipe.io.ingestion", "stpipe.io.ingest_workers"):
        logging.getLogger(name).setLevel(logging.DEBUG)
        logging.getLogger(name).addHandler(Stages())
    def cpu_s():
        return sum(
            r.ru_utime + r.ru_stime
            for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        )

    c0, t0 = cpu_s(), time.perf_counter()
    report = ingest(config.ingest_job, progress=False)
    c1, t1 = cpu_s(), time.perf_counter()
    first_stages = list(stages)
    rerun = ingest(config.ingest_job, progress=False)
    t2 = time.perf_counter()
    assert not report.refused and len(rerun.skipped) == len(report.ingested), rerun.summary()
    print(json.dumps({"seconds": t1 - t0, "bytes": report.bytes_ingested, "noop_s": t2 - t1,
                      "main_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "stages": first_stages, "store": str(config.store_path),
                      "cpu_s": c1 - c0}))
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

MFDATASET_RUN = textwrap.dedent(
    """
    import json, os, sys, time, warnings
    import xarray as xr
    from distributed import Client, LocalCluster

    warnings.simplefilter("ignore")
    files, store, variables = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    cores = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    with LocalCluster(n_workers=cores, threads_per_worker=1, dashboard_address=":0") as cluster, \\
            Client(cluster):
        t1 = time.perf_counter()
        ds = xr.open_mfdataset(files, parallel=True)[variables]
        nbytes = sum(v.size * 4 for v in ds.data_vars.values())
        ds.to_zarr(store, mode="w", zarr_format=3)
        t2 = time.perf_counter()
    print(json.dumps({"seconds": t2 - t1, "bytes": nbytes, "cluster_start_s": t1 - t0,
                      "workers": cores}))
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
    """The daily files, generated once (in a subprocess: this process stays small)."""
    outdir = DATA / f"weather-{GRID[0]}x{GRID[1]}"
    return [Path(p) for p in run_json(GENERATE, str(outdir), str(days), json.dumps(GRID))]


def run_json(
    code: str, *args: str, env: dict[str, str] | None = None, sample_memory: bool = False
) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line, as JSON.

    ``sample_memory``: also the process tree's peak RSS and PSS (``peak_rss_mb``,
    ``peak_pss_mb``), sampled from here: RSS every 0.1 s, PSS every 0.5 s. Reading a
    process's PSS (its smaps) takes 3 ms of kernel time; a thread inside the measured
    process that read every worker's every 0.1 s took 3-21 % of the ingest's throughput on
    2 cores (it held the GIL meanwhile), and did so from here too (the CPU).
    """
    command = [sys.executable, "-c", code, *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            text=True,
            env=None if env is None else os.environ | env,
        )
        peak_rss = peak_pss = 0
        for tick in itertools.count():
            if proc.poll() is not None:
                break
            if sample_memory:
                rss, pss = _tree_memory(proc.pid, pss=tick % 5 == 0)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.1)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command, stdout, stderr)
    result = json.loads(stdout.strip().splitlines()[-1])
    if sample_memory:
        result |= {"peak_rss_mb": peak_rss / 2**20, "peak_pss_mb": peak_pss / 2**20}
    return result


def _tree_memory(pid: int, *, pss: bool) -> tuple[int, int]:
    """RSS and, if ``pss``, PSS (else 0; 0 off Linux) of process ``pid`` and its
    descendants, in bytes."""
    total_rss = total_pss = 0
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for process in tree:
        try:
            memory = process.memory_full_info() if pss else process.memory_info()
        except psutil.Error:
            continue
        total_rss += memory.rss
        total_pss += getattr(memory, "pss", 0) if pss else 0
    return total_rss, total_pss


def mb_per_s(side: dict) -> float:
    return side["bytes"] / 1e6 / side["seconds"]


def compare(names: str, runs: Path, variables: str) -> None:
    """stpipe with its workers forced each way, and on a Dask cluster of processes."""
    for name, cluster, env in (
        ("threads", "local", {"STPIPE_INGEST_WORKERS": "threads"}),
        ("processes", "local", {"STPIPE_INGEST_WORKERS": "processes"}),
        ("dask LocalCluster of processes", "dask-processes", {}),
    ):
        workdir = str(runs / name.replace(" ", "-"))
        side = run_json(STPIPE_RUN, names, workdir, variables, cluster, env=env, sample_memory=True)
        print(
            f"stpipe, workers {name}: {mb_per_s(side):.1f} MB/s, "
            f"peak RSS {side['peak_rss_mb']:.0f} MB (proportional {side['peak_pss_mb']:.0f} MB)"
        )
        print_stages(side)


def print_stages(side: dict) -> None:
    """CPU used, where the ingest loop's own time went, and when worker processes were
    ready. CPU over wall time is the cores kept busy (worker processes count once they
    have exited)."""
    print(
        f"  CPU {side['cpu_s']:.1f} s ({side['cpu_s'] / side['bytes'] * 1e9:.2f} ms per "
        f"float32 MB), {side['cpu_s'] / side['seconds']:.1f} cores busy on average"
    )
    for line in side["stages"]:
        print(f"  {line}")


def run_sides(names: str, runs: Path, variables: str) -> tuple[dict, dict, dict]:
    """One run of each side on fresh stores: stpipe (its stages printed), naive, mfdataset."""
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    ours = run_json(STPIPE_RUN, names, str(runs / "stpipe"), variables, "local", sample_memory=True)
    print(f"stpipe, workers as the rule chose: {mb_per_s(ours):.1f} MB/s", flush=True)
    print_stages(ours)
    naive = run_json(NAIVE_RUN, names, str(runs / "naive.zarr"), variables)
    mfdataset = run_json(MFDATASET_RUN, names, str(runs / "mfdataset.zarr"), variables)
    print(
        f"naive {mb_per_s(naive):.1f} MB/s, mfdataset {mb_per_s(mfdataset):.1f} MB/s",
        flush=True,
    )
    stores = (Path(ours["store"]), runs / "naive.zarr", runs / "mfdataset.zarr")
    print(
        "store MB: stpipe {:.0f}, naive {:.0f}, mfdataset {:.0f}".format(
            *(tree_bytes(store) / 1e6 for store in stores)
        )
    )
    return ours, naive, mfdataset


def tree_bytes(path: Path) -> int:
    """The bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 files instead of 60")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run stpipe with threads, with processes, and on a Dask LocalCluster",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of the three sides; medians reported"
    )
    args = parser.parse_args(argv)
    days = 12 if args.quick else 60
    files = input_files(days)
    runs = DATA / "runs"
    variables = json.dumps(VARIABLES)
    names = json.dumps([str(f) for f in files])
    rounds = [run_sides(names, runs, variables) for _ in range(max(1, args.repeat))]
    if args.compare:
        compare(names, runs, variables)
    ours, naive, mfdataset = (_median_run(sides) for sides in zip(*rounds, strict=True))
    ours_mb_s, naive_mb_s, mf_mb_s = mb_per_s(ours), mb_per_s(naive), mb_per_s(mfdataset)
    if len(rounds) > 1:
        print(
            f"medians of {len(rounds)} rounds; ratio_naive per round "
            + " ".join(f"{mb_per_s(o) / mb_per_s(n):.2f}" for o, n, _ in rounds)
            + ", ratio_mfdataset per round "
            + " ".join(f"{mb_per_s(o) / mb_per_s(m):.2f}" for o, _, m in rounds)
        )
    print(
        f"{len(files)} files, {ours['bytes'] / 1e6:.0f} MB float32 on {os.cpu_count()} cores: "
        f"stpipe {ours['seconds']:.1f} s, naive {naive['seconds']:.1f} s, mfdataset "
        f"{mfdataset['seconds']:.1f} s (+{mfdataset['cluster_start_s']:.1f} s to start "
        f"{mfdataset['workers']} workers); peak RSS stpipe {ours['peak_rss_mb']:.0f} MB "
        f"(proportional {ours['peak_pss_mb']:.0f} MB; main process {ours['main_rss_mb']:.0f} MB), "
        f"naive {naive['peak_rss_mb']:.0f} MB"
    )
    print(
        f"stpipe_mb_per_s={ours_mb_s:.1f} naive_mb_per_s={naive_mb_s:.1f} "
        f"mfdataset_mb_per_s={mf_mb_s:.1f} ratio_naive={ours_mb_s / naive_mb_s:.2f} "
        f"ratio_mfdataset={ours_mb_s / mf_mb_s:.2f} noop_rerun_s={ours['noop_s']:.3f} "
        f"peak_rss_mb={ours['peak_rss_mb']:.0f} peak_pss_mb={ours['peak_pss_mb']:.0f} "
        f"rounds={len(rounds)}"
    )


def _median_run(runs: tuple[dict, ...]) -> dict:
    """The run of median throughput (the lower middle one of an even count)."""
    ordered = sorted(runs, key=mb_per_s)
    return ordered[(len(ordered) - 1) // 2]


if __name__ == "__main__":
    main()

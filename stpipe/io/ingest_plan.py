"""How many ingest workers, and whether threads or processes: the rule, from the machine.

Threads or processes
--------------------
In one process, reads take turns under the format libraries' lock
(:func:`stpipe.io.sources.canonical.library_lock`: netCDF-C and HDF5 are not thread-safe;
the NetCDF reader holds it only while netCDF4 reads the packed values, and unpacks outside
it) and the Python of zarr's writes and of the loop runs under the GIL: about
:data:`SERIAL_SHARE` of a file's CPU runs one file at a time, however many threads, while
checksums, unpacking, compression and file I/O run in parallel. Threads therefore keep
every core busy up to about ``1 / SERIAL_SHARE`` cores. Worker processes share no lock, but
they come from a launcher that imports numpy, zarr and the reader (neither xarray nor
pydantic: :mod:`stpipe.io.ingest_serve`), then forks them (no import each): they are ready
:data:`LAUNCH_S` seconds after the start, while :func:`bridging_threads` here (as many as
keep cores busy) do the work. With ``c`` the CPU seconds per MB of input files
(:data:`CPU_S_PER_MB`) and ``w`` workers, threads take ``MB · c · max(SERIAL_SHARE, 1 /
w)``, processes ``LAUNCH_S + (MB · c - LAUNCH_S / SERIAL_SHARE) / w``: they win once
threads would take longer than the launch.
:func:`plan_workers` takes

- ``workers``: the cores (``[dask] n_workers`` when set), the files to ingest, and what
  memory allows (half the available memory over :data:`DECODED_BYTES_PER_FILE_BYTE` × the
  largest file), whichever is least;
- worker processes when the input exceeds :func:`processes_pay_off_mb` (never below
  ``1 / SERIAL_SHARE`` workers, 4; above 0.33 GB of files), else that many worker
  threads (one per file for a nightly run).

Measured (``benchmarks/bench_ingest.py``, daily 256×256 int16-packed NetCDF files of 18.9 MB
float32; logs in ``benchmarks/results/``): threads cost 5-6 ms of CPU per MB on the 2-core
machine, 8.5-9.4 on the 16-core one, and are bound by the GIL there (1.6 cores busy of 2, 3 of
16); 16 worker processes cost 11-12 ms (each pays its first zarr write and page faults) and
were ready after 0.57-0.87 s there (1.4 s while they still imported xarray and pydantic, 0.9
while zarr loaded CuPy), then ingested the rest of 1132 MB at 1,000-1,400 MB/s.
``STPIPE_INGEST_WORKERS=threads`` or ``=processes`` (no bridging thread) overrides the rule;
``bench_ingest.py --compare`` measures both.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from stpipe.core.errors import StpipeError

MODE_ENV = "STPIPE_INGEST_WORKERS"
SERIAL_SHARE = 0.3
"""Share of a file's CPU that one process runs one file at a time, whatever its threads:
reading under the format libraries' lock (0.13, measured) and the Python of decoding, of
zarr's writes and of the loop under the GIL. Threads kept 2.8-3.1 cores busy on the 16-core
machine and 1.6 of 2 on the 2-core one (the GIL was held about 80 % of the time there)."""
LAUNCH_S = 1.0
"""Seconds from the start until the worker processes are ready (16 as soon as one): 0.57-0.87 s
on the 16-core machine, whose imports are slower (the launcher's take 0.5 s there, 0.21 s on
the 2-core machine, where 2 processes were ready after 0.21 s). Rounded up: the rule then
picks threads where processes would gain little."""
CPU_S_PER_MB = 0.010
"""CPU seconds per MB of input file (int16-packed NetCDF: checksum, decode, zarr write)."""
DECODED_BYTES_PER_FILE_BYTE = 4
"""Memory a worker needs per byte of its file: packed int16 decodes to twice its size in
float32, and zarr holds the compressed chunks and a chunk being compressed besides."""


@dataclass(frozen=True)
class WorkerPlan:
    """``processes`` worker processes, and ``threads`` workers in this process: with
    processes, threads that work only until they are ready."""

    threads: int
    processes: int


def plan_workers(files: list[Path], *, cores: int) -> WorkerPlan:
    """The pool for ingesting ``files`` on ``cores`` cores (the rule in the module docstring)."""
    sizes = [_size(p) for p in files] or [0]
    memory = psutil.virtual_memory().available // 2
    by_memory = max(1, memory // max(1, DECODED_BYTES_PER_FILE_BYTE * max(sizes)))
    workers = max(1, min(cores, len(files), by_memory))
    forced = os.environ.get(MODE_ENV)
    mode = forced or (
        "processes" if sum(sizes) / 1e6 > processes_pay_off_mb(workers) else "threads"
    )
    if mode not in ("threads", "processes"):
        raise StpipeError(f"{MODE_ENV}={mode!r}: expected 'threads' or 'processes'")
    if mode == "threads":
        return WorkerPlan(threads=workers, processes=0)
    return WorkerPlan(threads=0 if forced else bridging_threads(workers), processes=workers)


def processes_pay_off_mb(workers: int) -> float:
    """Input file MB above which ``workers`` worker processes finish sooner than threads.

    Threads take ``T = MB · c · max(SERIAL_SHARE, 1 / workers)``; processes
    ``LAUNCH_S + (MB · c - LAUNCH_S / SERIAL_SHARE) / workers``, the bridging threads doing
    threads' work until they are ready. So processes win once threads alone would take
    longer than the launch, ``T > LAUNCH_S``; never while threads keep every core busy.
    """
    if workers * SERIAL_SHARE <= 1:  # threads keep all the workers busy
        return float("inf")
    return LAUNCH_S / (CPU_S_PER_MB * SERIAL_SHARE)


def bridging_threads(workers: int) -> int:
    """Threads that work while ``workers`` worker processes start: as many as keep cores
    busy (about ``1 / SERIAL_SHARE``), at most ``workers``."""
    return min(workers, math.ceil(1 / SERIAL_SHARE))


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

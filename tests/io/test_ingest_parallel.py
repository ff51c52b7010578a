"""Ingest on worker processes: same store as on threads, the rule that picks them, and a
parallel ingest killed with SIGKILL mid-way (writes of several files in flight)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr

from stpipe.core.errors import StpipeError
from stpipe.io import ingest_plan
from stpipe.io.ingest_plan import (
    CPU_S_PER_MB,
    LAUNCH_S,
    MODE_ENV,
    SERIAL_SHARE,
    WorkerPlan,
    bridging_threads,
    plan_workers,
    processes_pay_off_mb,
)
from stpipe.io.ingest_workers import LocalPool
from stpipe.io.ingestion import ingest
from stpipe.io.manifest import read_manifest
from stpipe.io.settings import SourceSection
from stpipe.io.sources.canonical import library_lock
from stpipe.io.sources.kinds import read_source_file
from stpipe.io.store import open_store, staging_path
from stpipe.io.store_writes import CRASH_ENV

STEPS_PER_FILE = 6
N_FILES = 12
# Time chunks of two files: pairs of writes share a chunk (the later waits), others run
# at once; two spatial tiles per step.
PARALLEL_STORE = {"time_chunk": 2 * STEPS_PER_FILE, "spatial_chunk": [16, 10]}


@pytest.fixture
def feed_files(source_data, write_feed):
    return write_feed(source_data, steps_per_file=STEPS_PER_FILE)


def _store_contents(config) -> tuple[list, xr.Dataset]:
    manifest = read_manifest(config.store_path)
    files = [(f.name, f.sha256, f.offset, f.appended) for f in manifest.files]
    return files, open_store(config.store_path).load().drop_attrs()


def test_processes_build_the_same_store_as_threads(
    source_data, write_feed, make_config, monkeypatch, snapshot, assert_same_values
):
    write_feed(source_data, steps_per_file=STEPS_PER_FILE)
    # Files that take the paths the loop must order: one overlapping two files with the
    # same values (compared once the files before it are committed), one overlapping with
    # another value (refused), a copy of a file under another name (same sha256: skipped),
    # a broken one (refused).
    (recut,) = write_feed(source_data.isel(time=slice(4, 16)), steps_per_file=12, suffix="_r")
    changed = source_data.isel(time=slice(30, 36)).copy(deep=True)
    changed["t2m"][2, 3, 4] += 1.0
    (conflicting,) = write_feed(changed, steps_per_file=STEPS_PER_FILE, suffix="_v2")
    feed = recut.parent
    copy = shutil.copy(feed / "day_2024010212.nc", feed / "day_2024010212_copy.nc")
    (feed / "day_2024010300_broken.nc").write_bytes(b"not netcdf")
    results = {}
    # "bridged": the rule's own choice of processes, with a thread working until they start.
    monkeypatch.setattr(ingest_plan, "LAUNCH_S", 0.0)
    monkeypatch.setattr(ingest_plan, "SERIAL_SHARE", 1.0)
    for mode in ("threads", "processes", "bridged"):
        if mode == "bridged":
            monkeypatch.delenv(MODE_ENV)
        else:
            monkeypatch.setenv(MODE_ENV, mode)
        config = make_config(
            pipeline={"workdir": f"work-{mode}"},
            store=PARALLEL_STORE,
            source={"on_bad_file": "skip"},
            dask={"n_workers": 3},
        )
        report = ingest(config.ingest_job, progress=False)
        results[mode] = (report.ingested, report.skipped, report.refused, report.steps_added)
        results[mode, "store"] = _store_contents(config)
        assert_same_values(open_store(config.store_path).load(), source_data)
        before = snapshot(config.store_path)
        rerun = ingest(config.ingest_job, progress=False)
        assert (rerun.ingested, rerun.steps_added) == ([], 0)
        assert snapshot(config.store_path) == before, f"{mode}: a re-run must be a no-op"

    assert results["processes"] == results["threads"] == results["bridged"]
    ingested, skipped, refused, steps = results["processes"]
    assert (len(ingested), steps) == (N_FILES, 72)
    assert recut in ingested, "its steps 06-15 after the first file's 00-05"
    assert (feed / "day_2024010106.nc", "identical to stored data") in skipped
    assert (Path(copy), "already ingested (same sha256)") in skipped
    assert [p for p, _ in refused] == [conflicting, feed / "day_2024010300_broken.nc"]
    assert "with different values (first in 't2m' at 2024-01-02T08:00:00)" in refused[0][1]
    files_t, values_t = results["threads", "store"]
    for mode in ("processes", "bridged"):
        files, values = results[mode, "store"]
        assert files == files_t, mode
        xr.testing.assert_identical(values, values_t)


def _sized_files(where: Path, n: int, size: int) -> list[Path]:
    files = []
    for i in range(n):
        path = where / f"f{i:02d}.nc"
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: the rule reads only sizes
        files.append(path)
    return files


def test_plan_picks_threads_while_they_keep_every_core_busy(tmp_path, monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    files = _sized_files(tmp_path, 40, 50_000_000)

    assert plan_workers(files, cores=2) == WorkerPlan(threads=2, processes=0)
    assert plan_workers(files, cores=16) == WorkerPlan(threads=4, processes=16), "2 GB"
    assert plan_workers(files[:6], cores=16) == WorkerPlan(threads=6, processes=0), "300 MB"
    assert plan_workers(files[:7], cores=16) == WorkerPlan(threads=4, processes=7), "350 MB"
    assert plan_workers(files, cores=4) == WorkerPlan(threads=4, processes=4)
    assert plan_workers(files, cores=3) == WorkerPlan(threads=3, processes=0)
    assert plan_workers(files[:1], cores=16) == WorkerPlan(threads=1, processes=0)
    assert plan_workers(files[:2], cores=8) == WorkerPlan(threads=2, processes=0)
    assert plan_workers(files[:3], cores=3) == WorkerPlan(threads=3, processes=0)
    monkeypatch.setenv(MODE_ENV, "processes")
    assert plan_workers(files[:3], cores=2) == WorkerPlan(threads=0, processes=2)
    monkeypatch.setenv(MODE_ENV, "threads")
    assert plan_workers(files, cores=16) == WorkerPlan(threads=16, processes=0)
    monkeypatch.setenv(MODE_ENV, "fibers")
    with pytest.raises(StpipeError, match="STPIPE_INGEST_WORKERS='fibers'"):
        plan_workers(files, cores=2)


def test_processes_pay_off_where_threads_run_out_of_parallel_work():
    assert processes_pay_off_mb(1) == processes_pay_off_mb(2) == float("inf")
    most_threads_keep_busy = int(1 / SERIAL_SHARE)
    assert processes_pay_off_mb(most_threads_keep_busy) == float("inf")
    for workers in (most_threads_keep_busy + 1, 8, 16, 32):
        mb = processes_pay_off_mb(workers)
        threads = mb * CPU_S_PER_MB * max(SERIAL_SHARE, 1 / workers)
        bridged = min(bridging_threads(workers), 1 / SERIAL_SHARE)  # cores they keep busy
        processes = LAUNCH_S + (mb * CPU_S_PER_MB - LAUNCH_S * bridged) / workers
        assert threads == pytest.approx(processes)
        assert threads == pytest.approx(LAUNCH_S), "threads would take as long as the launch"
    assert bridging_threads(16) == bridging_threads(4) == 4 > 1 / SERIAL_SHARE
    assert bridging_threads(2) == 2


def test_plan_fits_the_decoded_files_in_memory(tmp_path, monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    memory = psutil.virtual_memory()._replace(available=24_000_000_000)
    monkeypatch.setattr(ingest_plan.psutil, "virtual_memory", lambda: memory)
    files = _sized_files(tmp_path, 8, 1_000_000_000)

    # Half of 24 GB over 4 × 1 GB per decoded file: 3 workers, not 64.
    assert plan_workers(files, cores=64) == WorkerPlan(threads=3, processes=0)


def test_a_worker_takes_its_next_file_only_once_it_has_written_or_dropped_one(feed_files, tmp_path):
    source = SourceSection(kind="netcdf", paths="feed/*.nc", variables=["t2m", "u10"])
    with LocalPool(source, tmp_path / "store.zarr", threads=2, processes=0) as pool:
        decodings = [pool.decode(path) for path in feed_files]
        for decoding in decodings[:2]:
            assert decoding.described().times.size == STEPS_PER_FILE
        assert [d.started for d in decodings] == [True, True] + [False] * (N_FILES - 2)

        decodings[1].release()
        decodings[2].described()
        assert [d.started for d in decodings[:4]] == [True, True, True, False]
        decodings[0].release()
        assert decodings[3].described().times[0] == np.datetime64("2024-01-01T18:00")
        assert [d.started for d in decodings[:5]] == [True] * 4 + [False]


def test_every_worker_process_takes_a_file(feed_files, tmp_path):
    source = SourceSection(kind="netcdf", paths="feed/*.nc", variables=["t2m", "u10"])
    with LocalPool(source, tmp_path / "store.zarr", threads=0, processes=3) as pool:
        decodings = [pool.decode(path) for path in feed_files[:4]]
        deadline = time.monotonic() + 120
        while not all(d.started for d in decodings[:3]) and time.monotonic() < deadline:
            pool.pump(lambda: False, block=False)
            time.sleep(0.01)
        # Each holds an undecided file: three files taken means three workers alive.
        assert [d.started for d in decodings] == [True, True, True, False]
        times = [d.described().times[0] for d in decodings[:3]]
        assert times == [np.datetime64(f"2024-01-01T{h:02d}:00") for h in (0, 6, 12)]


def _libraries(process: psutil.Process) -> set[str]:
    return {m.path for m in process.memory_maps() if ".so" in Path(m.path).name}


def test_worker_processes_load_no_library_of_their_own(feed_files, tmp_path):
    """The launcher loads, before it forks, every library a worker needs for its files, so
    a worker that has decoded files maps only libraries it inherited; and none it does not
    need: neither xarray's pandas nor pydantic (the configuration's schema), which took
    most of the launcher's start, nor scipy."""
    source = SourceSection(kind="netcdf", paths="feed/*.nc", variables=["t2m", "u10"])
    with LocalPool(source, tmp_path / "store.zarr", threads=0, processes=2) as pool:
        decodings = [pool.decode(path) for path in feed_files[:2]]
        assert all(d.described().times.size == STEPS_PER_FILE for d in decodings)
        (launcher,) = [p for p in psutil.Process().children() if "launch(" in " ".join(p.cmdline())]
        workers = launcher.children()
        assert len(workers) == 2
        inherited = _libraries(launcher)
        assert any("/numpy/" in path for path in inherited)
        assert any("netCDF4" in path for path in inherited)
        for unneeded in ("/pandas/", "pydantic_core", "/scipy/"):
            assert not [path for path in inherited if unneeded in path], unneeded
        for worker in workers:
            assert _libraries(worker) - inherited == set()
        for decoding in decodings:
            decoding.release()


def test_the_launcher_never_imports_cupy_which_zarr_would(feed_files, tmp_path, monkeypatch):
    """Where CuPy is installed zarr imports it (for GPU buffers workers never use): a stand-in
    CuPy on the launcher's path records any import of it (and then says it is missing)."""
    fake = tmp_path / "site"
    (fake / "cupy").mkdir(parents=True)
    marker = tmp_path / "cupy-imported"
    (fake / "cupy" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('a stand-in')\n"
    )
    monkeypatch.syspath_prepend(str(fake))  # the launcher gets this process's path
    source = SourceSection(kind="netcdf", paths="feed/*.nc", variables=["t2m", "u10"])
    with LocalPool(source, tmp_path / "store.zarr", threads=0, processes=1) as pool:
        decoding = pool.decode(feed_files[0])
        assert decoding.described().times.size == STEPS_PER_FILE
        decoding.release()
    assert not marker.exists(), "the launcher imported cupy"


def test_bridging_threads_and_worker_processes_hold_at_most_processes_plus_one_files(
    feed_files, tmp_path
):
    """Three threads bridge the start of two worker processes: together they never hold
    more than three decoded files, though five workers could take one each."""
    source = SourceSection(kind="netcdf", paths="feed/*.nc", variables=["t2m", "u10"])
    with LocalPool(source, tmp_path / "store.zarr", threads=3, processes=2) as pool:
        decodings = [pool.decode(path) for path in feed_files[:8]]
        held_at_once, released = [], set()
        for decoding in decodings[:3]:
            decoding.described()
        pool.pump(lambda: pool.processes_ready)
        for decoding in decodings:
            assert decoding.described().times.size == STEPS_PER_FILE
            held_at_once.append(sum(d.started and d not in released for d in decodings))
            decoding.release()
            released.add(decoding)
        workers = {d.worker.process for d in decodings}
    assert max(held_at_once) == 3
    assert workers == {False, True}, "threads bridged, then processes took over"


# --- a parallel ingest killed mid-way ---


def _run_cli(config_path: Path, *, crash_at: int) -> psutil.Popen:
    env = os.environ | {CRASH_ENV: str(crash_at), MODE_ENV: "processes"}
    return psutil.Popen(
        [sys.executable, "-m", "stpipe", "-q", "ingest", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for_workers(proc: psutil.Popen, timeout: float = 120) -> list[psutil.Process]:
    """The launcher and worker processes of a running ingest, once they are all there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        tree = proc.children(recursive=True)
        if len(tree) >= 4:  # the launcher and its three workers
            return tree
        time.sleep(0.01)
    return proc.children(recursive=True)


@pytest.mark.slow
def test_parallel_ingest_killed_mid_way_keeps_whole_files_and_resumes(feed_files, make_config):
    """SIGKILL at the ingest process's N-th store write (it writes staging, the time
    coordinate and the commits; its three worker processes write the data meanwhile), then
    no worker outlives it, the store holds whole files only, and an ingest completes it to
    exactly the clean store."""
    reference = make_config(pipeline={"workdir": "reference"}, store=PARALLEL_STORE)
    ingest(reference.ingest_job, progress=False)
    ref_files, ref_values = _store_contents(reference)
    mid_way = 0
    # Of its ~40 writes: a few files in, half-way, near the end.
    for crash_at in (12, 20, 28):
        config = make_config(
            pipeline={"workdir": f"kill{crash_at}"}, store=PARALLEL_STORE, dask={"n_workers": 3}
        )
        proc = _run_cli(config.path, crash_at=crash_at)
        workers = _wait_for_workers(proc)
        code = proc.wait(timeout=300)
        if code == 0:
            continue  # the ingest had fewer writes than that
        assert code == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        assert workers, "the ingest started no worker processes"
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"worker processes outlived the killed ingest: {alive}"
        if config.store_path.exists():
            files, values = _store_contents(config)
            length = values.sizes["time"]
            assert length % STEPS_PER_FILE == 0 and files == ref_files[: len(files)]
            xr.testing.assert_identical(values, ref_values.isel(time=slice(0, length)))
            mid_way += 0 < len(files) < N_FILES
        report = ingest(config.ingest_job, progress=False)
        assert report.refused == [], report.summary()
        files, values = _store_contents(config)
        assert files == ref_files
        xr.testing.assert_identical(values, ref_values)
        assert not staging_path(config.store_path).exists()
        assert np.isfinite(values["t2m"].values).all()
    assert mid_way >= 2, "no kill landed between the first and the last commit"


def test_a_netcdf_read_waits_for_the_format_libraries_lock(feed_files):
    """Worker threads share netCDF-C: the reader reads only while it holds the libraries'
    lock, the one xarray's backends take in a process that has loaded xarray."""
    source = SourceSection(kind="netcdf", paths="feed/*.nc", variables=["t2m", "u10"])
    with ThreadPoolExecutor(1) as pool:
        with library_lock():
            reading = pool.submit(read_source_file, feed_files[0], source)
            time.sleep(0.3)
            assert not reading.done(), "the reader did not wait for the lock"
        assert reading.result(timeout=60).time.size == STEPS_PER_FILE
    xarray_locks = {xr.backends.locks.HDF5_LOCK, xr.backends.locks.NETCDFC_LOCK}
    assert set(library_lock().locks) == xarray_locks

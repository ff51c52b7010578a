"""Crash safety: `stpipe ingest` killed with SIGKILL at every store write, then resumed.

``STPIPE_CRASH_AT_WRITE=N`` makes the ingest process SIGKILL itself just before its N-th
store write, so the sweep N = 1, 2, … covers every state between two writes of a real
ingest, from the staging store to the last commit. A second test kills at wall-clock
moments, which also lands inside writes. After each kill the store must open and show
whole committed files only; an ingest then completes it to exactly the clean result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from stpipe.app.config import load_config
from stpipe.core.errors import StoreError
from stpipe.io.ingestion import ingest
from stpipe.io.manifest import read_manifest
from stpipe.io.store import open_store, staging_path
from stpipe.io.store_writes import CRASH_ENV

STEPS_PER_FILE = 10


def _cli(config_path: Path, *, crash_at: int | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at is not None:
        env[CRASH_ENV] = str(crash_at)
    return subprocess.Popen(
        [sys.executable, "-m", "stpipe", "-q", "ingest", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def pipeline(source_data, write_feed, make_config, tmp_path):
    """Two 10-step files; 16-step time chunks, two tiles: the second file rewrites the
    chunk the first one started. Returns (config path, clean reference store path)."""
    write_feed(source_data.isel(time=slice(0, 2 * STEPS_PER_FILE)), steps_per_file=10)
    config = make_config(store={"time_chunk": 16, "spatial_chunk": [16, 10]})
    reference = ingest(config.ingest_job, progress=False)
    assert len(reference.ingested) == 2
    ref_store = tmp_path / "reference.zarr"
    shutil.move(config.store_path, ref_store)
    shutil.rmtree(config.workdir)
    return config.path, ref_store


def _copy_pipeline(config_path: Path, where: Path) -> Path:
    where.mkdir()
    shutil.copytree(config_path.parent / "feed", where / "feed")
    return Path(shutil.copy(config_path, where / "pipe.toml"))


def _check_killed_store(config_path: Path, ref_store: Path) -> int:
    """Invariants after a kill; returns the committed length."""
    config = load_config(config_path)
    if not config.store_path.exists():
        with pytest.raises(StoreError):
            open_store(config.store_path)
        return 0
    manifest = read_manifest(config.store_path)
    reference = read_manifest(ref_store)
    length = manifest.committed_length
    assert length % STEPS_PER_FILE == 0, f"partial file committed: {length} steps"
    assert manifest.files == reference.files[: len(manifest.files)]
    expected = open_store(ref_store).isel(time=slice(0, length)).load()
    for ds in (open_store(config.store_path).load(), xr.open_zarr(config.store_path).load()):
        assert ds.sizes["time"] == length
        xr.testing.assert_identical(
            ds[["t2m", "u10"]].drop_attrs(), expected[["t2m", "u10"]].drop_attrs()
        )
        assert not np.isnan(ds["t2m"].values).any()
    return length


def _resume_and_compare(config_path: Path, ref_store: Path, *, resumed: bool = False) -> None:
    """Complete the killed ingest (unless ``resumed`` already) and compare with the clean
    store: manifest files, coords, values, array shapes, no staging left."""
    config = load_config(config_path)
    if not resumed:
        report = ingest(config.ingest_job, progress=False)
        assert report.refused == [], report.summary()
    assert read_manifest(config.store_path).files == read_manifest(ref_store).files
    xr.testing.assert_identical(
        open_store(config.store_path).load().drop_attrs(), open_store(ref_store).load().drop_attrs()
    )
    group = zarr.open_group(config.store_path, mode="r", use_consolidated=False)
    assert {group[n].shape[0] for n in ("t2m", "u10", "time")} == {2 * STEPS_PER_FILE}
    assert not staging_path(config.store_path).exists()


# Runs the sweep in one launcher process that imports stpipe once and forks a child per
# run; each child runs the CLI's main (`stpipe ingest CONFIG`), a real process killed for
# real, without paying Python's start-up and imports ~60 times (the config's, torch among
# them, were 85 of the sweep's 97 s when each child made them).
SWEEP = """
import json, os, shutil, sys
from pathlib import Path
import dask.array, distributed, xarray, zarr
import stpipe.app.cli, stpipe.app.config, stpipe.io.ingestion, stpipe.io.sources.netcdf

xarray.Dataset({"warm_up": ("x", [1.0])})  # xarray's lazy imports, done once before forking
xarray.backends.list_engines()

def run(config, crash_at=None):
    pid = os.fork()
    if pid == 0:
        if crash_at is not None:
            os.environ[sys.argv[3]] = str(crash_at)
        os._exit(stpipe.app.cli.main(["-q", "ingest", config]))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

template, base = Path(sys.argv[1]), Path(sys.argv[2])
results = []
for n in range(1, 200):
    run_dir = base / f"kill{n:03d}"
    shutil.copytree(template, run_dir)
    code = run(str(run_dir / "pipe.toml"), crash_at=n)
    if code == 0:
        break
    shutil.copytree(run_dir, base / f"killed{n:03d}")
    results.append([n, code, run(str(run_dir / "pipe.toml"))])
print(json.dumps(results))
"""


@pytest.mark.slow
def test_kill_at_every_store_write_then_resume(pipeline, tmp_path):
    config_path, ref_store = pipeline
    template = tmp_path / "template"
    _copy_pipeline(config_path, template)
    (tmp_path / "runs").mkdir()

    out = subprocess.run(
        [sys.executable, "-c", SWEEP, str(template), str(tmp_path / "runs"), CRASH_ENV],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )

    runs = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(runs) >= 20, f"only {len(runs)} write points: {out.stderr[-2000:]}"
    assert {(code, resumed) for _, code, resumed in runs} == {(-signal.SIGKILL, 0)}
    lengths = [
        _check_killed_store(tmp_path / "runs" / f"killed{n:03d}" / "pipe.toml", ref_store)
        for n, _, _ in runs
    ]
    # Every state is seen: nothing yet, the first file, and both (killed while the ingest
    # trims the arrays it had grown ahead back to the committed length).
    assert set(lengths) == {0, STEPS_PER_FILE, 2 * STEPS_PER_FILE}, lengths
    for n, _, _ in runs:
        _resume_and_compare(
            tmp_path / "runs" / f"kill{n:03d}" / "pipe.toml", ref_store, resumed=True
        )


def test_kill_at_wall_clock_moments_then_resume(pipeline, tmp_path):
    config_path, ref_store = pipeline
    clean_config = _copy_pipeline(config_path, tmp_path / "clean")
    started = time.perf_counter()
    assert _cli(clean_config).wait(timeout=120) == 0
    duration = time.perf_counter() - started
    for i, fraction in enumerate((0.85, 0.95)):
        run_config = _copy_pipeline(config_path, tmp_path / f"delay{i}")
        proc = _cli(run_config)
        try:
            proc.communicate(timeout=duration * fraction)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        _check_killed_store(run_config, ref_store)
        _resume_and_compare(run_config, ref_store)

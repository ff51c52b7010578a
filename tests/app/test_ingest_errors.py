"""`stpipe ingest` when the file system refuses its writes: file size limit, disk full,
read-only workdir or store. Each is one line on stderr naming the path and the cause, a
non-zero exit, and the store as it was; the next ingest on a healthy disk completes it.

Disk full and read-only run `stpipe ingest` in a user and mount namespace (``unshare``)
over a small tmpfs or a read-only bind mount; they are skipped where namespaces are not
allowed.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from stpipe.io.ingestion import ingest
from stpipe.io.manifest import store_digest
from stpipe.io.store import open_store

STPIPE = [sys.executable, "-m", "stpipe", "-q", "ingest"]


def _namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_allowed(), reason="unshare -rm (user + mount namespaces) not allowed"
)


@pytest.fixture
def one_day_stored(source_data, write_feed, make_config):
    """A store holding day 1; days 2 and 3 waiting in the feed. Returns (config, the
    store's digest and data)."""
    _, *rest = write_feed(source_data)
    hidden = [p.rename(p.with_suffix(".later")) for p in rest]
    config = make_config()
    ingest(config.ingest_job, progress=False)
    for path in hidden:
        path.rename(path.with_suffix(".nc"))
    return config, (store_digest(config.store_path), open_store(config.store_path).load())


def assert_unchanged(config, before: tuple[str, xr.Dataset]) -> None:
    digest, data = before
    assert store_digest(config.store_path) == digest
    xr.testing.assert_identical(open_store(config.store_path).load(), data)


def assert_heals(config, source_data, assert_same_values) -> None:
    """An ingest on a healthy disk ends in the clean result."""
    report = ingest(config.ingest_job, progress=False)
    assert len(report.ingested) == 2 and report.refused == [], report.summary()
    assert_same_values(open_store(config.store_path).load(), source_data)


def one_error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_file_size_limit(one_day_stored, source_data, assert_same_values):
    config, before = one_day_stored

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    run = subprocess.run(
        [*STPIPE, str(config.path)], preexec_fn=limit_file_size, capture_output=True, text=True
    )

    assert re.fullmatch(
        rf"stpipe ingest: error: {re.escape(str(config.store_path))}/(t2m|u10): cannot write "
        r"steps 24…47: File too large \(EFBIG\); the committed store is unchanged",
        one_error_line(run),
    ), run.stderr
    assert_unchanged(config, before)
    assert_heals(config, source_data, assert_same_values)


def _tmpfs_bytes(directory: Path) -> int:
    """What ``directory`` takes on a tmpfs: whole 4 KiB pages per file."""
    pages = sum(-(-p.stat().st_size // 4096) for p in directory.rglob("*") if p.is_file())
    return 4096 * pages


@needs_namespaces
def test_disk_full(one_day_stored, source_data, assert_same_values, tmp_path):
    config, before = one_day_stored
    workdir, saved, after = config.workdir, tmp_path / "saved", tmp_path / "after"
    shutil.copytree(workdir, saved)
    # Room for the copy and a little more: the second day's chunks do not fit.
    size = _tmpfs_bytes(saved) + 16 * 1024
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {workdir} && cp -a {saved}/. {workdir}/ && "
        f"{shlex.join([*STPIPE, str(config.path)])}; rc=$?; mkdir {after}; "
        f"cp -a {workdir}/. {after}/; exit $rc"
    )

    run = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)

    assert re.fullmatch(
        rf"stpipe ingest: error: {re.escape(str(config.store_path))}/\w+: cannot write steps "
        r"24…47: No space left on device \(ENOSPC\); the committed store is unchanged",
        one_error_line(run),
    ), run.stderr
    shutil.rmtree(workdir)
    after.rename(workdir)
    assert_unchanged(config, before)
    assert_heals(config, source_data, assert_same_values)


@needs_namespaces
@pytest.mark.parametrize("read_only", ["workdir", "store"])
def test_read_only(one_day_stored, source_data, assert_same_values, read_only):
    config, before = one_day_stored
    target = config.workdir if read_only == "workdir" else config.store_path
    script = (
        f"mount --bind {target} {target} && mount -o remount,ro,bind {target} && "
        f"exec {shlex.join([*STPIPE, str(config.path)])}"
    )

    run = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)

    line = one_error_line(run)
    if read_only == "workdir":
        assert line == (
            f"stpipe ingest: error: {config.workdir}: cannot take the store's writer lock (a "
            f"writable workdir is needed): Read-only file system (EROFS) at "
            f"{config.workdir / 'store.lock'}; the committed store is unchanged"
        )
    else:
        assert re.fullmatch(
            rf"stpipe ingest: error: {re.escape(str(config.store_path))}: cannot resize the "
            r"arrays to \d+ steps: Read-only file system \(EROFS\); the committed store is "
            r"unchanged",
            line,
        ), line
    assert_unchanged(config, before)
    assert_heals(config, source_data, assert_same_values)


def test_unwritable_checksum_cache_is_only_a_warning(
    one_day_stored, source_data, assert_same_values
):
    config, _ = one_day_stored
    cache = config.workdir / ".sha256-cache.json"
    cache.unlink()
    cache.mkdir()  # the cache's place is taken: replacing it fails with EISDIR

    wide = os.environ | {"COLUMNS": "500"}  # (log lines are never wrapped; kept for older rich)

    run = subprocess.run([*STPIPE, str(config.path)], capture_output=True, text=True, env=wide)

    assert run.returncode == 0, run.stderr
    assert f"cannot write the checksum cache {cache}: Is a directory" in run.stderr
    assert_same_values(open_store(config.store_path).load(), source_data)
    assert not [p for p in os.listdir(config.workdir) if p.endswith(".partial")]

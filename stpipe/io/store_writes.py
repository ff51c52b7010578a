"""Region writes and reads of the store's arrays, where the decoded data lives.

An ingest worker (a thread of the ingest, or a worker process) writes the steps of the file
it holds into the arrays (:func:`write_steps`) under the shared :func:`data_write_lock`;
:mod:`stpipe.io.store` (which imports xarray) does the rest: layout, resizing, commits and
recovery. This module needs zarr and numpy only, so worker processes start without
xarray.

A write the file system refuses (disk full, file size limit, read-only) raises
:class:`StoreWriteError` naming the path and the cause. Set ``STPIPE_CRASH_AT_WRITE=N`` to
make the process SIGKILL itself just before its N-th store write (crash tests).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from stpipe.core.errors import StoreError

CRASH_ENV = "STPIPE_CRASH_AT_WRITE"


class StoreWriteError(StoreError):
    """The file system refused a write to the store or its workdir (disk full, file size
    limit, read-only): a problem of the store, not of the file being ingested, so ingest
    stops. What was committed before stays committed."""


@contextlib.contextmanager
def os_errors(path: Path, doing: str) -> Iterator[None]:
    """Raise OSErrors inside as one-line StoreWriteErrors naming ``path`` and the cause."""
    try:
        yield
    except OSError as exc:
        code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
        # zarr writes through temporary ``*.partial`` files that are gone by now: not named.
        name = str(exc.filename or "")
        where = f" at {name}" if name not in ("", str(path)) and ".partial" not in name else ""
        raise StoreWriteError(
            f"{path}: cannot {doing}: {exc.strerror or exc}{code}{where}; the committed "
            "store is unchanged"
        ) from exc


@contextlib.contextmanager
def data_write_lock(store_path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the lock that orders region writes (``shared``) before recovery (exclusive).

    Region writes may run in worker processes that outlive a killed ingest; recovery
    waits for them, so it never races an orphaned write. Writers share it: concurrent
    writes touch disjoint chunks (the ingest orders writes that share one).
    """
    fd = os.open(store_path.parent / "store.write.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_steps(
    store_path: Path, arrays: Mapping[str, np.ndarray], *, first: int, offset: int
) -> int:
    """Write ``arrays`` (store name → ``[time, row, col]``) from step ``first`` on at store
    positions ``offset``…; returns the float32 bytes written.

    Every append rewrites the one chunk of the time coordinate, so parallel writers leave
    it out and the ingest loop writes it (:func:`stpipe.io.store.write_times`).
    """
    group = zarr.open_group(store=local_store(store_path), mode="r+", use_consolidated=False)

    def write(name: str) -> int:
        values = arrays[name][first:]
        with os_errors(store_path / name, f"write steps {offset}…{offset + len(values) - 1}"):
            group[name][offset : offset + len(values)] = values
        return values.nbytes

    # A thread per array keeps all their chunks in zarr's codec pipeline at once.
    with data_write_lock(store_path, shared=True), ThreadPoolExecutor(len(arrays)) as pool:
        return sum(pool.map(write, list(arrays)))


def read_steps(store_path: Path, names: list[str], index: np.ndarray) -> dict[str, np.ndarray]:
    """Committed values of ``names`` at store positions ``index`` (sorted)."""
    group = zarr.open_group(store=local_store(store_path), mode="r", use_consolidated=True)
    lo, hi = int(index[0]), int(index[-1]) + 1
    return {name: group[name][lo:hi][index - lo] for name in names}


class _CrashingStore(LocalStore):
    """A LocalStore whose writes count toward ``STPIPE_CRASH_AT_WRITE``."""

    async def set(self, key: str, value: Any) -> None:
        crash_point()
        await super().set(key, value)


def local_store(path: Path) -> LocalStore:
    """The zarr store at ``path`` (counting writes toward ``STPIPE_CRASH_AT_WRITE``)."""
    return _CrashingStore(path) if os.environ.get(CRASH_ENV) else LocalStore(path)


_writes = 0
_writes_lock = threading.Lock()


def crash_point() -> None:
    """Count one store write; SIGKILL this process at the ``STPIPE_CRASH_AT_WRITE``-th."""
    limit = os.environ.get(CRASH_ENV)
    if not limit:
        return
    global _writes
    with _writes_lock:
        _writes += 1
        if _writes >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)

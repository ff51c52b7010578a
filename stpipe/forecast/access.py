"""Where a forecast store lives and how a process reaches it.

A store is a local path (or ``file://`` URL) or an fsspec URL (``s3://``…). Writers of a
local store hold ``<store>.lock`` beside it (an exclusive ``flock``, which the kernel
releases when the holder dies, even by SIGKILL) and wait for it up to a timeout; object
stores have no lock. Storage failures (OSError, and the client errors of object stores)
become one-line StoreErrors naming the store and the cause.

``STPIPE_CRASH_AT_WRITE=N`` makes the process SIGKILL itself just before its N-th write
or delete in a local store opened for writing (crash tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import fsspec
import zarr
import zarr.storage
from zarr.storage import LocalStore

from stpipe.core.errors import StoreError
from stpipe.io.store_writes import CRASH_ENV, crash_point

ROOT = "zarr.json"
LOCK_POLL_S = 0.05

StorageOptions = Mapping[str, Any]


def check_forecast_store(store: str, *, storage_options: StorageOptions | None = None) -> None:
    """Fail early, before a forecast is computed, if ``store`` cannot take one: StoreError
    naming the store and the cause when a local store's directory (or the store itself) is
    not writable, or a URL store's endpoint cannot be reached."""
    with io_errors(store, "cannot write the forecast store"):
        path = local_path(store)
        if path is None:
            fs, root = fsspec.core.url_to_fs(store, **dict(storage_options or {}))
            with contextlib.suppress(FileNotFoundError):
                fs.cat_file(f"{root.rstrip('/')}/{ROOT}")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644))
        if path.is_dir():
            tempfile.TemporaryFile(dir=path).close()


def local_path(store: str) -> Path | None:
    """The directory of a local store (a path or ``file://`` URL); None for other URLs."""
    if "://" in store and not store.startswith("file://"):
        return None
    return Path(store.removeprefix("file://"))


def zarr_store(
    store: str, storage_options: StorageOptions | None, *, read_only: bool
) -> zarr.abc.store.Store:
    path = local_path(store)
    if path is None:
        return zarr.storage.FsspecStore.from_url(
            store, storage_options=dict(storage_options or {}), read_only=read_only
        )
    crashing = os.environ.get(CRASH_ENV) and not read_only
    return (_CrashingStore if crashing else LocalStore)(path, read_only=read_only)


class _CrashingStore(LocalStore):
    """A LocalStore whose writes and deletes count toward ``STPIPE_CRASH_AT_WRITE``."""

    async def set(self, key: str, value: Any) -> None:
        crash_point()
        await super().set(key, value)

    async def delete(self, key: str) -> None:
        crash_point()
        await super().delete(key)


def lock_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.lock")


@contextlib.contextmanager
def write_lock(store: str, *, timeout_s: float) -> Iterator[None]:
    """Hold the exclusive writer's lock of a local store, waiting up to ``timeout_s``."""
    path = local_path(store)
    if path is None:
        yield
        return
    with io_errors(store, "cannot write the forecast store"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with io_errors(store, "cannot lock the forecast store"):
            _wait_for_lock(fd, store, timeout_s=timeout_s)
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with contextlib.suppress(OSError):  # who holds it: a courtesy, even on a full disk
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _wait_for_lock(fd: int, store: str, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
                raise StoreError(
                    f"{store}: another process ({holder}) kept writing this forecast store "
                    f"for {timeout_s:g} s ([forecast] lock_timeout_s); try again later"
                ) from None
            time.sleep(LOCK_POLL_S)


@cache
def io_error_types() -> tuple[type[BaseException], ...]:
    """What storage I/O raises: OSError, and the client errors of object stores."""
    types: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):  # botocore: only with s3fs
        from botocore.exceptions import BotoCoreError

        types.append(BotoCoreError)
    with contextlib.suppress(ImportError):  # aiohttp: only with fsspec's HTTP filesystem
        from aiohttp import ClientError

        types.append(ClientError)
    return tuple(types)


@contextlib.contextmanager
def io_errors(store: str, action: str) -> Iterator[None]:
    """Storage I/O failures inside as one-line StoreErrors: ``<store>: <action>: <cause>``."""
    try:
        yield
    except StoreError:
        raise
    except io_error_types() as exc:
        raise StoreError(f"{store}: {action}: {describe_io_error(exc)}") from None


def describe_io_error(exc: BaseException) -> str:
    """What went wrong, on one line: the OS's words and the file, or the client's message."""
    if type(exc).__module__ == "builtins" and isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())

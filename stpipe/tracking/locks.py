"""File locks in the workdir around what MLflow cannot make atomic.

- :func:`workdir_lock`: one holder at a time, the others wait up to a timeout (promotion:
  from scoring the champion to setting the alias); :func:`file_lock` is the same lock
  raising :class:`LockTimeout` for callers that word the error themselves (the flows'
  pipeline lock);
- :func:`run_lease` / :func:`abandoned`: a training run holds its lease while its process
  lives, so a later job can tell a run left RUNNING by a killed process from a live one.

All are ``flock`` locks: the kernel releases them when the holder dies, even by SIGKILL.
They serialise processes that share the workdir's filesystem (one machine, or a shared
filesystem with working ``flock``), whatever the tracking backend.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from stpipe.core.errors import TrackingError

POLL_S = 0.2


def _holder() -> bytes:
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class LockTimeout(Exception):
    """Another process held the lock file ``path`` for the ``timeout_s`` seconds this one
    waited; ``holder`` says who (pid, host, since when) as the holder wrote it."""

    def __init__(self, path: Path, holder: str, timeout_s: float) -> None:
        self.path, self.holder, self.timeout_s = path, holder, timeout_s
        super().__init__(f"{path}: held by {holder} for the {timeout_s:g} s this process waited")


@contextlib.contextmanager
def file_lock(path: Path, *, timeout_s: float) -> Iterator[None]:
    """Hold the lock file ``path`` (created if missing) for the block, writing this process
    into it; waits up to ``timeout_s`` (0: not at all) for another holder, then LockTimeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
                raise LockTimeout(path, holder, timeout_s)
            time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def workdir_lock(path: Path, *, timeout_s: float, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` (created if missing) for the block.

    Waits up to ``timeout_s`` for another holder; then TrackingError naming ``what``, the
    file and the holder (pid, host, since when).
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, timeout_s=timeout_s))
        except LockTimeout as exc:
            raise TrackingError(
                f"{path}: cannot {what}: another job ({exc.holder}) held the lock for the "
                f"{timeout_s:g} s this job waited; try again when it has finished"
            ) from None
        yield


LEASE_SUFFIX = ".lease"


def _lease(directory: Path, run_id: str) -> Path:
    return directory / f"{run_id}{LEASE_SUFFIX}"


@contextlib.contextmanager
def run_lease(directory: Path, run_id: str) -> Iterator[None]:
    """Hold the lease of run ``run_id`` (``<directory>/<run_id>.lease``) for the block; the
    file is removed when the block ends, and left (unlocked) if the process dies in it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = _lease(directory, run_id)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, _holder(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def leased_runs(directory: Path) -> list[str]:
    """The ids of the runs with a lease file in ``directory``, held or abandoned."""
    return sorted(p.name.removesuffix(LEASE_SUFFIX) for p in directory.glob(f"*{LEASE_SUFFIX}"))


def abandoned(directory: Path, run_id: str) -> bool:
    """Whether run ``run_id`` has a lease in ``directory`` that no process holds: the job
    that ran it died. False without a lease (a run of another workdir, or one that ended)."""
    try:
        fd = os.open(_lease(directory, run_id), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        return _try_lock(fd)
    finally:
        os.close(fd)


def drop_lease(directory: Path, run_id: str) -> None:
    """Remove the (abandoned) lease of ``run_id``."""
    _lease(directory, run_id).unlink(missing_ok=True)

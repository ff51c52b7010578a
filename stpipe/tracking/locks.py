"""File locks in the workdir around what MLflow cannot make atomic.

- :func:`workdir_lock`: one holder at a time, the others wait up to a timeout (promotion:
  from scoring the champion to setting the alias); it words the :class:`~stpipe.io.locks.LockTimeout` of
  :func:`~stpipe.io.locks.file_lock` as a TrackingError;
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
from collections.abc import Iterator
from pathlib import Path

from stpipe.core.errors import TrackingError
from stpipe.io.locks import LockTimeout, file_lock, holder_line, try_lock


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
        os.pwrite(fd, holder_line(), 0)
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
        return try_lock(fd)
    finally:
        os.close(fd)


def drop_lease(directory: Path, run_id: str) -> None:
    """Remove the (abandoned) lease of ``run_id``."""
    _lease(directory, run_id).unlink(missing_ok=True)

"""Lock files: ``flock`` locks that name their holder.

The holder (pid, host, since when) is written into the file, so a process that finds the
lock taken can say who holds it. The kernel releases an ``flock`` when its holder dies,
even by SIGKILL; the locks serialise processes that share the file's filesystem (one
machine, or a shared filesystem with working ``flock``).
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

POLL_S = 0.2


def holder_line() -> bytes:
    """Who holds a lock, as written into its file: pid, host and since when (UTC)."""
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode()


def try_lock(fd: int) -> bool:
    """Take the exclusive ``flock`` of ``fd`` if free; whether it was taken."""
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
        while not try_lock(fd):
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
                raise LockTimeout(path, holder, timeout_s)
            time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_line(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

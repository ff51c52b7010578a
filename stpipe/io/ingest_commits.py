"""The ingest loop's commits, made one file at a time in file order, and its stage timer.

A decided file's commit (:class:`Commit`) is made once its data write and the write of its
times are done and every earlier file's commit is made (:class:`CommitQueue`). The commits
are the serial part of an ingest, so they are kept cheap: the root metadata is read once
(:class:`stpipe.io.store.Committer`), and the time coordinate (one chunk, rewritten by
every append) is written on a thread of its own, the times of every file planned since
its previous write in one write.

:class:`Stopwatch` adds up where the loop's own time goes (``bench_ingest.py`` prints it).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stpipe.io import store as st
from stpipe.io.ingest_tasks import Writing
from stpipe.io.manifest import Manifest


class Stopwatch:
    """Seconds spent in each stage of the ingest loop; a stage inside another counts only
    in the inner one."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            own = elapsed - self._inner.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + own
            if self._inner:
                self._inner[-1] += elapsed

    def summary(self) -> str:
        """``stage=seconds`` for every stage, then the total since the stopwatch started."""
        stages = " ".join(f"{name}={s:.3f}" for name, s in self.seconds.items())
        return f"{stages} total={time.perf_counter() - self.started:.3f}"


@dataclass(frozen=True)
class Commit:
    """A decided file's commit: made once its write (if any) is done, after earlier ones.

    ``times``: the store positions ``offset``… and times (datetime64[ns]) of its new steps.
    """

    manifest: Manifest
    history: str
    writing: Writing | None = None
    offset: int = 0
    times: np.ndarray = field(default_factory=lambda: np.empty(0, "datetime64[ns]"))
    chunks: range = range(0)

    def done(self, times_end: int) -> bool:
        """Whether its writes are done, the times being written before ``times_end``."""
        times_done = not self.times.size or self.offset + self.times.size <= times_end
        return times_done and (self.writing is None or self.writing.done())


class CommitQueue:
    """The commits not made yet, in file order; use as a context manager (leaving it waits
    for the time coordinate's last write)."""

    def __init__(self, store_path: Path, stopwatch: Stopwatch) -> None:
        self.queue: deque[Commit] = deque()
        self.committer = st.Committer(store_path)
        self.stopwatch = stopwatch
        self.times = _TimeWriter(self.committer)

    def __enter__(self) -> CommitQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.times.close()

    def add(self, commit: Commit) -> None:
        self.queue.append(commit)
        if commit.times.size:
            self.times.add(commit.offset, commit.times)

    def make_finished(self) -> None:
        """Make the commits at the front whose writes are done, without waiting."""
        times_end = self.times.written_through()
        ready = 0
        while ready < len(self.queue) and self.queue[ready].done(times_end):
            ready += 1
        self._make(ready)

    def make_through_chunks(self, chunks: range) -> None:
        """Make every commit up to the last one whose write touches ``chunks``."""
        touching = [
            i
            for i, c in enumerate(self.queue)
            if c.chunks.start < chunks.stop and chunks.start < c.chunks.stop
        ]
        self._make(touching[-1] + 1 if touching else 0)

    def make_all(self) -> None:
        self._make(len(self.queue))

    def _make(self, n: int) -> None:
        """Make the first ``n`` commits, in order, once their writes are done."""
        batch = [self.queue.popleft() for _ in range(n)]
        with self.stopwatch.stage("wait for writes"):
            for commit in batch:
                if commit.writing is not None:
                    commit.writing.result()
            end = max((c.offset + c.times.size for c in batch if c.times.size), default=0)
            self.times.wait_through(end)
        with self.stopwatch.stage("commit"):
            for commit in batch:
                self.committer.commit(commit.manifest, history=commit.history)


class _TimeWriter:
    """Writes the time coordinate on one thread, in store order: each write takes every
    file's times added since the previous write began (one chunk rewritten once for them
    all, while the loop goes on)."""

    def __init__(self, committer: st.Committer) -> None:
        self.committer = committer
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="ingest-time")
        self.pending: list[tuple[int, np.ndarray]] = []
        self.writing: Future[None] | None = None
        self.written_end = 0  # store positions before it are written (or were committed)
        self.writing_end = 0

    def add(self, offset: int, times: np.ndarray) -> None:
        self.pending.append((offset, times))
        self._start()

    def written_through(self) -> int:
        """The store position before which the times are written (without waiting)."""
        self._start()
        return self.written_end

    def wait_through(self, end: int) -> None:
        """Wait until the times of store positions before ``end`` are written."""
        while self.written_end < end:
            if self.writing is None and not self.pending:
                raise RuntimeError(f"ingest: no times were given for store position {end - 1}")
            if self.writing is not None:
                self.writing.result()
                self.writing, self.written_end = None, self.writing_end
            self._start()

    def close(self) -> None:
        self.thread.shutdown()

    def _start(self) -> None:
        if self.writing is not None:
            if not self.writing.done():
                return
            self.writing.result()
            self.writing, self.written_end = None, self.writing_end
        if not self.pending:
            return
        offset = self.pending[0][0]
        times = np.concatenate([t for _, t in self.pending])
        self.pending = []
        self.writing_end = offset + times.size
        target = self.committer.target
        self.writing = self.thread.submit(st.write_times, target, times, offset=offset)

"""The ingest loop's commits, made one file at a time in file order, and its stage timer.

A decided file's commit (:class:`Commit`) is made once its data write and the write of its
times are done and every earlier file's commit is made (:class:`CommitQueue`). The commits
are the serial part of an ingest, so they are kept cheap: the root metadata is read once
(:class:`stpipe.io.store.Committer`), and they are made on a thread of their own, so the
loop goes on handing files to workers; the time coordinate (one chunk, rewritten by every
append) is written there too, once for all the files whose commits are handed over at
once.

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

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` of work done on another thread (not in the loop's total)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

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

    def done(self) -> bool:
        return self.writing is None or self.writing.done()


class CommitQueue:
    """The commits not made yet, in file order; use as a context manager (leaving it waits
    for the commits handed to the commit thread).

    The loop waits for a file's data write, then hands its commit to one thread, which
    writes the times of every file handed over at once and commits them one by one, in
    order: the loop goes on giving workers files meanwhile.
    """

    def __init__(self, store_path: Path, stopwatch: Stopwatch) -> None:
        self.queue: deque[Commit] = deque()
        self.committer = st.Committer(store_path)
        self.stopwatch = stopwatch
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="ingest-commit")
        self.committing: deque[Future[None]] = deque()

    def __enter__(self) -> CommitQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.shutdown()

    def add(self, commit: Commit) -> None:
        self.queue.append(commit)

    def make_finished(self) -> None:
        """Hand over the commits at the front whose writes are done, without waiting."""
        while self.committing and self.committing[0].done():
            self.committing.popleft().result()  # a failed commit stops the ingest here
        ready = 0
        while ready < len(self.queue) and self.queue[ready].done():
            ready += 1
        self._hand_over(ready)

    def make_through_chunks(self, chunks: range) -> None:
        """Hand over every commit up to the last one whose write touches ``chunks`` (that
        write is then done)."""
        touching = [
            i
            for i, c in enumerate(self.queue)
            if c.chunks.start < chunks.stop and chunks.start < c.chunks.stop
        ]
        self._hand_over(touching[-1] + 1 if touching else 0)

    def make_all(self) -> None:
        """Make every commit, waiting until they are made."""
        self._hand_over(len(self.queue))
        with self.stopwatch.stage("wait for commits"):
            while self.committing:
                self.committing.popleft().result()

    def _hand_over(self, n: int) -> None:
        """Wait for the writes of the first ``n`` commits, then give them to the thread."""
        if not n:
            return
        batch = [self.queue.popleft() for _ in range(n)]
        with self.stopwatch.stage("wait for writes"):
            for commit in batch:
                if commit.writing is not None:
                    commit.writing.result()
        self.committing.append(self.thread.submit(self._commit, batch))

    def _commit(self, batch: list[Commit]) -> None:
        """On the commit thread: the batch's times in one write, then each file's commit."""
        start = time.perf_counter()
        appended = [c for c in batch if c.times.size]
        if appended:
            times = np.concatenate([c.times for c in appended])
            st.write_times(self.committer.target, times, offset=appended[0].offset)
        for commit in batch:
            self.committer.commit(commit.manifest, history=commit.history)
        self.stopwatch.add("commit thread", time.perf_counter() - start)

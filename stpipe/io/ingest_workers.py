"""Where ingest decodes and writes source files: a pool of workers sized to the machine.

A worker takes one file at a time (:mod:`stpipe.io.ingest_tasks`): it checksums and decodes
it and keeps it until the ingest loop (:mod:`stpipe.io.ingestion`) has checked it against
the store, then writes its new steps into the store's arrays (zarr compresses the chunks on
its threads) or drops it, and only then takes its next file. The loop sees descriptions
(times, an empty-time copy, checksum), writes the time coordinate and commits, file by file
in file order. A pool of ``workers`` holds at most ``workers + 1`` decoded files at once
(the one more: a thread that bridges the start of worker processes), however many files.

The pool is sized and typed by :mod:`stpipe.io.ingest_plan`; what a worker runs, and how
worker processes start and die, is in :mod:`stpipe.io.ingest_serve`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from stpipe.core.errors import StpipeError
from stpipe.io.ingest_plan import plan_workers
from stpipe.io.ingest_serve import LAUNCHER, serve
from stpipe.io.ingest_tasks import Decoded
from stpipe.io.settings import SourceSection
from stpipe.io.sources.canonical import ReaderOptions

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 60.0


class WorkerDied(StpipeError):
    """An ingest worker process died (killed, out of memory) before it answered."""


class _Reply:
    """A worker's answer to one command, once it has come."""

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def get(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(eq=False)
class _Worker:
    conn: Connection
    name: str
    process: bool
    ready: bool = False
    alive: bool = True
    holding: _LocalDecoding | None = None
    expecting: deque[_Reply] = field(default_factory=deque)

    def send(self, *command: Any, reply: bool = True) -> _Reply | None:
        if not self.alive:
            raise WorkerDied(f"ingest worker {self.name} has died")
        self.conn.send(command)
        if not reply:
            return None
        self.expecting.append(_Reply())
        return self.expecting[-1]


class LocalPool:
    """``threads`` worker threads in this process and ``processes`` worker processes.

    Use as a context manager: leaving it drops undecoded files and waits until every
    worker has finished its command and exited, so no write outlives the ingest.
    """

    def __init__(
        self, source: SourceSection, store_path: Path, *, threads: int, processes: int
    ) -> None:
        self._reader = source.kind_spec.reader.partition(":")[0]
        self._options = ReaderOptions.of(source)  # plain values: workers import no schema
        self._started = time.perf_counter()
        self._queue: deque[_LocalDecoding] = deque()
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._most_files = processes + 1 if processes else threads  # decoded files at once
        for i in range(threads):
            ours, theirs = socket.socketpair()
            thread = threading.Thread(
                target=serve, args=(Connection(theirs.detach()), store_path), daemon=True
            )
            thread.start()
            self._threads.append(thread)
            self._workers.append(_Worker(Connection(ours.detach()), f"thread {i}", process=False))
        self._launcher = self._launch(processes, store_path) if processes else None

    def _launch(self, n: int, store_path: Path) -> subprocess.Popen:
        """Start the launcher of ``n`` worker processes; each says when it is ready.

        Started from this thread, which outlives the pool: the launcher dies with it.
        """
        pairs = [socket.socketpair() for _ in range(n)]
        fds = [theirs.fileno() for _, theirs in pairs]
        args = [str(os.getpid()), str(store_path), self._reader, *map(str, fds)]
        env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            return subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, *args],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            for i, (ours, theirs) in enumerate(pairs):
                theirs.close()  # the launcher holds them now; ours sees EOF if a worker dies
                self._workers.append(
                    _Worker(Connection(ours.detach()), f"process {i}", process=True)
                )

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop undecoded files; wait for the answers still due, then for every worker to exit.

        A launcher still starting (its workers not all ready) is killed: none of its
        workers has been given anything.
        """
        self._queue.clear()
        with contextlib.suppress(WorkerDied):
            self.pump(lambda: not any(w.expecting for w in self._workers if w.alive))
        for worker in self._workers:
            worker.conn.close()  # end of commands: each worker exits
        for thread in self._threads:
            thread.join()
        if self._launcher is None:
            return
        if not all(w.ready or not w.alive for w in self._workers):
            self._launcher.kill()
        try:
            self._launcher.wait(JOIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._launcher.kill()
            self._launcher.wait()

    def decode(self, path: Path) -> _LocalDecoding:
        decoding = _LocalDecoding(self, path)
        self._queue.append(decoding)
        self._dispatch()
        return decoding

    def _dispatch(self) -> None:
        """Give queued files to ready workers that hold no undecided file; next to worker
        processes, threads only bridge their start (or stand in if none started). A worker
        decodes its next file only after its write, so the workers with a file or a command
        are those with a file in memory: never more than ``processes + 1`` (with processes)."""
        bridging = not self.processes_ready
        busy = sum(w.holding is not None or bool(w.expecting) for w in self._workers)
        for worker in self._workers:
            if not self._queue:
                return
            if not (worker.process or bridging):
                continue
            if worker.ready and worker.alive and worker.holding is None:
                if not worker.expecting:  # idle: one more file in memory
                    if busy >= self._most_files:
                        continue
                    busy += 1
                decoding = self._queue.popleft()
                decoding.worker, worker.holding = worker, decoding
                decoding.reply = worker.send("decode", decoding.path, self._options)

    @property
    def processes_ready(self) -> bool:
        """Whether there are live worker processes and all of them are ready."""
        processes = [w for w in self._workers if w.process and w.alive]
        return bool(processes) and all(w.ready for w in processes)

    def pump(self, until: Callable[[], bool], *, block: bool = True) -> None:
        """Take in workers' messages until ``until()`` (once, without waiting, if not ``block``)."""
        while not until():
            waiting = [w.conn for w in self._workers if w.alive and (w.expecting or not w.ready)]
            if not waiting:
                raise WorkerDied("ingest workers: every worker has died")
            for conn in wait(waiting, timeout=None if block else 0):
                self._receive(next(w for w in self._workers if w.conn is conn))
            self._dispatch()
            if not block:
                return

    def _receive(self, worker: _Worker) -> None:
        try:
            status, value = worker.conn.recv()
        except (EOFError, OSError):
            worker.alive = False
            died = WorkerDied(f"ingest worker {worker.name} died (killed, or out of memory?)")
            for reply in worker.expecting:
                reply.done, reply.error = True, died
            worker.expecting.clear()
            return
        if status == "ready":
            worker.ready = True
            if worker.process and self.processes_ready:
                ready_s = time.perf_counter() - self._started
                log.debug("ingest worker processes ready after %.3f s", ready_s)
            return
        reply = worker.expecting.popleft()
        reply.done = True
        reply.value, reply.error = (value, None) if status == "ok" else (None, value)

    def free(self, worker: _Worker) -> None:
        worker.holding = None
        self._dispatch()


class _LocalDecoding:
    def __init__(self, pool: LocalPool, path: Path) -> None:
        self.pool, self.path = pool, path
        self.worker: _Worker | None = None
        self.reply: _Reply | None = None

    @property
    def started(self) -> bool:
        """Whether a worker has taken the file (it holds it until written or released)."""
        return self.worker is not None

    def _wait(self, reply: _Reply) -> Any:
        self.pool.pump(lambda: reply.done)
        return reply.get()

    def described(self) -> Decoded:
        self.pool.pump(lambda: self.reply is not None and self.reply.done)
        return self.reply.get()

    def write(self, target: Path, *, first: int, offset: int) -> _LocalWriting:
        reply = self.worker.send("write", target, first, offset)
        self.pool.free(self.worker)  # it writes, then drops the file, before its next one
        return _LocalWriting(self.pool, reply)

    def first_difference(self, store_path: Path, n_steps: int, index: np.ndarray) -> str | None:
        return self._wait(self.worker.send("difference", store_path, n_steps, index))

    def release(self) -> None:
        if self.worker is None:
            with contextlib.suppress(ValueError):
                self.pool._queue.remove(self)
        elif self.worker.holding is self:
            if self.worker.alive:
                self.worker.send("release", reply=False)
            self.pool.free(self.worker)


@dataclass(frozen=True)
class _LocalWriting:
    pool: LocalPool
    reply: _Reply

    def done(self) -> bool:
        self.pool.pump(lambda: self.reply.done, block=False)
        return self.reply.done

    def result(self) -> int:
        self.pool.pump(lambda: self.reply.done)
        return self.reply.get()


@contextlib.contextmanager
def local_pool(
    source: SourceSection, store_path: Path, files: list[Path], *, cores: int
) -> Iterator[LocalPool]:
    """The pool :func:`plan_workers` chooses for ``files``."""
    plan = plan_workers(files, cores=cores)
    log.debug("ingest workers: %d thread(s), %d process(es)", plan.threads, plan.processes)
    with LocalPool(source, store_path, threads=plan.threads, processes=plan.processes) as pool:
        yield pool

"""Ingest's workers on an existing ``distributed`` cluster (``[dask] address``).

The same tasks as the local pool (:mod:`stpipe.io.ingest_workers`) run as Dask tasks: the
decoded data stays on the worker that decoded it and that worker writes it, so the store
must be on a file system the workers share. At most ``threads + 1`` decoded files are held
on the cluster at once (``threads`` summed over its workers): a file is decoded only when
an earlier one has been written or dropped.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from stpipe.io.ingest_tasks import Decoded, decode, describe, first_difference, write_loaded
from stpipe.io.settings import SourceSection


class DaskPool:
    """Decode and write through ``client`` (a ``distributed.Client``)."""

    def __init__(self, client: Any, source: SourceSection) -> None:
        self.client, self.source = client, source
        self.capacity = sum(client.nthreads().values()) + 1
        self.live = 0
        self.queue: deque[_DaskDecoding] = deque()
        self.writing: list[_DaskWriting] = []

    def __enter__(self) -> DaskPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.queue.clear()
        for writing in self.writing:
            writing.future.result()  # no write may outlive the ingest

    def decode(self, path: Path) -> _DaskDecoding:
        decoding = _DaskDecoding(self, path)
        self.queue.append(decoding)
        self.dispatch()
        return decoding

    def dispatch(self) -> None:
        while self.queue and self.live < self.capacity:
            self.queue.popleft().submit()
            self.live += 1

    def make_room(self) -> None:
        """Wait for a write to finish, freeing the place of its file."""
        from distributed import wait  # imported with the client: only on a cluster

        if not self.writing:
            raise RuntimeError("ingest: waiting for a decode that no write will make room for")
        wait([w.future for w in self.writing], return_when="FIRST_COMPLETED")
        for writing in [w for w in self.writing if w.future.done()]:
            writing.finish()


class _DaskDecoding:
    def __init__(self, pool: DaskPool, path: Path) -> None:
        self.pool, self.path = pool, path
        self.data: Any = None
        self.description: Any = None

    def submit(self) -> None:
        submit = self.pool.client.submit
        self.data = submit(decode, self.path, self.pool.source, pure=False)
        self.description = submit(describe, self.data, pure=False)

    def described(self) -> Decoded:
        while self.data is None:
            self.pool.make_room()
        return self.description.result()

    def write(self, target: Path, *, first: int, offset: int) -> _DaskWriting:
        future = self.pool.client.submit(
            write_loaded, target, self.data, first=first, offset=offset, pure=False
        )
        writing = _DaskWriting(self, future)
        self.pool.writing.append(writing)
        return writing

    def first_difference(self, store_path: Path, n_steps: int, index: np.ndarray) -> str | None:
        return self.pool.client.submit(
            first_difference, store_path, self.data, n_steps, index, pure=False
        ).result()

    def release(self) -> None:
        if self in self.pool.queue:
            self.pool.queue.remove(self)
        if self.data is None:
            return
        self.data.release()
        self.description.release()
        self.data = self.description = None
        self.pool.live -= 1
        self.pool.dispatch()


class _DaskWriting:
    def __init__(self, decoding: _DaskDecoding, future: Any) -> None:
        self.decoding, self.future = decoding, future

    def finish(self) -> None:
        if self in self.decoding.pool.writing:
            self.decoding.pool.writing.remove(self)
            self.decoding.release()

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> int:
        nbytes = self.future.result()
        self.finish()
        return nbytes

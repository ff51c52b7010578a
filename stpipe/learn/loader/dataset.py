"""One rank's batches of an epoch as a torch IterableDataset, streamed on threads.

A planning thread walks the epoch's batch plan, submits block reads ``prefetch_blocks``
ahead and batch cuts behind them; the consumer takes finished batches in order from a
bounded queue (``batch_prefetch``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from stpipe.core.patches import PatchIndex, PatchSpec
from stpipe.learn.loader.plan import BlockLayout, Piece, epoch_pieces, plan_batches, rank_batches
from stpipe.learn.loader.reader import Batch, BatchCutter, Block, LoaderCounters, ReaderOptions
from stpipe.learn.loader.source import StoreSource

_END = object()


def _put(q: queue.Queue[Any], item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class PatchDataset(IterableDataset):
    """The batches of one rank for one epoch (``set_epoch``), as a torch IterableDataset.

    Yields whole batches (use ``DataLoader(batch_size=None)``); inside a DataLoader worker
    it yields that worker's contiguous share of the rank's batches.
    """

    def __init__(
        self,
        *,
        spec: PatchSpec,
        source: StoreSource,
        index: PatchIndex,
        layout: BlockLayout,
        options: ReaderOptions,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        max_batches: int | None,
        rank: int,
        world_size: int,
        pin_memory: bool,
        epoch: int = 0,
    ) -> None:
        self.spec, self.source, self.index, self.layout = spec, source, index, layout
        self.options, self.batch_size, self.shuffle, self.seed = options, batch_size, shuffle, seed
        self.drop_last, self.max_batches = drop_last, max_batches
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        self._epoch = epoch
        self._shared_epoch: Any = None
        self.counters = LoaderCounters()
        self._cutter: BatchCutter | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["counters"], state["_cutter"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.counters = LoaderCounters()

    @property
    def epoch(self) -> int:
        return self._epoch if self._shared_epoch is None else int(self._shared_epoch.value)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)
        if self._shared_epoch is not None:
            self._shared_epoch.value = self._epoch

    def share_epoch(self, context: BaseContext) -> None:
        """Keep the epoch in shared memory, so that persistent workers see ``set_epoch``."""
        self._shared_epoch = context.Value("q", self._epoch, lock=False)

    def __len__(self) -> int:
        return self.batches_per_rank()[1]

    def batches_per_rank(self) -> tuple[int, int]:
        return rank_batches(
            len(self.index),
            world_size=self.world_size,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            max_batches=self.max_batches,
        )

    def shard(self, epoch: int, worker: int = 0, n_workers: int = 1) -> list[Piece]:
        """The pieces of ``epoch`` that ``worker`` of this rank delivers."""
        per_rank, n_batches = self.batches_per_rank()
        used = min(per_rank, n_batches * self.batch_size)
        first, last = worker * n_batches // n_workers, (worker + 1) * n_batches // n_workers
        lo = self.rank * per_rank + first * self.batch_size
        hi = self.rank * per_rank + min(last * self.batch_size, used)
        counts = self.layout.counts
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(len(counts))
            if self.shuffle
            else np.arange(len(counts))
        )
        return epoch_pieces(counts, order, lo, hi) if hi > lo else []

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch
        pieces = self.shard(epoch, worker, n_workers)
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker]) if self.shuffle else None
        # Pinning happens in the worker-less process only; DataLoader pins worker output.
        return self._stream(pieces, rng, pin=self.pin_memory and info is None)

    def _stream(
        self, pieces: list[Piece], rng: np.random.Generator | None, *, pin: bool
    ) -> Iterator[Batch]:
        if self._cutter is None:
            self._cutter = BatchCutter(
                spec=self.spec,
                source=self.source,
                index=self.index,
                layout=self.layout,
                cache_mb=self.options.cache_mb,
                counters=self.counters,
            )
        cutter, opts = self._cutter, self.options
        plan = plan_batches(pieces, batch_size=self.batch_size, active=opts.active_blocks, rng=rng)
        results: queue.Queue[Any] = queue.Queue(maxsize=opts.batch_prefetch)
        stop = threading.Event()
        readers = ThreadPoolExecutor(opts.read_threads, thread_name_prefix="stpipe-read")
        cutters = ThreadPoolExecutor(opts.cut_threads, thread_name_prefix="stpipe-cut")

        def drive() -> None:
            try:
                blocks: dict[int, Future[Block]] = {}
                joined = submitted = 0
                for refs, started, finished in plan:
                    joined = max([joined - 1, *started]) + 1
                    while submitted < min(len(pieces), joined + opts.prefetch_blocks):
                        blocks[submitted] = readers.submit(cutter.read, pieces[submitted])
                        submitted += 1
                    needed = {int(s): blocks[int(s)] for s in np.unique(refs[:, 0])}
                    job = cutters.submit(cutter.cut, refs, pieces, needed, pin=pin)
                    if not _put(results, job, stop):
                        return
                    for slot in finished:
                        del blocks[slot]
                _put(results, _END, stop)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                _put(results, exc, stop)

        driver = threading.Thread(target=drive, name="stpipe-plan", daemon=True)
        driver.start()
        try:
            while True:
                waited = time.perf_counter()
                item = results.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch = item.result()
                self.counters.add(wait_s=time.perf_counter() - waited)
                yield batch
        finally:
            stop.set()
            readers.shutdown(wait=False, cancel_futures=True)
            cutters.shutdown(wait=False, cancel_futures=True)
            driver.join()

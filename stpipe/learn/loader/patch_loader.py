"""The loader of one rank: :func:`make_loader` builds it, :class:`PatchLoader` iterates it."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from stpipe.core.errors import ConfigError
from stpipe.core.patches import PatchIndex, PatchSpec, check_not_empty, is_global_lon
from stpipe.core.splits import SplitName, Splits
from stpipe.learn.loader.dataset import PatchDataset
from stpipe.learn.loader.plan import plan_blocks
from stpipe.learn.loader.reader import Batch, LoaderCounters, ReaderOptions
from stpipe.learn.loader.source import StoreSource, open_source
from stpipe.learn.stats import nan_steps

if TYPE_CHECKING:
    from stpipe.io.settings import DaskSection

log = logging.getLogger(__name__)


class PatchLoader:
    """Iterable of batches for one rank: ``len()`` batches per epoch, ``set_epoch(e)``.

    With ``num_workers=0`` the dataset streams in this process on its own threads;
    otherwise through one ``DataLoader`` whose persistent workers start (by
    ``forkserver``) on the first epoch and read the epoch from shared memory.
    """

    def __init__(
        self,
        dataset: PatchDataset,
        *,
        num_workers: int,
        pin_memory: bool,
        multiprocessing_context: str,
    ) -> None:
        self.dataset = dataset
        self._workers: DataLoader | None = None
        if num_workers:
            context = multiprocessing.get_context(multiprocessing_context)
            dataset.share_epoch(context)
            self._workers = DataLoader(
                dataset,
                batch_size=None,
                num_workers=num_workers,
                pin_memory=pin_memory,
                multiprocessing_context=context,
                persistent_workers=True,
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.dataset if self._workers is None else self._workers)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    @property
    def spec(self) -> PatchSpec:
        return self.dataset.spec

    @property
    def index(self) -> PatchIndex:
        return self.dataset.index

    @property
    def counters(self) -> LoaderCounters:
        """Read/cut counters of this process (all of them when ``num_workers=0``)."""
        return self.dataset.counters


def make_loader(
    spec: PatchSpec,
    store_path: str | Path,
    *,
    split: SplitName,
    batch_size: int,
    shuffle: bool | None = None,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | Literal["auto"] = "auto",
    drop_last: bool | None = None,
    max_batches: int | None = None,
    splits: Splits | None = None,
    dask: DaskSection | None = None,
    options: ReaderOptions | None = None,
    multiprocessing_context: str = "forkserver",
) -> PatchLoader:
    """Batches of the windows of ``split`` (train/val/test/all) of the store, for one rank.

    ``splits`` is needed unless ``split="all"``. ``shuffle`` and ``drop_last``
    default to True for train and False otherwise. ``pin_memory="auto"``: when CUDA is
    available. ``nan_policy = "skip"`` scans the store for steps holding NaN once (cached,
    on ``dask``'s cluster if set) and drops the windows that contain one.
    """
    if splits is None and split != "all":
        raise ConfigError(f"split {split!r} needs the [split] dates: pass splits=")
    if batch_size < 1 or num_workers < 0 or not 0 <= rank < world_size:
        raise ConfigError(
            f"need batch_size >= 1, num_workers >= 0 and 0 <= rank < world_size, got "
            f"batch_size={batch_size} num_workers={num_workers} rank={rank} "
            f"world_size={world_size}"
        )
    source = open_source(store_path, spec.input_variables)
    index = _split_index(spec, source, store_path, split=split, splits=splits, dask=dask)
    options = options or ReaderOptions()
    layout = plan_blocks(
        index,
        chunks=source.chunks,
        n_variables=len(spec.input_variables),
        block_mb=options.block_mb,
    )
    training = split == "train"
    pin = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
    dataset = PatchDataset(
        spec=spec,
        source=source,
        index=index,
        layout=layout,
        options=options,
        batch_size=batch_size,
        shuffle=training if shuffle is None else shuffle,
        seed=seed,
        drop_last=training if drop_last is None else drop_last,
        max_batches=max_batches,
        rank=rank,
        world_size=world_size,
        pin_memory=pin,
        epoch=epoch,
    )
    log.info("%s split: %s; %d blocks", split, index.describe(), len(layout.counts))
    return PatchLoader(
        dataset,
        num_workers=num_workers,
        pin_memory=pin,
        multiprocessing_context=multiprocessing_context,
    )


def _split_index(
    spec: PatchSpec,
    source: StoreSource,
    store_path: str | Path,
    *,
    split: SplitName,
    splits: Splits | None,
    dask: DaskSection | None,
) -> PatchIndex:
    """The windows of ``split`` (:func:`split_windows`); StoreError if there are none."""
    index_range = (
        (0, len(source.times)) if splits is None else splits.index_range(split, source.times)
    )
    index = split_windows(
        spec,
        store_path,
        times=source.times,
        step_s=source.step_s,
        grid_shape=source.grid_shape,
        global_lon=source.latlon and is_global_lon(source.cols),
        index_range=index_range,
        dask=dask,
    )
    check_not_empty(index, split=split, times=source.times)
    return index


def split_windows(
    spec: PatchSpec,
    store_path: str | Path,
    *,
    times: np.ndarray,
    step_s: int,
    grid_shape: tuple[int, int],
    global_lon: bool,
    index_range: tuple[int, int],
    dask: DaskSection | None,
) -> PatchIndex:
    """The sample windows of the store's steps ``index_range`` (``times``, ``step_s`` apart,
    on a ``grid_shape`` grid), as the loaders cut them: without those holding a NaN step
    under ``nan_policy = "skip"``."""
    bad_steps = (
        nan_steps(store_path, variables=spec.input_variables, dask=dask)
        if spec.nan_policy == "skip"
        else None
    )
    return PatchIndex.build(
        spec,
        times=times,
        step_s=step_s,
        grid_shape=grid_shape,
        index_range=index_range,
        bad_steps=bad_steps,
        global_lon=global_lon,
    )

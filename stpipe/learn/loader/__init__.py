"""Chunk-aware patch loader: each store chunk is read once per epoch, patches are cut by numpy.

Why: a per-patch reader (xbatcher's BatchGenerator) builds a selector and a Dask graph per
patch and decodes the chunks under it again for every patch that touches them. Here the
windows of a split (:class:`stpipe.core.patches.PatchIndex`) are grouped into *blocks*: a span
of time chunks × a band of rows (all of them if the block fits ``block_mb``) × all columns.
An epoch

1. orders the blocks by a permutation seeded by ``(seed, epoch)`` (the same on every rank);
2. cuts that sequence of patches into equal contiguous shares, one per rank and, within a
   rank, per DataLoader worker, so a block is read by one consumer (two at a share edge);
3. reads each block with Zarr in whole chunks, ``prefetch_blocks`` ahead on a thread (Zarr
   decodes with the GIL released), plus the ``span - 1`` steps the block's last windows
   reach into the next block, which are read again rather than kept: blocks are visited
   out of time order. Counted in ``bytes_read``;
4. shuffles patches in a buffer of ``active_blocks`` blocks and cuts them into batch
   arrays with numpy on ``cut_threads`` threads (strided copies release the GIL), into
   pinned memory when CUDA is present.

Every window is delivered exactly once per epoch across ranks and workers. Ranks get equal
numbers of batches (DDP collectives cannot deadlock at the epoch end): the last rank's
share is padded by repeating windows from the start of the epoch; padded samples carry
``weight`` 0 and ``mask`` 0, so losses and metrics that use the mask ignore them.
``drop_last`` drops each rank's last partial batch instead (training).

Workers: in-process threads (``num_workers=0``, the default) beat DataLoader workers on
the 2-core dev box (benchmarks/bench_patches.py --quick, a loaded machine): 2,750
patches/s against 740 with 2 workers, whose batches cross process boundaries and whose
start-up (imports) took 23 s. Workers stay available for many-core hosts: persistent,
started by ``forkserver`` (never ``fork``: Zarr's event-loop thread would not exist in a
forked child and its reads would hang), the epoch passed through shared memory.

A batch is ``dict[str, Tensor]`` (B batch, T input steps, L leads, V variables, F time
features, S static fields, H × W = size + 2·halo):

- ``x`` float32 [B, T, V_in, H, W], ``y`` float32 [B, L, V_out, H, W]: physical units, NaN
  where missing or outside the grid (``reflect``/``wrap`` fill the outside instead);
- ``mask`` float32 [B, L, V_out, H, W]: 1 where the target is a real value inside the grid,
  in the target area (not the halo), of a sample with weight 1;
- ``x_time`` [B, T, F], ``y_time`` [B, L, F] float32 (:func:`stpipe.core.patches.time_features`);
- ``x_times`` [B, T], ``y_times`` [B, L] int64: valid times, ns since 1970-01-01 UTC;
- ``static`` float32 [B, S, H, W] in ``static_features`` order;
- ``t0``, ``row0``, ``col0`` int64 [B]: store time index of the first input, grid index of
  the top-left cell including the halo (negative or past the grid when padded);
- ``weight`` float32 [B]: 1, or 0 for a padding repeat.

The package: :mod:`~stpipe.learn.loader.source` (the store as read),
:mod:`~stpipe.learn.loader.plan` (blocks, pieces, batch order),
:mod:`~stpipe.learn.loader.reader` (block reads, batch cuts),
:mod:`~stpipe.learn.loader.dataset` (one rank's epoch, streamed on threads),
:mod:`~stpipe.learn.loader.patch_loader` (:func:`make_loader`, :class:`PatchLoader`).
"""

from stpipe.learn.loader.dataset import PatchDataset
from stpipe.learn.loader.patch_loader import PatchLoader, make_loader, split_windows
from stpipe.learn.loader.plan import (
    BlockLayout,
    Piece,
    epoch_pieces,
    plan_batches,
    plan_blocks,
    rank_batches,
)
from stpipe.learn.loader.reader import Batch, BatchCutter, LoaderCounters, ReaderOptions
from stpipe.learn.loader.source import StoreSource, open_source

__all__ = [
    "Batch",
    "BatchCutter",
    "BlockLayout",
    "LoaderCounters",
    "PatchDataset",
    "PatchLoader",
    "Piece",
    "ReaderOptions",
    "StoreSource",
    "epoch_pieces",
    "make_loader",
    "open_source",
    "plan_batches",
    "plan_blocks",
    "rank_batches",
    "split_windows",
]

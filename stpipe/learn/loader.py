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
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from zarr.core.buffer import default_buffer_prototype

from stpipe.core.errors import ConfigError, StoreError
from stpipe.core.grid import spatial_dims
from stpipe.core.patches import (
    PatchIndex,
    PatchSpec,
    SplitName,
    Splits,
    check_not_empty,
    is_global_lon,
    static_coordinates,
    time_features,
)
from stpipe.io.store import open_store
from stpipe.learn.stats import nan_steps

if TYPE_CHECKING:
    from stpipe.io.settings import DaskSection

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
FLOAT32_BYTES = 4
_END = object()


@dataclass(frozen=True)
class ReaderOptions:
    """How the reader trades memory for speed.

    ``block_mb``: target uncompressed size of a block (all input variables; a block is at
    least 4 × its window overlap in time). ``active_blocks``: blocks shuffled together.
    ``prefetch_blocks``: blocks read ahead. ``batch_prefetch``: batches cut ahead.
    Memory held ≈ (2·active + prefetch) blocks + (batch_prefetch + cut_threads) batches —
    set by these options, not by the store (measured: 1.0 GB peak RSS for a 2 GB store,
    0.6 GB for a 0.1 GB one whose blocks are smaller, 0.34 GB of it the imports).
    ``cache_mb``: when all the blocks of the index decode to at most this much, they are
    kept after their first read, so later epochs read nothing (on a GPU that finishes an
    epoch of a small store in a fraction of a second, re-reading it at every epoch start
    would leave it waiting); a bigger index is streamed, within the bound above.
    """

    block_mb: float = 64.0
    active_blocks: int = 2
    prefetch_blocks: int = 2
    batch_prefetch: int = 4
    cut_threads: int = 2
    read_threads: int = 1
    cache_mb: float = 256.0


@dataclass(frozen=True, eq=False)
class StoreSource:
    """What the loader needs from the committed store: coordinates, step and chunking."""

    path: str
    variables: tuple[str, ...]
    times: np.ndarray
    step_s: int
    rows: np.ndarray
    cols: np.ndarray
    latlon: bool
    chunks: tuple[int, int, int]

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def open_arrays(self) -> list[zarr.Array]:
        # Shapes come from the consolidated root metadata, the store's commit point.
        group = zarr.open_group(self.path, mode="r", use_consolidated=True)
        return [group[name] for name in self.variables]


def open_source(store_path: str | Path, variables: tuple[str, ...]) -> StoreSource:
    """Read the store's coordinates and check that ``variables`` are float32 and chunked alike."""
    ds = open_store(store_path)
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise StoreError(
            f"{store_path}: variables {missing} are not in the store; it has {list(ds.data_vars)}"
        )
    rows, cols = spatial_dims(ds)
    group = zarr.open_group(str(store_path), mode="r", use_consolidated=True)
    chunks = {name: tuple(group[name].chunks) for name in variables}
    for name in variables:
        if group[name].dtype != np.float32:
            raise StoreError(f"{store_path}: {name} is {group[name].dtype}, expected float32")
    if len(set(chunks.values())) > 1:
        raise StoreError(f"{store_path}: variables are chunked differently: {chunks}")
    return StoreSource(
        path=str(store_path),
        variables=tuple(variables),
        times=ds["time"].values.astype("datetime64[ns]"),
        step_s=int(ds.attrs["time_step_s"]),
        rows=ds[rows].values,
        cols=ds[cols].values,
        latlon=rows == "lat",
        chunks=chunks[variables[0]],
    )


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Windows grouped by the chunks they read.

    Block k holds windows ``index.starts[t_lo[k]:t_hi[k]]`` at row positions
    ``r_lo[k]:r_hi[k]`` and every column position, in that order (time-major): block-local
    patch ``i`` is window ``t_lo + i // per_window``, row position ``r_lo + (i % per_window)
    // n_cols``, column position ``i % n_cols``.
    """

    t_lo: np.ndarray
    t_hi: np.ndarray
    r_lo: np.ndarray
    r_hi: np.ndarray
    n_cols: int

    @property
    def per_window(self) -> np.ndarray:
        return (self.r_hi - self.r_lo) * self.n_cols

    @property
    def counts(self) -> np.ndarray:
        return (self.t_hi - self.t_lo) * self.per_window


def plan_blocks(
    index: PatchIndex, *, chunks: tuple[int, int, int], n_variables: int, block_mb: float
) -> BlockLayout:
    """Blocks of whole time chunks × bands of row positions that fit ``block_mb``.

    A block also reads the ``span - 1`` steps after its last chunk; it spans at least four
    times as many chunks as that overlap when memory allows, so the overlap adds ≤ 25 %.
    """
    t_chunk = chunks[0]
    ny, nx = index.grid_shape
    span, stride, height = index.spec.span, index.spec.stride[0], index.spec.shape[0]
    budget = block_mb * 2**20
    step_row_bytes = n_variables * nx * FLOAT32_BYTES
    overlap = math.ceil((span - 1) / t_chunk)
    n_chunks = index.starts[-1] // t_chunk - index.starts[0] // t_chunk + 1
    wanted = max(1, 4 * overlap)
    # Several blocks per epoch, so that there is an order to shuffle and shares to split.
    most = max(wanted, n_chunks // 8)
    fits = int(budget // (step_row_bytes * ny * t_chunk)) - overlap
    band = index.n_rows
    if fits >= wanted:
        per_block = min(fits, most)
    else:
        per_block = wanted
        rows = budget // (step_row_bytes * (per_block + overlap) * t_chunk)
        band = int(min(index.n_rows, max(1, (rows - height) // stride + 1)))
    edges = np.arange(
        index.starts[0] // (per_block * t_chunk), index.starts[-1] // (per_block * t_chunk) + 2
    ) * (per_block * t_chunk)
    bounds = np.searchsorted(index.starts, edges)
    t_lo, t_hi = bounds[:-1], bounds[1:]
    keep = t_hi > t_lo
    r_lo = np.arange(0, index.n_rows, band)
    r_hi = np.minimum(r_lo + band, index.n_rows)
    nt, nr = int(keep.sum()), len(r_lo)
    return BlockLayout(
        t_lo=np.repeat(t_lo[keep], nr),
        t_hi=np.repeat(t_hi[keep], nr),
        r_lo=np.tile(r_lo, nt),
        r_hi=np.tile(r_hi, nt),
        n_cols=index.n_cols,
    )


@dataclass(frozen=True)
class Piece:
    """Block-local patches ``lo … hi-1`` of ``block``; ``weight`` 0 marks padding repeats."""

    block: int
    lo: int
    hi: int
    weight: float


def epoch_pieces(counts: np.ndarray, order: np.ndarray, lo: int, hi: int) -> list[Piece]:
    """The pieces of positions ``lo … hi-1`` of an epoch that visits blocks in ``order``.

    Positions past the last patch wrap around to the first ones, with weight 0.
    """
    total = int(counts.sum())
    cum = np.concatenate([[0], np.cumsum(counts[order])])
    pieces = []
    position = lo
    while position < hi:
        lap, q = divmod(position, total)
        k = int(np.searchsorted(cum, q, side="right")) - 1
        stop = min(int(cum[k + 1]), q + hi - position)
        pieces.append(Piece(int(order[k]), q - int(cum[k]), stop - int(cum[k]), float(lap == 0)))
        position += stop - q
    return pieces


def rank_batches(
    n_patches: int,
    *,
    world_size: int,
    batch_size: int,
    drop_last: bool,
    max_batches: int | None,
) -> tuple[int, int]:
    """(patches per rank including padding, batches per rank): equal on every rank."""
    per_rank = math.ceil(n_patches / world_size)
    n_batches = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    return per_rank, n_batches


def plan_batches(
    pieces: list[Piece], *, batch_size: int, active: int, rng: np.random.Generator | None
) -> Iterator[tuple[np.ndarray, list[int], list[int]]]:
    """Batches of ``(piece slot, block-local patch)`` refs int64 [n, 2], in delivery order.

    Also yields, per batch, the slots first used by it and those it uses up, so blocks are
    read just in time and released after. With ``rng`` the patches of ``active`` pieces
    at a time are shuffled together: a piece joins when one is used up.
    """
    remaining: dict[int, int] = {}
    pool = np.zeros((0, 2), dtype=np.int64)
    joined = 0

    def join() -> list[int]:
        nonlocal pool, joined
        started = []
        while len(remaining) < active and joined < len(pieces):
            piece = pieces[joined]
            refs = np.stack(
                [np.full(piece.hi - piece.lo, joined), np.arange(piece.lo, piece.hi)], axis=1
            )
            pool = np.concatenate([pool, refs])
            remaining[joined] = piece.hi - piece.lo
            started.append(joined)
            joined += 1
        if started and rng is not None:
            pool = pool[rng.permutation(len(pool))]
        return started

    started = join()
    while len(pool):
        taken, finished = [], []
        need = batch_size
        while need and len(pool):
            part, pool = pool[:need], pool[need:]
            taken.append(part)
            need -= len(part)
            slots, counts = np.unique(part[:, 0], return_counts=True)
            for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
                remaining[slot] -= count
                if not remaining[slot]:
                    del remaining[slot]
                    finished.append(slot)
            started += join()
        yield np.concatenate(taken), started, finished
        started = []


@dataclass
class LoaderCounters:
    """What the reader did in this process (workers keep their own)."""

    bytes_read: int = 0
    bytes_delivered: int = 0
    patches: int = 0
    padding: int = 0
    batches: int = 0
    blocks_read: int = 0
    read_s: float = 0.0
    cut_s: float = 0.0
    wait_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    @property
    def read_amplification(self) -> float:
        """Uncompressed bytes of the chunks decoded / bytes of ``x`` and ``y`` delivered."""
        return self.bytes_read / self.bytes_delivered if self.bytes_delivered else math.nan

    def summary(self) -> str:
        return (
            f"{self.patches} patches ({self.padding} padding) in {self.batches} batches, "
            f"{self.blocks_read} blocks, {self.bytes_read / 1e6:.1f} MB read for "
            f"{self.bytes_delivered / 1e6:.1f} MB delivered (amplification "
            f"{self.read_amplification:.3f}); thread-seconds read {self.read_s:.1f}, "
            f"cut {self.cut_s:.1f}, consumer waited {self.wait_s:.1f} s"
        )


@dataclass(frozen=True, eq=False)
class _Block:
    t_start: int
    row_start: int
    data: np.ndarray  # float32 [V_in, time, rows, nx]


class _Cutter:
    """Reads blocks and cuts batches; one per process, built from a PatchDataset."""

    def __init__(self, ds: PatchDataset) -> None:
        self.ds = ds
        spec, index = ds.spec, ds.index
        self.arrays = ds.source.open_arrays()
        self.row_map, row_inside = index.row_maps()
        self.col_map, col_inside = index.col_maps()
        self.row_origin = index.row_origin(np.arange(index.n_rows))
        self.col_origin = index.col_origin(np.arange(index.n_cols))
        height, width = spec.shape
        # Plain Python values for the per-patch loop, which holds the GIL.
        self.row_plain = _is_plain(self.row_map, self.row_origin).tolist()
        self.col_plain = _is_plain(self.col_map, self.col_origin).tolist()
        self.row_starts, self.col_starts = self.row_origin.tolist(), self.col_origin.tolist()
        self.span, self.height, self.width = spec.span, height, width
        self.row_inside, self.col_inside = row_inside, col_inside
        self.row_target = row_inside & index.core(0)
        self.col_target = col_inside & index.core(1)
        self.times_ns = ds.source.times.astype(np.int64)
        self.features = time_features(ds.source.times)[:, : spec.n_time_features]
        self.coords = static_coordinates(
            spec.static_features, ds.source.rows, ds.source.cols, latlon=ds.source.latlon
        )
        # Static coordinates continue the edge value outside the grid (wrapped columns
        # are real cells); "mask" says which cells are inside the grid.
        ny, nx = index.grid_shape
        self.static_rows = np.clip(self.row_origin[:, None] + np.arange(height), 0, ny - 1)
        self.static_cols = (
            self.col_map
            if index.wrap_cols
            else np.clip(self.col_origin[:, None] + np.arange(width), 0, nx - 1)
        )
        coordinates = [f for f in spec.static_features if f != "mask"]
        self.static_sources = [
            None if f == "mask" else coordinates.index(f) for f in spec.static_features
        ]
        # Slices copy in one strided pass; index arrays would copy twice.
        self.targets = _as_slice(spec.target_index)
        self.offsets = _as_slice(spec.target_offsets)
        counts = ds.layout.counts
        whole = [self._extent(k, 0, int(n)) for k, n in enumerate(counts)]
        cached_bytes = sum(
            len(self.arrays) * (t1 - t0) * (r1 - r0) * len(ds.source.cols) * FLOAT32_BYTES
            for t0, t1, r0, r1 in whole
        )
        # Blocks kept whole after their first read, by block number; None: streamed.
        self.cache: dict[int, _Block] | None = (
            {} if cached_bytes <= ds.options.cache_mb * 2**20 else None
        )

    def _extent(self, block: int, lo: int, hi: int) -> tuple[int, int, int, int]:
        """(t_start, t_stop, r_start, r_stop) of the store that patches lo … hi-1 of
        ``block`` read."""
        layout, index = self.ds.layout, self.ds.index
        per_window = int(layout.per_window[block])
        first = int(layout.t_lo[block]) + lo // per_window
        last = int(layout.t_lo[block]) + (hi - 1) // per_window
        rows = self.row_map[layout.r_lo[block] : layout.r_hi[block]]
        return (
            int(index.starts[first]),
            int(index.starts[last]) + index.spec.span,
            int(rows[rows >= 0].min()),
            int(rows.max()) + 1,
        )

    def read(self, piece: Piece) -> _Block:
        if self.cache is None:
            return self._read(piece.block, piece.lo, piece.hi)
        block = self.cache.get(piece.block)
        if block is None:
            block = self._read(piece.block, 0, int(self.ds.layout.counts[piece.block]))
            self.cache[piece.block] = block
        return block

    def _read(self, block: int, lo: int, hi: int) -> _Block:
        started = time.perf_counter()
        t_start, t_stop, r_start, r_stop = self._extent(block, lo, hi)
        nx = len(self.ds.source.cols)
        data = np.empty((len(self.arrays), t_stop - t_start, r_stop - r_start, nx), np.float32)
        for array, out in zip(self.arrays, data, strict=True):
            array.get_basic_selection(
                (slice(t_start, t_stop), slice(r_start, r_stop), slice(None)),
                out=default_buffer_prototype().nd_buffer.from_numpy_array(out),
            )
        self.ds.counters.add(
            bytes_read=len(self.arrays)
            * _chunk_bytes(
                (t_start, t_stop), (r_start, r_stop), self.arrays[0].shape, self.ds.source.chunks
            ),
            blocks_read=1,
            read_s=time.perf_counter() - started,
        )
        return _Block(t_start, r_start, data)

    def cut(
        self,
        refs: np.ndarray,
        pieces: list[Piece],
        blocks: Mapping[int, Future[_Block]],
        *,
        pin: bool,
    ) -> Batch:
        loaded = {slot: future.result() for slot, future in blocks.items()}
        started = time.perf_counter()
        spec, layout, index = self.ds.spec, self.ds.layout, self.ds.index
        slots = refs[:, 0]
        block = np.array([pieces[s].block for s in slots], dtype=np.int64)
        weight = np.array([pieces[s].weight for s in slots], dtype=np.float32)
        window, rest = np.divmod(refs[:, 1], layout.per_window[block])
        row, col = np.divmod(rest, layout.n_cols)
        row += layout.r_lo[block]
        t0 = index.starts[layout.t_lo[block] + window]

        n, n_in = len(refs), spec.input_steps
        batch, arrays = _empty_batch(spec, n, pin=pin)
        x, y = arrays["x"], arrays["y"]
        targets, offsets = self.targets, self.offsets
        patches = zip(slots.tolist(), t0.tolist(), row.tolist(), col.tolist(), strict=True)
        for i, (slot, t, r, c) in enumerate(patches):
            sub = self._window(loaded[slot], t, r, c)
            x[i] = sub[:, :n_in].transpose(1, 0, 2, 3)
            if isinstance(offsets, slice):
                y[i] = sub[targets, offsets].transpose(1, 0, 2, 3)
            else:
                for lead, offset in enumerate(offsets):
                    y[i, lead] = sub[targets, offset]
        np.multiply(
            np.isfinite(y),
            (
                self.row_target[row][:, :, None]
                & self.col_target[col][:, None, :]
                & (weight > 0)[:, None, None]
            )[:, None, None],
            out=arrays["mask"],
        )
        in_steps = t0[:, None] + np.arange(n_in)
        out_steps = t0[:, None] + spec.target_offsets
        arrays["x_time"][:] = self.features[in_steps]
        arrays["y_time"][:] = self.features[out_steps]
        arrays["x_times"][:] = self.times_ns[in_steps]
        arrays["y_times"][:] = self.times_ns[out_steps]
        self._static(arrays["static"], row, col)
        arrays["t0"][:] = t0
        arrays["row0"][:] = self.row_origin[row]
        arrays["col0"][:] = self.col_origin[col]
        arrays["weight"][:] = weight
        self.ds.counters.add(
            bytes_delivered=x.nbytes + y.nbytes,
            patches=n,
            padding=int((weight == 0).sum()),
            batches=1,
            cut_s=time.perf_counter() - started,
        )
        return batch

    def _window(self, block: _Block, t0: int, row: int, col: int) -> np.ndarray:
        """float32 [V_in, span, H, W] of one patch: a view where it lies inside the grid."""
        span, height, width = self.span, self.height, self.width
        dt = t0 - block.t_start
        if self.row_plain[row] and self.col_plain[col]:
            r = self.row_starts[row] - block.row_start
            c = self.col_starts[col]
            return block.data[:, dt : dt + span, r : r + height, c : c + width]
        rows, cols = self.row_map[row], self.col_map[col]
        sub = block.data[:, dt : dt + span][:, :, np.maximum(rows - block.row_start, 0)]
        sub = sub[:, :, :, np.maximum(cols, 0)]
        sub[:, :, rows < 0] = np.nan
        sub[:, :, :, cols < 0] = np.nan
        return sub

    def _static(self, out: np.ndarray, row: np.ndarray, col: np.ndarray) -> None:
        if not self.static_sources:
            return
        for i, (r, c) in enumerate(zip(row.tolist(), col.tolist(), strict=True)):
            coords = self.coords[:, self.static_rows[r]][:, :, self.static_cols[c]]
            for channel, source in enumerate(self.static_sources):
                if source is None:
                    out[i, channel] = self.row_inside[r][:, None] & self.col_inside[c][None, :]
                else:
                    out[i, channel] = coords[source]


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when its values are consecutive."""
    first = int(index[0])
    if np.array_equal(index, np.arange(first, first + len(index))):
        return slice(first, first + len(index))
    return index


def _is_plain(indices: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """bool [P]: positions whose cells are all inside the grid, in order (a slice)."""
    cells = origins[:, None] + np.arange(indices.shape[1])
    return ((indices == cells) & (cells >= 0)).all(axis=1)


def _chunk_bytes(
    t: tuple[int, int], r: tuple[int, int], shape: tuple[int, ...], chunks: tuple[int, int, int]
) -> int:
    """Uncompressed bytes of the chunks that a read of steps ``t`` × rows ``r`` decodes."""

    def extent(lo: int, hi: int, chunk: int, n: int) -> int:
        return min(n, -(-hi // chunk) * chunk) - lo // chunk * chunk

    return (
        extent(*t, chunks[0], shape[0]) * extent(*r, chunks[1], shape[1]) * shape[2] * FLOAT32_BYTES
    )


def _empty_batch(spec: PatchSpec, n: int, *, pin: bool) -> tuple[Batch, dict[str, np.ndarray]]:
    height, width = spec.shape
    n_in, n_leads, n_out = spec.input_steps, len(spec.leads), len(spec.target_variables)
    f = spec.n_time_features
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "x": ((n, n_in, len(spec.input_variables), height, width), torch.float32),
        "y": ((n, n_leads, n_out, height, width), torch.float32),
        "mask": ((n, n_leads, n_out, height, width), torch.float32),
        "x_time": ((n, n_in, f), torch.float32),
        "y_time": ((n, n_leads, f), torch.float32),
        "x_times": ((n, n_in), torch.int64),
        "y_times": ((n, n_leads), torch.int64),
        "static": ((n, len(spec.static_features), height, width), torch.float32),
        "t0": ((n,), torch.int64),
        "row0": ((n,), torch.int64),
        "col0": ((n,), torch.int64),
        "weight": ((n,), torch.float32),
    }
    batch = {k: torch.empty(s, dtype=d, pin_memory=pin) for k, (s, d) in shapes.items()}
    return batch, {k: t.numpy() for k, t in batch.items()}


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
        self._cutter: _Cutter | None = None

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
            self._cutter = _Cutter(self)
        cutter, opts = self._cutter, self.options
        plan = plan_batches(pieces, batch_size=self.batch_size, active=opts.active_blocks, rng=rng)
        results: queue.Queue[Any] = queue.Queue(maxsize=opts.batch_prefetch)
        stop = threading.Event()
        readers = ThreadPoolExecutor(opts.read_threads, thread_name_prefix="stpipe-read")
        cutters = ThreadPoolExecutor(opts.cut_threads, thread_name_prefix="stpipe-cut")

        def drive() -> None:
            try:
                blocks: dict[int, Future[_Block]] = {}
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
    bad_steps = (
        nan_steps(store_path, variables=spec.input_variables, dask=dask)
        if spec.nan_policy == "skip"
        else None
    )
    index_range = (
        (0, len(source.times)) if splits is None else splits.index_range(split, source.times)
    )
    index = PatchIndex.build(
        spec,
        times=source.times,
        step_s=source.step_s,
        grid_shape=source.grid_shape,
        index_range=index_range,
        bad_steps=bad_steps,
        global_lon=source.latlon and is_global_lon(source.cols),
    )
    check_not_empty(index, split=split, times=source.times)
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

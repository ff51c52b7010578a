"""Reading blocks of the store and cutting them into batch tensors.

A :class:`BatchCutter` reads a block's chunks with Zarr (Zarr decodes with the GIL
released), keeps whole blocks when they all fit ``ReaderOptions.cache_mb``, and cuts batches
with numpy (strided copies release the GIL), into pinned memory when asked. The batch keys
and layout are described in :mod:`stpipe.learn.loader`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from zarr.core.buffer import default_buffer_prototype

from stpipe.core.patches import PatchIndex, PatchSpec, static_coordinates, time_features
from stpipe.learn.loader.plan import BlockLayout, Piece
from stpipe.learn.loader.source import FLOAT32_BYTES, StoreSource, chunk_bytes

Batch = dict[str, torch.Tensor]


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
class Block:
    t_start: int
    row_start: int
    data: np.ndarray  # float32 [V_in, time, rows, nx]


class BatchCutter:
    """Reads blocks and cuts batches; one per process (a PatchDataset builds it on first use)."""

    def __init__(
        self,
        *,
        spec: PatchSpec,
        source: StoreSource,
        index: PatchIndex,
        layout: BlockLayout,
        cache_mb: float,
        counters: LoaderCounters,
    ) -> None:
        self.spec, self.source, self.index, self.layout = spec, source, index, layout
        self.counters = counters
        self.arrays = source.open_arrays()
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
        self.times_ns = source.times.astype(np.int64)
        self.features = time_features(source.times)[:, : spec.n_time_features]
        self.coords = static_coordinates(
            spec.static_features, source.rows, source.cols, latlon=source.latlon
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
        counts = layout.counts
        whole = [self._extent(k, 0, int(n)) for k, n in enumerate(counts)]
        cached_bytes = sum(
            len(self.arrays) * (t1 - t0) * (r1 - r0) * len(source.cols) * FLOAT32_BYTES
            for t0, t1, r0, r1 in whole
        )
        # Blocks kept whole after their first read, by block number; None: streamed.
        self.cache: dict[int, Block] | None = {} if cached_bytes <= cache_mb * 2**20 else None

    def _extent(self, block: int, lo: int, hi: int) -> tuple[int, int, int, int]:
        """(t_start, t_stop, r_start, r_stop) of the store that patches lo … hi-1 of
        ``block`` read."""
        layout, index = self.layout, self.index
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

    def read(self, piece: Piece) -> Block:
        if self.cache is None:
            return self._read(piece.block, piece.lo, piece.hi)
        block = self.cache.get(piece.block)
        if block is None:
            block = self._read(piece.block, 0, int(self.layout.counts[piece.block]))
            self.cache[piece.block] = block
        return block

    def _read(self, block: int, lo: int, hi: int) -> Block:
        started = time.perf_counter()
        t_start, t_stop, r_start, r_stop = self._extent(block, lo, hi)
        nx = len(self.source.cols)
        data = np.empty((len(self.arrays), t_stop - t_start, r_stop - r_start, nx), np.float32)
        for array, out in zip(self.arrays, data, strict=True):
            array.get_basic_selection(
                (slice(t_start, t_stop), slice(r_start, r_stop), slice(None)),
                out=default_buffer_prototype().nd_buffer.from_numpy_array(out),
            )
        self.counters.add(
            bytes_read=len(self.arrays)
            * chunk_bytes(
                (t_start, t_stop), (r_start, r_stop), self.arrays[0].shape, self.source.chunks
            ),
            blocks_read=1,
            read_s=time.perf_counter() - started,
        )
        return Block(t_start, r_start, data)

    def cut(
        self,
        refs: np.ndarray,
        pieces: list[Piece],
        blocks: Mapping[int, Future[Block]],
        *,
        pin: bool,
    ) -> Batch:
        loaded = {slot: future.result() for slot, future in blocks.items()}
        started = time.perf_counter()
        spec, layout, index = self.spec, self.layout, self.index
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
        self.counters.add(
            bytes_delivered=x.nbytes + y.nbytes,
            patches=n,
            padding=int((weight == 0).sum()),
            batches=1,
            cut_s=time.perf_counter() - started,
        )
        return batch

    def _window(self, block: Block, t0: int, row: int, col: int) -> np.ndarray:
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

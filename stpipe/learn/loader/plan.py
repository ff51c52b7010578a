"""Which patches an epoch delivers, in which order: blocks of chunks, pieces, batches.

Pure arithmetic on the window index (:class:`stpipe.core.patches.PatchIndex`): the windows
are grouped into blocks that read whole chunks (:func:`plan_blocks`), an epoch's sequence
of blocks is cut into contiguous pieces per rank and worker (:func:`epoch_pieces`,
:func:`rank_batches`), and pieces into shuffled batches (:func:`plan_batches`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from stpipe.core.patches import PatchIndex
from stpipe.learn.loader.source import FLOAT32_BYTES


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

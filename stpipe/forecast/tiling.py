"""Full-grid inference: cover a grid with overlapping tiles, blend the outputs without seams.

A model sees ``size`` cells (plus its halo) at a time; a forecast covers the whole grid.
:func:`tile_positions` places tiles that cover the grid (the last one of each row or
column shifted back to end at the edge, so no tile needs padding unless the grid is
smaller than a tile); :func:`cut_tiles` cuts the model inputs, halo included, with the
loader's edge policy; :func:`stitch` blends the outputs back with a smooth taper, weights
normalised per cell, so overlapping predictions fade into each other and an identity model
gives back the grid exactly.

Halo: place and stitch the *target* areas (``size``), cut inputs with ``halo``, and keep
the central ``size`` cells of each output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from stpipe.core.errors import ConfigError
from stpipe.core.patches import EdgePolicy, axis_indices, axis_modes

Window = Literal["hann", "uniform"]


def tile_positions(
    grid_shape: tuple[int, int], size: int | Sequence[int], overlap: int | Sequence[int]
) -> np.ndarray:
    """Top-left (row, col) of tiles that cover ``grid_shape``: int64 [N, 2], row-major.

    Neighbouring tiles overlap by at least ``overlap`` cells.
    """
    sizes, overlaps = _pair(size), _pair(overlap)
    axes = []
    for n, tile, shared in zip(grid_shape, sizes, overlaps, strict=True):
        step = tile - shared
        if tile < 1 or shared < 0 or step < 1:
            raise ConfigError(
                f"tiles need size >= 1 and 0 <= overlap < size, got size={sizes} overlap={overlaps}"
            )
        last = max(n - tile, 0)
        axes.append(np.unique(np.append(np.arange(0, last, step), last)))
    rows, cols = np.meshgrid(*axes, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.int64)


def taper(shape: tuple[int, int], window: Window = "hann") -> np.ndarray:
    """Blending weights of a tile, float64 [h, w], positive everywhere.

    ``hann``: sin²(π(i + ½)/n) per axis — smooth, highest in the middle, small but never 0
    at the border, so a grid edge covered by one tile still gets its value back.
    """
    if window == "uniform":
        return np.ones(shape)
    if window != "hann":
        raise ConfigError(f"window must be 'hann' or 'uniform', got {window!r}")
    rows, cols = (np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2 for n in shape)
    return np.outer(rows, cols)


def stitch(
    patches: np.ndarray,
    positions: np.ndarray,
    grid_shape: tuple[int, int],
    *,
    window: Window = "hann",
) -> np.ndarray:
    """Blend tiles ``patches`` [N, ..., h, w] at ``positions`` [N, 2] into [..., ny, nx].

    Each cell is the taper-weighted mean of the tiles covering it (NaN values left out);
    cells no finite value covers are NaN. Tiles reaching past the grid are cropped. The
    result has the dtype of ``patches`` (sums in float64).
    """
    patches = np.asarray(patches)
    positions = np.asarray(positions, dtype=np.int64)
    if patches.ndim < 3 or len(patches) != len(positions):
        raise ConfigError(
            f"need patches [N, ..., h, w] and positions [N, 2] with the same N, got "
            f"{patches.shape} and {positions.shape}"
        )
    ny, nx = grid_shape
    h, w = patches.shape[-2:]
    weights = taper((h, w), window)
    total = np.zeros((*patches.shape[1:-2], ny, nx))
    norm = np.zeros_like(total)
    for tile, (r, c) in zip(patches, positions.tolist(), strict=True):
        hh, ww = min(h, ny - r), min(w, nx - c)
        values = tile[..., :hh, :ww]
        finite = np.isfinite(values)
        weight = np.where(finite, weights[:hh, :ww], 0.0)
        total[..., r : r + hh, c : c + ww] += weight * np.where(finite, values, 0.0)
        norm[..., r : r + hh, c : c + ww] += weight
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norm > 0, total / norm, np.nan)
    return out.astype(patches.dtype if patches.dtype.kind == "f" else np.float64)


def cut_tiles(
    field: np.ndarray,
    positions: np.ndarray,
    *,
    size: int | Sequence[int],
    halo: int = 0,
    edge: EdgePolicy = "pad",
) -> np.ndarray:
    """Tiles of ``field`` [..., ny, nx] at ``positions`` with ``halo``: [N, ..., H, W].

    ``H, W = size + 2·halo``; cells beyond the grid are filled as the loader fills them
    (``pad``: NaN; ``reflect``; ``wrap``: columns wrap, rows NaN). For tiles from
    :func:`tile_positions`, only the halo can reach past the grid.
    """
    field = np.asarray(field)
    (h, w), positions = _pair(size), np.asarray(positions, dtype=np.int64)
    ny, nx = field.shape[-2:]
    row_mode, col_mode = axis_modes(edge)
    rows = axis_indices(positions[:, 0] - halo, h + 2 * halo, ny, row_mode)
    cols = axis_indices(positions[:, 1] - halo, w + 2 * halo, nx, col_mode)
    out = np.empty((len(positions), *field.shape[:-2], h + 2 * halo, w + 2 * halo), field.dtype)
    for k in range(len(positions)):
        tile = field[..., np.maximum(rows[k], 0), :][..., np.maximum(cols[k], 0)]
        tile[..., rows[k] < 0, :] = np.nan
        tile[..., cols[k] < 0] = np.nan
        out[k] = tile
    return out


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2:
        raise ConfigError(f"expected an int or (rows, cols), got {value!r}")
    return int(pair[0]), int(pair[1])

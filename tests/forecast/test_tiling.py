"""Full-grid tiling: tiles cover the grid, and stitching an identity model is exact."""

from __future__ import annotations

import numpy as np
import pytest

from stpipe.core.errors import ConfigError
from stpipe.forecast.tiling import cut_tiles, stitch, taper, tile_positions


@pytest.mark.parametrize(
    ("grid", "size", "overlap"),
    [((64, 64), 32, 8), ((50, 37), (16, 12), (4, 3)), ((10, 70), 16, 0), ((32, 32), 32, 8)],
)
def test_tiles_cover_the_grid_with_the_overlap_asked_for(grid, size, overlap) -> None:
    positions = tile_positions(grid, size, overlap)
    h, w = (size, size) if isinstance(size, int) else size
    covered = np.zeros(grid, dtype=int)
    for r, c in positions:
        covered[r : r + h, c : c + w] += 1
    assert (covered >= 1).all(), "every cell is covered"
    assert (positions >= 0).all(), "no tile starts before the grid"
    assert (positions[:, 0] <= max(grid[0] - h, 0)).all(), "no tile reaches past the rows"
    assert (positions[:, 1] <= max(grid[1] - w, 0)).all(), "no tile reaches past the columns"
    rows = np.unique(positions[:, 0])
    o = overlap if isinstance(overlap, int) else overlap[0]
    assert (np.diff(rows) <= h - o).all(), "neighbours overlap by at least `overlap` rows"


@pytest.mark.parametrize("window", ["hann", "uniform"])
@pytest.mark.parametrize(("grid", "size", "overlap"), [((64, 48), 32, 8), ((37, 53), 16, 5)])
def test_stitching_an_identity_model_gives_back_the_grid_exactly(
    grid, size, overlap, window
) -> None:
    rng = np.random.default_rng(1)
    field = rng.standard_normal((3, 2, *grid)).astype(np.float32) * 100 + 273
    positions = tile_positions(grid, size, overlap)
    tiles = cut_tiles(field, positions, size=size)
    assert tiles.shape == (len(positions), 3, 2, size, size)
    out = stitch(tiles, positions, grid, window=window)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, field)


def test_halo_tiles_are_cut_like_the_loader_and_their_centres_stitch_back() -> None:
    grid, size, halo = (40, 36), 16, 3
    field = np.arange(np.prod(grid), dtype=np.float32).reshape(grid)
    positions = tile_positions(grid, size, 4)
    tiles = cut_tiles(field, positions, size=size, halo=halo, edge="reflect")
    padded = np.pad(field, halo, mode="reflect")
    for tile, (r, c) in zip(tiles, positions, strict=True):
        np.testing.assert_array_equal(
            tile, padded[r : r + size + 2 * halo, c : c + size + 2 * halo]
        )
    centres = tiles[:, halo:-halo, halo:-halo]
    np.testing.assert_array_equal(stitch(centres, positions, grid), field)


def test_padding_is_nan_and_wrap_goes_round_the_columns() -> None:
    field = np.arange(24, dtype=np.float32).reshape(4, 6)
    positions = np.array([[0, 0]])
    padded = cut_tiles(field, positions, size=4, halo=1, edge="pad")[0]
    assert np.isnan(padded[0]).all() and np.isnan(padded[:, 0]).all()
    np.testing.assert_array_equal(padded[1:5, 1:5], field[:, :4])
    wrapped = cut_tiles(field, positions, size=4, halo=1, edge="wrap")[0]
    np.testing.assert_array_equal(wrapped[1:5, 0], field[:, 5])
    assert np.isnan(wrapped[0]).all(), "rows are padded, not wrapped"


def test_overlaps_blend_smoothly_and_nan_tiles_are_left_out() -> None:
    tiles = np.stack([np.full((8, 8), v, np.float32) for v in (0.0, 1.0, 2.0)])
    positions = np.array([[0, 0], [0, 4], [0, 8]])
    out = stitch(tiles, positions, (8, 16), window="hann")
    row = out[4]
    assert (np.diff(row) >= 0).all(), "a ramp across the overlaps, no step back"
    assert 0.0 < row[5] < 1.0 < row[9] < 2.0, "overlapping tiles are blended, not chosen"
    assert row[0] == 0.0 and row[-1] == 2.0
    tiles[1] = np.nan
    out = stitch(tiles, positions, (8, 16))
    assert np.isfinite(out).all(), "cells under a NaN tile take the other tiles' values"
    np.testing.assert_array_equal(out[:, 4:8], 0.0)


def test_taper_is_positive_and_symmetric() -> None:
    w = taper((32, 20))
    assert (w > 0).all()
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert w[16, 10] > w[0, 0]


def test_bad_tiling_arguments_name_the_values() -> None:
    with pytest.raises(ConfigError, match=r"overlap < size, got size=\(8, 8\) overlap=\(8, 8\)"):
        tile_positions((32, 32), 8, 8)
    with pytest.raises(ConfigError, match=r"same N, got \(2, 4, 4\) and \(3, 2\)"):
        stitch(np.zeros((2, 4, 4)), np.zeros((3, 2)), (8, 8))

"""Patch arithmetic: spec from config, edge maps, splits, gaps, ids ↔ (t0, row0, col0)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from stpipe.app.config import config_from_dict
from stpipe.core.errors import ConfigError, StoreError
from stpipe.core.patches import (
    PatchIndex,
    PatchSpec,
    axis_indices,
    axis_positions,
    check_not_empty,
    is_global_lon,
    static_coordinates,
    time_features,
)
from stpipe.core.splits import Splits, time_segments

RAW = {
    "pipeline": {"name": "p", "workdir": "/tmp/unused"},
    "source": {"kind": "synthetic-weather", "variables": ["t2m", "u10", "v10"]},
    "patches": {
        "input_steps": 6,
        "leads": [1, 3],
        "size": [8, 8],
        "stride": [4, 6],
        "time_stride": 2,
        "halo": 2,
        "edge": "reflect",
        "target_variables": ["v10", "t2m"],
        "static_features": ["lat", "mask"],
        "nan_policy": "mask",
    },
    "split": {"val_start": "2024-01-03", "test_start": "2024-01-04T12:00"},
}


def spec(**changes) -> PatchSpec:
    base = dict(input_steps=4, leads=(1, 2), size=(8, 8), input_variables=("a", "b"))
    return PatchSpec(**(base | changes))


def hourly(n: int, *, drop: slice | None = None) -> np.ndarray:
    times = pd.date_range("2024-01-01", periods=n, freq="1h")
    return (times.delete(drop) if drop else times).values.astype("datetime64[ns]")


def test_spec_from_config_takes_every_patches_key() -> None:
    s = config_from_dict(RAW).patch_spec()
    assert (s.input_steps, s.leads, s.size, s.stride) == (6, (1, 3), (8, 8), (4, 6))
    assert (s.time_stride, s.halo, s.edge, s.nan_policy) == (2, 2, "reflect", "mask")
    assert s.input_variables == ("t2m", "u10", "v10")
    assert s.target_variables == ("v10", "t2m")
    assert s.target_index.tolist() == [2, 0]
    assert s.static_features == ("lat", "mask") and s.time_features
    assert s.span == 9 and s.shape == (12, 12) and s.target_offsets.tolist() == [6, 8]


def test_spec_defaults_stride_to_size_and_targets_to_inputs() -> None:
    s = spec()
    assert s.stride == (8, 8) and s.target_variables == ("a", "b") and s.halo == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"leads": (3, 1)}, r"leads must be positive and increasing, got \[3, 1\]"),
        ({"target_variables": ("c",)}, r"target_variables \['c'\] must be a subset"),
        ({"edge": "mirror"}, r"edge must be one of .*got 'mirror'"),
        ({"halo": -1}, "halo must be >= 0, got -1"),
        ({"static_features": ("elevation",)}, r"static_features must be among .*'elevation'"),
    ],
)
def test_bad_specs_name_the_field_and_value(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        spec(**changes)


@pytest.mark.parametrize("mode", ["reflect", "wrap"])
@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_axis_indices_match_numpy_pad(mode, n) -> None:
    pad = 3 * n + 4
    reference = np.pad(np.arange(n), pad, mode=mode)
    for start in range(-pad, n):
        length = min(7, pad + n - start)
        expected = reference[start + pad : start + pad + length]
        np.testing.assert_array_equal(axis_indices(start, length, n, mode), expected)


def test_axis_indices_pad_marks_outside_cells() -> None:
    np.testing.assert_array_equal(axis_indices(-2, 6, 3, "pad"), [-1, -1, 0, 1, 2, -1])
    np.testing.assert_array_equal(
        axis_indices(np.array([-1, 1]), 3, 3, "clip"), [[0, 0, 1], [1, 2, 2]]
    )


@pytest.mark.parametrize(
    ("n", "size", "stride", "edge", "wrap", "expected"),
    [
        (64, 32, 32, "pad", False, 2),
        (70, 32, 32, "pad", False, 3),
        (70, 32, 32, "drop", False, 2),
        (20, 32, 8, "pad", False, 1),
        (20, 32, 8, "drop", False, 0),
        (70, 32, 16, "reflect", False, 4),
        (360, 32, 32, "wrap", True, 12),
    ],
)
def test_positions_cover_the_axis(n, size, stride, edge, wrap, expected) -> None:
    count = axis_positions(n, size=size, stride=stride, edge=edge, wrap=wrap)
    assert count == expected
    if edge != "drop" and count:
        assert (count - 1) * stride + size >= n, "the last position reaches the edge"


def test_time_segments_break_at_gaps_and_bad_steps() -> None:
    times = hourly(40, drop=slice(10, 13))  # 37 steps, a 3-hour gap after index 9
    bad = np.zeros(37, dtype=bool)
    bad[20] = True
    segments = time_segments(times, 3600, (2, 30), bad_steps=bad)
    assert segments.tolist() == [[2, 10], [10, 20], [21, 30]]
    assert time_segments(times, 3600, (5, 5)).shape == (0, 2)


def test_splits_resolve_to_half_open_index_ranges() -> None:
    times = hourly(120)
    splits = Splits.from_settings(config_from_dict(RAW).split)
    train, val, test = (splits.index_range(s, times) for s in ("train", "val", "test"))
    assert train == (0, 48) and val == (48, 84) and test == (84, 120)
    assert splits.index_range("all", times) == (0, 120)
    with pytest.raises(ConfigError, match="split must be one of"):
        splits.index_range("holdout", times)


def brute_force_windows(times, s: PatchSpec, lo, hi, step_s=3600):
    """Every t0 whose whole span lies in [lo, hi) with regular steps, by enumeration."""
    t = times.astype(np.int64)
    out = []
    for t0 in range(lo, hi - s.span + 1):
        steps = t[t0 : t0 + s.span]
        if (np.diff(steps) == step_s * 10**9).all():
            out.append(t0)
    return out


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_no_window_crosses_a_split_boundary_or_a_gap(split) -> None:
    times = hourly(130, drop=slice(60, 64))
    s = spec(leads=(1, 3), time_stride=1)
    splits = Splits(np.datetime64("2024-01-03", "ns"), np.datetime64("2024-01-04T12", "ns"))
    lo, hi = splits.index_range(split, times)
    index = PatchIndex.build(s, times=times, step_s=3600, grid_shape=(16, 16), index_range=(lo, hi))
    assert index.starts.tolist() == brute_force_windows(times, s, lo, hi)
    start, stop = splits.time_range(split)
    first, last = times[index.starts], times[index.starts + s.span - 1]
    assert start is None or (first >= start).all()
    assert stop is None or (last < stop).all()


def test_time_stride_restarts_after_each_gap() -> None:
    times = hourly(40, drop=slice(15, 17))
    index = PatchIndex.build(
        spec(time_stride=4), times=times, step_s=3600, grid_shape=(8, 8), index_range=(0, 38)
    )
    assert index.starts.tolist() == [0, 4, 8, 15, 19, 23, 27, 31]


def test_ids_map_to_windows_and_positions_by_arithmetic() -> None:
    s = spec(size=(8, 6), stride=(4, 6), halo=1)
    index = PatchIndex.build(
        s, times=hourly(30), step_s=3600, grid_shape=(20, 17), index_range=(0, 30)
    )
    assert (index.n_rows, index.n_cols) == (4, 3)
    t0, row0, col0 = index.locate(np.arange(len(index)))
    expected = list(itertools.product(index.starts, [-1, 3, 7, 11], [-1, 5, 11]))
    assert list(zip(t0.tolist(), row0.tolist(), col0.tolist(), strict=True)) == expected
    assert index.locate(7) == (index.starts[0], 7, 5)
    with pytest.raises(IndexError, match=r"patch ids must be in \[0, 300\)"):
        index.locate(len(index))


def test_row_and_column_maps_follow_the_edge_policy() -> None:
    index = PatchIndex.build(
        spec(size=(4, 4), halo=1, edge="wrap"),
        times=hourly(10),
        step_s=3600,
        grid_shape=(6, 8),
        index_range=(0, 10),
        global_lon=True,
    )
    rows, rows_inside = index.row_maps()
    cols, cols_inside = index.col_maps()
    assert rows.tolist() == [[-1, 0, 1, 2, 3, 4], [3, 4, 5, -1, -1, -1]]
    assert rows_inside.tolist() == [[False] + [True] * 5, [True] * 3 + [False] * 3]
    assert cols.tolist() == [[7, 0, 1, 2, 3, 4], [3, 4, 5, 6, 7, 0]]
    assert cols_inside.all(), "wrapped columns are real cells"
    assert index.core(0).tolist() == [False, True, True, True, True, False]


def test_wrap_needs_a_global_longitude_grid() -> None:
    assert is_global_lon(np.arange(0, 360, 2.5)) and not is_global_lon(np.arange(-5, 5, 0.25))
    with pytest.raises(ConfigError, match="wrap' needs a global longitude grid"):
        PatchIndex.build(
            spec(edge="wrap"),
            times=hourly(10),
            step_s=3600,
            grid_shape=(8, 8),
            index_range=(0, 10),
        )


def test_an_empty_split_explains_why() -> None:
    index = PatchIndex.build(
        spec(leads=(1, 24)),
        times=hourly(20),
        step_s=3600,
        grid_shape=(8, 8),
        index_range=(0, 20),
    )
    with pytest.raises(StoreError, match=r"split 'val' has no valid window: a window needs 28"):
        check_not_empty(index, split="val", times=hourly(20))


def test_time_features_are_hour_of_day_and_day_of_week() -> None:
    times = pd.date_range("2024-03-04 00:00", periods=200, freq="37min")  # a Monday
    feats = time_features(times.values)
    day = (times.hour + times.minute / 60) / 24
    week = (times.day_of_week + day) / 7
    expected = np.stack(
        [
            np.sin(2 * np.pi * day),
            np.cos(2 * np.pi * day),
            np.sin(2 * np.pi * week),
            np.cos(2 * np.pi * week),
        ],
        axis=-1,
    )
    assert feats.dtype == np.float32 and feats.shape == (200, 4)
    np.testing.assert_allclose(feats, expected, atol=1e-6)


def test_static_coordinates_are_scaled_to_about_one() -> None:
    lat, lon = np.array([-90.0, 0.0, 45.0]), np.array([0.0, 90.0, 270.0, 359.0])
    out = static_coordinates(["lon", "mask", "lat"], lat, lon, latlon=True)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, -0.5, -1 / 180], atol=1e-7)
    np.testing.assert_allclose(out[1, :, 0], [-1.0, 0.0, 0.5])
    cells = static_coordinates(["lat"], np.arange(5), np.arange(3), latlon=False)
    np.testing.assert_allclose(cells[0, :, 1], [-1, -0.5, 0, 0.5, 1])

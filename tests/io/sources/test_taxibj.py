"""TaxiBJ / BikeNYC reader: HDF5 files in the DeepST layout written with h5py."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from stpipe.core.errors import SourceError
from stpipe.io.sources import read_source_file
from stpipe.testing import assert_canonical


def slot_labels(days: Sequence[str], slots: Sequence[int]) -> list[str]:
    """``YYYYMMDDSS`` labels for every slot of every day (days as YYYY-MM-DD)."""
    return [f"{day.replace('-', '')}{slot:02d}" for day in days for slot in slots]


def flows(nt: int, ny: int = 4, nx: int = 3, seed: int = 0) -> np.ndarray:
    """Distinct counts [T, 2, H, W], float64 as in the published files."""
    return np.random.default_rng(seed).integers(0, 1000, (nt, 2, ny, nx)).astype(np.float64)


def error(path: Path, problem: str) -> str:
    return re.escape(str(path)) + ": " + problem


@pytest.mark.parametrize("kind", ["taxibj", "synthetic-traffic"])
def test_taxibj_values_and_half_hour_slots(tmp_path, taxibj_writer, source, kind):
    labels = slot_labels(["2013-07-01", "2013-07-02"], range(1, 49))
    data = flows(len(labels))
    path = taxibj_writer(tmp_path / "BJ13.h5", dates=labels, data=data)

    ds = read_source_file(path, source(kind, ["inflow", "outflow"])).to_dataset()

    np.testing.assert_array_equal(ds["inflow"].values, data[:, 0].astype(np.float32))
    np.testing.assert_array_equal(ds["outflow"].values, data[:, 1].astype(np.float32))
    np.testing.assert_array_equal(
        ds["time"].values, pd.date_range("2013-07-01", periods=96, freq="30min").values
    )
    assert ds["inflow"].dims == ("time", "y", "x")
    np.testing.assert_array_equal(ds["y"].values, np.arange(4))
    np.testing.assert_array_equal(ds["x"].values, np.arange(3))
    assert ds.attrs["time_step_s"] == 1800 and ds.attrs["source_file"] == "BJ13.h5"
    assert_canonical(ds)


def test_incomplete_day_lacks_the_missing_slots(tmp_path, taxibj_writer, source):
    kept = [s for s in range(1, 49) if s not in (7, 8, 9, 48)]
    labels = slot_labels(["2015-03-01"], kept)
    data = flows(len(labels))
    path = taxibj_writer(tmp_path / "BJ15.h5", dates=labels, data=data)

    ds = read_source_file(path, source("taxibj", ["outflow"])).to_dataset()

    expected = pd.Timestamp("2015-03-01") + pd.to_timedelta([(s - 1) * 30 for s in kept], "min")
    np.testing.assert_array_equal(ds["time"].values, expected.values)
    np.testing.assert_array_equal(ds["outflow"].values, data[:, 1].astype(np.float32))
    assert ds.attrs["time_step_s"] == 1800
    assert list(ds.data_vars) == ["outflow"]


def test_bikenyc_has_hourly_slots(tmp_path, taxibj_writer, source):
    labels = slot_labels(["2014-04-01", "2014-04-02"], range(1, 25))
    data = flows(len(labels), ny=16, nx=8)
    path = taxibj_writer(tmp_path / "NYC14.h5", dates=labels, data=data)

    ds = read_source_file(
        path, source("taxibj", ["bikes_in"], rename={"inflow": "bikes_in"})
    ).to_dataset()

    np.testing.assert_array_equal(
        ds["time"].values, pd.date_range("2014-04-01", periods=48, freq="1h").values
    )
    np.testing.assert_array_equal(ds["bikes_in"].values, data[:, 0].astype(np.float32))
    assert ds.attrs["time_step_s"] == 3600


def test_slots_per_day_attribute_overrides_inference(tmp_path, taxibj_writer, source):
    labels = slot_labels(["2020-01-01"], range(1, 9))
    path = taxibj_writer(tmp_path / "3h.h5", dates=labels, data=flows(8), slots_per_day=8)

    ds = read_source_file(path, source("taxibj", ["inflow"])).to_dataset()

    np.testing.assert_array_equal(
        ds["time"].values, pd.date_range("2020-01-01", periods=8, freq="3h").values
    )
    assert ds.attrs["time_step_s"] == 3 * 3600


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (
            ["2013070101", "2013070102", "2013070102"],
            r"duplicate slot: date '2013070102' \(2013-07-01T01:00:00\) occurs 2 times",
        ),
        (["2013070101", "2013070100", "2013070103"], r"slots must be 1..24, got 0..3"),
        (["2013070101", "2013023102", "2013070103"], r"'date' holds an impossible day"),
        (["2013070101", "13070102", "2013070103"], r"date '13070102' is not YYYYMMDDSS"),
        (["2013070103", "2013070102", "2013070104"], r"times not increasing"),
    ],
    ids=["duplicate", "slot-0", "bad-day", "bad-format", "unordered"],
)
def test_bad_dates_raise_source_error(tmp_path, taxibj_writer, source, labels, problem):
    path = taxibj_writer(tmp_path / "bad.h5", dates=labels, data=flows(len(labels)))

    with pytest.raises(SourceError, match=error(path, problem)):
        read_source_file(path, source("taxibj", ["inflow"])).to_dataset()


def test_wrong_shapes_and_missing_datasets_are_errors(tmp_path, taxibj_writer, source):
    labels = slot_labels(["2013-07-01"], range(1, 5))
    three_channels = taxibj_writer(tmp_path / "c3.h5", dates=labels, data=np.zeros((4, 3, 2, 2)))
    short_dates = taxibj_writer(tmp_path / "d3.h5", dates=labels[:3], data=flows(4))
    no_date = taxibj_writer(tmp_path / "nd.h5", dates=labels, data=flows(4))
    with h5py.File(no_date, "a") as f:
        del f["date"]

    with pytest.raises(
        SourceError,
        match=error(
            three_channels,
            r"expected 'data' \[T, 2, H, W\] "
            r"and 'date' \[T\], got 'data' \(4, 3, 2, 2\)",
        ),
    ):
        read_source_file(three_channels, source("taxibj", ["inflow"])).to_dataset()
    with pytest.raises(
        SourceError,
        match=error(
            short_dates,
            r"expected .* got 'data' \(4, 2, 4, 3\) and "
            r"'date' \(3,\)",
        ),
    ):
        read_source_file(short_dates, source("taxibj", ["inflow"])).to_dataset()
    with pytest.raises(
        SourceError,
        match=error(
            no_date,
            r"no dataset 'date'; the file has "
            r"\['data'\]",
        ),
    ):
        read_source_file(no_date, source("taxibj", ["inflow"])).to_dataset()


def test_unknown_variable_lists_the_channels(tmp_path, taxibj_writer, source):
    path = taxibj_writer(tmp_path / "BJ.h5", dates=["2013070101"], data=flows(1))

    with pytest.raises(
        SourceError,
        match=error(
            path,
            r"variable\(s\) \['crowd'\] not found; "
            r"the file has \['inflow', 'outflow'\]",
        ),
    ):
        read_source_file(path, source("taxibj", ["crowd"])).to_dataset()


def test_truncated_and_non_hdf5_files_are_errors(tmp_path, taxibj_writer, source):
    labels = slot_labels(["2013-07-01"], range(1, 49))
    path = taxibj_writer(tmp_path / "cut.h5", dates=labels, data=flows(48, ny=32, nx=32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.h5"
    junk.write_text("date,inflow\n2013070101,3\n")

    for bad in (path, junk):
        with pytest.raises(SourceError, match=error(bad, "not a readable HDF5 file")):
            read_source_file(bad, source("taxibj", ["inflow"])).to_dataset()

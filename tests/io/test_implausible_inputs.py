"""Implausible inputs are refused before they reach the append-only store: files dated in
the future or far past the store's end, infinite values, values outside a variable's
bounds. Real NetCDF files; each refusal leaves the store exactly as it was."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr

from stpipe.core.errors import ConfigError
from stpipe.io.ingestion import ingest
from stpipe.io.manifest import read_manifest, store_digest
from stpipe.io.store import open_store
from stpipe.testing import make_dataset


def stored(config) -> tuple[str, xr.Dataset]:
    """The store's manifest digest and committed data."""
    return store_digest(config.store_path), open_store(config.store_path).load()


def assert_unchanged(config, before: tuple[str, xr.Dataset]) -> None:
    digest, data = before
    assert store_digest(config.store_path) == digest
    xr.testing.assert_identical(open_store(config.store_path).load(), data)


def write_nc(ds: xr.Dataset, path: Path, **encoding: dict) -> Path:
    ds.to_netcdf(
        path, encoding={"time": {"units": "hours since 2024-01-01", "dtype": "i4"}} | encoding
    )
    return path


@pytest.fixture
def day_one(source_data, write_feed, make_config):
    """A store holding the first day of ``source_data`` (2024-01-01, hourly)."""
    write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    return config


def refused_once(config) -> tuple[Path, str]:
    report = ingest(config.ingest_job, progress=False)
    assert report.ingested == [], report.summary()
    ((path, reason),) = report.refused
    return path, reason


# --- times -------------------------------------------------------------------------------


def test_file_dated_in_the_future_is_refused_and_the_real_one_then_ingests(
    source_data, day_one, feed, assert_same_values
):
    before = stored(day_one)
    future = make_dataset(nt=24, ny=16, nx=20, variables=("t2m", "u10"), start="2031-01-02")
    bad = write_nc(future, feed / "day_2024010200.nc")

    path, reason = refused_once(day_one)

    assert path == bad
    assert re.fullmatch(
        r"time 2031-01-02T23:00:00 is later than now \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d UTC\): the "
        r"store holds observations, so the file is mis-dated \(check its time units and "
        r"calendar\)",
        reason,
    ), reason
    assert_unchanged(day_one, before)

    write_nc(source_data.isel(time=slice(24, 48)), bad)
    report = ingest(day_one.ingest_job, progress=False)
    assert report.ingested == [bad] and report.refused == []
    assert_same_values(open_store(day_one.store_path).load(), source_data.isel(time=slice(0, 48)))


def wrong_reference_date(source_data, feed: Path) -> Path:
    """The second day, its time units saying 2024-03-02 instead of 2024-01-02."""
    path = write_nc(
        source_data.isel(time=slice(24, 48)),
        feed / "day_2024010200.nc",
        time={"units": "hours since 2024-01-02", "dtype": "i4"},
    )
    with netCDF4.Dataset(path, "a") as nc:
        nc["time"].units = "hours since 2024-03-02 00:00:00"
    return path


def test_file_far_after_the_store_end_is_refused(source_data, day_one, feed):
    before = stored(day_one)
    bad = wrong_reference_date(source_data, feed)

    path, reason = refused_once(day_one)

    assert path == bad
    assert reason == (
        "its first new time 2024-03-02T00:00:00 is 60 d 1 h after the store's end "
        "2024-01-01T23:00:00, more than [source] max_gap (3 d); if the file is dated right, "
        "raise max_gap"
    )
    assert_unchanged(day_one, before)


def test_a_gap_up_to_max_gap_is_accepted_and_recorded(source_data, day_one, feed, make_config):
    bad = wrong_reference_date(source_data, feed)
    config = make_config(source={"max_gap": "61D"})

    report = ingest(config.ingest_job, progress=False)

    assert report.ingested == [bad]
    assert read_manifest(config.store_path).gaps == (
        (np.datetime64("2024-01-01T23:00", "ns"), np.datetime64("2024-03-02T00:00", "ns")),
    )


# --- values ------------------------------------------------------------------------------


def holes_of_1e20(ds: xr.Dataset, path: Path) -> Path:
    ds["t2m"].values[3, 5, 7] = 1e20
    ds["t2m"].values[10, 2, 2] = 1e20
    return write_nc(ds, path)


def infinities(ds: xr.Dataset, path: Path) -> Path:
    ds["u10"].values[0, 1, 2] = np.inf
    ds["u10"].values[5, 0, 0] = -np.inf
    return write_nc(ds, path)


def scale_factor_1e30(ds: xr.Dataset, path: Path) -> Path:
    packing = {"dtype": "i2", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -32767}
    write_nc(ds, path, t2m=packing)
    with netCDF4.Dataset(path, "a") as nc:
        nc["t2m"].scale_factor = 1e30
    return path


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (
            holes_of_1e20,
            r"variable 't2m' has 2 value\(s\) outside \[150, 350\] K \(the physical bounds of "
            r"t2m in K\), the first 1e\+20 at time 2024-01-02T03:00:00, row 5, col 7",
        ),
        (
            infinities,
            r"variable 'u10' has 2 infinite value\(s\), the first inf at time "
            r"2024-01-02T00:00:00, row 1, col 2",
        ),
        (
            scale_factor_1e30,
            r"variable 't2m' has 7\d\d\d value\(s\) outside \[150, 350\] K \(the physical "
            r"bounds of t2m in K\), the first -?\d(\.\d+)?e\+3\d at time 2024-01-02T00:00:00, "
            r"row 0, col 0",
        ),
    ],
    ids=["undeclared-1e20-holes", "inf", "scale-factor-1e30"],
)
def test_implausible_values_are_refused(source_data, day_one, feed, spoil, message):
    before = stored(day_one)
    bad = spoil(source_data.isel(time=slice(24, 48)).copy(deep=True), feed / "day_2024010200.nc")

    path, reason = refused_once(day_one)

    assert path == bad
    assert re.fullmatch(message, reason), reason
    assert_unchanged(day_one, before)


def test_declared_missing_values_are_stored_as_nan(source_data, day_one, feed):
    day = source_data.isel(time=slice(24, 48)).copy(deep=True)
    day["t2m"].values[3, 5, 7] = 1e20
    path = write_nc(day, feed / "day_2024010200.nc")
    with netCDF4.Dataset(path, "a") as nc:
        nc["t2m"].missing_value = np.float32(1e20)

    report = ingest(day_one.ingest_job, progress=False)

    assert report.ingested == [path] and report.refused == []
    t2m = open_store(day_one.store_path)["t2m"].values
    assert np.isnan(t2m[24 + 3, 5, 7]) and np.isnan(t2m).sum() == 1


def test_configured_bounds_take_precedence(source_data, day_one, feed, make_config):
    config = make_config(**{"source.bounds": {"u10": [0, 15]}})
    before = stored(config)
    day = source_data.isel(time=slice(24, 48)).copy(deep=True)
    day["u10"].values[2, 3, 4] = 20.0
    bad = write_nc(day, feed / "day_2024010200.nc")

    path, reason = refused_once(config)

    assert path == bad
    assert reason == (
        "variable 'u10' has 1 value(s) outside [0, 15] m s-1 ([source] bounds), the first 20 "
        "at time 2024-01-02T02:00:00, row 3, col 4"
    )
    assert_unchanged(config, before)


def test_the_files_cf_valid_range_bounds_its_values(source_data, day_one, feed):
    before = stored(day_one)
    day = source_data.isel(time=slice(24, 48)).copy(deep=True)
    day["t2m"].values[7, 8, 9] = 305.0
    packing = {"dtype": "i2", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -32767}
    bad = write_nc(day, feed / "day_2024010200.nc", t2m=packing)
    with netCDF4.Dataset(bad, "a") as nc:
        nc["t2m"].valid_range = np.array([-2000, 2000], np.int16)  # packed: 260..300 K

    path, reason = refused_once(day_one)

    assert path == bad
    assert reason == (
        "variable 't2m' has 1 value(s) outside [260, 300] K (the file's valid range), the "
        "first 305 at time 2024-01-02T07:00:00, row 8, col 9"
    )
    assert_unchanged(day_one, before)


def test_with_skip_the_bad_file_is_refused_and_ingest_goes_on(
    source_data, write_feed, make_config, assert_same_values
):
    good, bad, later = write_feed(source_data)
    infinities(source_data.isel(time=slice(24, 48)).copy(deep=True), bad)
    config = make_config(source={"on_bad_file": "skip"})

    report = ingest(config.ingest_job, progress=False)

    assert report.ingested == [good, later]
    assert report.refused == [
        (
            bad,
            "variable 'u10' has 2 infinite value(s), the first inf at time "
            "2024-01-02T00:00:00, row 1, col 2",
        )
    ]
    kept = source_data.isel(time=np.r_[0:24, 48:72])
    assert_same_values(open_store(config.store_path).load(), kept)


def test_negative_crowd_flow_is_refused_and_no_store_is_made(feed, make_config):
    flows = np.random.default_rng(0).poisson(30, (48, 2, 4, 5)).astype(np.int64)
    flows[20, 1, 3, 4] = -5  # outflow
    path = feed / "taxibj_20240304.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=flows)
        f.create_dataset("date", data=[f"20240304{slot:02d}".encode() for slot in range(1, 49)])
    config = make_config(
        source={"kind": "taxibj", "paths": "feed/*.h5", "variables": ["inflow", "outflow"]}
    )

    path_refused, reason = refused_once(config)

    assert path_refused == path
    assert reason == (
        "variable 'outflow' has 1 value(s) outside [0, inf] (the physical bounds of outflow), "
        "the first -5 at time 2024-03-04T10:00:00, row 3, col 4"
    )
    assert not config.store_path.exists()


def test_synthetic_feeds_are_plausible(make_config):
    for kind, variables in (
        ("synthetic-weather", ["t2m", "u10", "v10", "msl"]),
        ("synthetic-traffic", ["inflow", "outflow"]),
    ):
        config = make_config(
            pipeline={"workdir": kind},
            source={"kind": kind, "variables": variables},
            **{"source.synthetic": {"days": 2, "grid": [8, 8], "start": "2024-07-01"}},
        )
        report = ingest(config.ingest_job, progress=False)
        assert report.refused == [] and len(report.ingested) == 2, report.summary()


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        (
            {"source.bounds": {"t2m": [350, 150]}},
            "bounds of 't2m' must be [low, high] with low < high",
        ),
        ({"source.bounds": {"msl": [0, 1]}}, "bounds names ['msl'], which are not in variables"),
        ({"source": {"max_gap": "3 parsecs"}}, "'3 parsecs' is not a duration such as '3D'"),
        ({"source": {"max_gap": "0h"}}, "max_gap must be positive, got '0h'"),
    ],
    ids=["reversed", "unknown-variable", "not-a-duration", "zero"],
)
def test_bad_plausibility_settings_are_config_errors(make_config, sections, problem):
    with pytest.raises(ConfigError) as error:
        make_config(**sections)
    assert problem in str(error.value) and "\n" not in str(error.value).strip()


def test_max_gap_is_a_duration_of_three_days_by_default(make_config):
    assert make_config().source.max_gap_s == 3 * 86400
    for text, seconds in (("36h", 36 * 3600), ("90min", 5400), ("600s", 600), ("2W", 1209600)):
        assert make_config(source={"max_gap": text}).source.max_gap_s == seconds

"""NetCDF reader: real files (NCEP via hvsampledata, ERA5-style written with netCDF4)."""

from __future__ import annotations

import re
from pathlib import Path

import hvsampledata
import netCDF4
import numpy as np
import pandas as pd
import pytest

from stpipe.core.errors import SourceError
from stpipe.io.sources import read_source_file
from stpipe.testing import assert_canonical

LAT = np.array([60.0, 55.0, 50.0, 45.0])  # ERA5 order: north to south
TIMES = pd.date_range("2024-03-01", periods=4, freq="6h")


@pytest.fixture(scope="module")
def ncep_path() -> Path:
    return Path(hvsampledata.air_temperature("xarray").air.encoding["source"])


def fields(nt: int, nlat: int, nlon: int, *, offset: float = 270.0, seed: int = 0) -> np.ndarray:
    return offset + 10 * np.random.default_rng(seed).standard_normal((nt, nlat, nlon))


def by_label(values: np.ndarray, file_lat, file_lon, lat, lon) -> np.ndarray:
    """``values`` [time, file lat, file lon] picked at the given (lat, lon) labels."""
    rows = [list(file_lat).index(v) for v in lat]
    cols = [list(np.mod(file_lon, 360)).index(v % 360) for v in lon]
    return values[:, rows][:, :, cols]


def error(path: Path, problem: str) -> str:
    return re.escape(str(path)) + ": " + problem


def set_time(path: Path, values, *, units: str | None, calendar: str = "standard") -> None:
    with netCDF4.Dataset(path, "a") as nc:
        var = nc["time"]
        if units is None:
            var.delncattr("units")
        else:
            var.units = units
        var.calendar = calendar
        var[:] = values


@pytest.mark.parametrize(
    ("longitude", "expected_lon"),
    [("-180..180", np.arange(-160.0, -29.0, 2.5)), ("0..360", np.arange(200.0, 331.0, 2.5))],
)
def test_ncep_file_equals_netcdf4_decoding_in_canonical_order(
    ncep_path, source, longitude, expected_lon
):
    ds = read_source_file(ncep_path, source("netcdf", ["air"], longitude=longitude)).to_dataset()

    with netCDF4.Dataset(ncep_path) as nc:
        decoded = np.ma.filled(nc["air"][:].astype(np.float64), np.nan)  # int16 × 0.01
        time = nc["time"]
        file_times = netCDF4.num2date(
            time[:],
            time.units,
            time.calendar,
            only_use_cftime_datetimes=False,
            only_use_python_datetimes=True,
        )
    np.testing.assert_array_equal(ds["air"].values, decoded[:, ::-1, :].astype(np.float32))
    np.testing.assert_array_equal(ds["lat"].values, np.arange(15.0, 76.0, 2.5))
    np.testing.assert_array_equal(ds["lon"].values, expected_lon)
    np.testing.assert_array_equal(ds["time"].values, np.array(file_times, dtype="datetime64[ns]"))
    assert_canonical(ds)
    attrs = ds["air"].attrs
    assert attrs["units"] == "degK" and attrs["long_name"].startswith("4xDaily Air"), attrs
    assert not {"scale_factor", "add_offset", "_FillValue"} & set(attrs), attrs
    assert ds.attrs["Conventions"] == "COARDS" and ds.attrs["title"].startswith("4x daily")
    assert ds.attrs["time_step_s"] == 6 * 3600
    assert ds.attrs["source_file"] == "air_temperature_small.nc"
    assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["axis"] == "X"


def test_rename_maps_file_names_to_store_names(ncep_path, source):
    ds = read_source_file(ncep_path, source("netcdf", ["t"], rename={"air": "t"})).to_dataset()

    assert list(ds.data_vars) == ["t"]
    assert ds["t"].attrs["units"] == "degK"


@pytest.mark.parametrize("kind", ["netcdf", "synthetic-weather"])
@pytest.mark.parametrize("time_name", ["time", "valid_time"])
def test_era5_packed_fill_values_become_nan_at_exactly_those_cells(
    tmp_path, netcdf_writer, source, kind, time_name
):
    lon = np.arange(0.0, 360.0, 30.0)
    values = {"t2m": fields(4, 4, 12), "u10": fields(4, 4, 12, offset=0.0, seed=1)}
    holes = np.zeros(values["t2m"].shape, bool)
    holes[1, 2, 3] = holes[3, 0, 0] = holes[2, 1, 11] = True
    values["t2m"][holes] = np.nan
    path = netcdf_writer(
        tmp_path / "era5.nc", times=TIMES, lat=LAT, lon=lon, values=values, time_name=time_name
    )

    ds = read_source_file(path, source(kind, ["t2m", "u10"])).to_dataset()

    with netCDF4.Dataset(path) as nc:
        decoded = {n: np.ma.filled(nc[n][:].astype(np.float64), np.nan) for n in values}
        scale = float(nc["t2m"].scale_factor)
    lat, lon_out = ds["lat"].values, ds["lon"].values
    for name in values:
        expected = by_label(decoded[name], LAT, lon, lat, lon_out).astype(np.float32)
        np.testing.assert_array_equal(ds[name].values, expected, err_msg=name)
    got_holes = np.isnan(ds["t2m"].values)
    assert got_holes.sum() == 3
    np.testing.assert_array_equal(got_holes, by_label(holes, LAT, lon, lat, lon_out))
    original = by_label(values["t2m"], LAT, lon, lat, lon_out)
    assert np.nanmax(np.abs(ds["t2m"].values - original)) <= scale / 2 + 1e-4
    np.testing.assert_array_equal(ds["time"].values, TIMES.values)
    np.testing.assert_array_equal(lon_out, np.arange(-180.0, 180.0, 30.0))
    assert ds["t2m"].attrs == {"units": "K", "long_name": "2 metre temperature"}
    assert_canonical(ds)


def test_float32_packing_attributes_unpack_in_float32_like_netcdf4(tmp_path, netcdf_writer, source):
    path = netcdf_writer(
        tmp_path / "f32.nc",
        times=TIMES,
        lat=LAT,
        lon=np.arange(0.0, 40, 10),
        values={"t2m": fields(4, 4, 4)},
    )
    with netCDF4.Dataset(path, "a") as nc:
        nc["t2m"].scale_factor = np.float32(0.0123)
        nc["t2m"].add_offset = np.float32(271.3)

    # The repacked values span 271 ± 403 K: wider bounds than t2m's physical ones.
    ds = read_source_file(
        path, source("netcdf", ["t2m"], bounds={"t2m": (-200.0, 700.0)})
    ).to_dataset()

    with netCDF4.Dataset(path) as nc:
        decoded = nc["t2m"][:]
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(ds["t2m"].values, decoded[:, ::-1].filled(np.nan))


@pytest.mark.parametrize(
    "file_lon",
    [np.r_[350.0:360.0, 0.0:11.0], np.r_[0.0:11.0, 350.0:360.0]],
    ids=["seam-inside", "sorted-0..360"],
)
def test_greenwich_crossing_0_360_grid_becomes_contiguous(
    tmp_path, netcdf_writer, source, file_lon
):
    values = fields(2, 4, file_lon.size)
    path = netcdf_writer(
        tmp_path / "uk.nc",
        times=TIMES[:2],
        lat=LAT,
        lon=file_lon,
        values={"t2m": values},
        packed=False,
    )

    ds = read_source_file(path, source("netcdf", ["t2m"])).to_dataset()

    np.testing.assert_array_equal(ds["lon"].values, np.arange(-10.0, 11.0))
    expected = by_label(values, LAT, file_lon, ds["lat"].values, ds["lon"].values)
    np.testing.assert_array_equal(ds["t2m"].values, expected.astype(np.float32))


def test_minus_180_grid_into_0_360_convention(tmp_path, netcdf_writer, source):
    file_lon = np.arange(-20.0, 21.0, 5.0)
    values = fields(2, 4, file_lon.size)
    path = netcdf_writer(
        tmp_path / "m.nc",
        times=TIMES[:2],
        lat=LAT,
        lon=file_lon,
        values={"t2m": values},
        packed=False,
    )

    ds = read_source_file(path, source("netcdf", ["t2m"], longitude="0..360")).to_dataset()

    np.testing.assert_array_equal(
        ds["lon"].values, [0.0, 5.0, 10.0, 15.0, 20.0, 340.0, 345.0, 350.0, 355.0]
    )
    expected = by_label(values, LAT, file_lon, ds["lat"].values, ds["lon"].values)
    np.testing.assert_array_equal(ds["t2m"].values, expected.astype(np.float32))


def test_time_step_is_most_common_step_and_absent_for_one_step(tmp_path, netcdf_writer, source):
    times = pd.DatetimeIndex(["2024-01-01T00", "2024-01-01T03", "2024-01-01T06", "2024-01-01T12"])
    lon = np.arange(0.0, 40, 10)
    uneven = netcdf_writer(
        tmp_path / "a.nc", times=times, lat=LAT, lon=lon, values={"t2m": fields(4, 4, 4)}
    )
    single = netcdf_writer(
        tmp_path / "b.nc", times=times[:1], lat=LAT, lon=lon, values={"t2m": fields(1, 4, 4)}
    )

    assert (
        read_source_file(uneven, source("netcdf", ["t2m"])).to_dataset().attrs["time_step_s"]
        == 3 * 3600
    )
    assert (
        "time_step_s" not in read_source_file(single, source("netcdf", ["t2m"])).to_dataset().attrs
    )


def test_length_one_extra_dims_are_dropped(tmp_path, netcdf_writer, source):
    path = netcdf_writer(
        tmp_path / "lvl.nc",
        times=TIMES,
        lat=LAT,
        lon=np.arange(0.0, 40, 10),
        values={"t2m": fields(4, 4, 4)},
        packed=False,
    )
    level_values = fields(4, 4, 4, seed=5).astype(np.float32)
    with netCDF4.Dataset(path, "a") as nc:
        nc.createDimension("level", 1)
        var = nc.createVariable("t", "f4", ("time", "level", "latitude", "longitude"))
        var.units = "K"
        var[:] = level_values[:, np.newaxis]

    ds = read_source_file(path, source("netcdf", ["t"])).to_dataset()

    np.testing.assert_array_equal(ds["t"].values, level_values[:, ::-1])


def test_noleap_calendar_keeps_its_dates(tmp_path, netcdf_writer, source):
    path = netcdf_writer(
        tmp_path / "noleap.nc",
        times=TIMES[:3],
        lat=LAT,
        lon=np.arange(0.0, 40, 10),
        values={"t2m": fields(3, 4, 4)},
    )
    set_time(path, [0, 1, 2], units="days since 2004-02-27", calendar="noleap")

    ds = read_source_file(path, source("netcdf", ["t2m"])).to_dataset()

    np.testing.assert_array_equal(
        ds["time"].values, np.array(["2004-02-27", "2004-02-28", "2004-03-01"], "datetime64[ns]")
    )


@pytest.mark.parametrize(
    ("values", "units", "calendar", "problem"),
    [
        (
            [0, 1, 2],
            "days since 2001-02-28",
            "360_day",
            r"time 2001-02-29T00:00:00 \(calendar '360_day'\) does not exist",
        ),
        ([0, 1, 2], "days since 2001-01-01", "julian", r"time calendar 'julian' is not supported"),
        ([0, 1, 2], "furlongs since 2001-01-01", "standard", r"cannot decode time units"),
        ([0, 1, 2], None, "standard", r"time variable 'time' has units None; expected CF"),
        (
            [0, 1, 2],
            "days since 1500-01-01",
            "proleptic_gregorian",
            r"times 1500-01-01T00:00:00..1500-01-03T00:00:00 are outside the supported",
        ),
        (
            [0, 12, 6],
            "hours since 2001-01-01",
            "standard",
            r"times not increasing: 2001-01-01T12:00:00 at position 1 is followed by "
            r"2001-01-01T06:00:00",
        ),
        (
            [0, 6, 6],
            "hours since 2001-01-01",
            "standard",
            r"duplicate time: 2001-01-01T06:00:00 at position 1",
        ),
    ],
    ids=["360_day", "julian", "bad-units", "no-units", "out-of-range", "unordered", "duplicate"],
)
def test_bad_times_raise_source_error(
    tmp_path, netcdf_writer, source, values, units, calendar, problem
):
    path = netcdf_writer(
        tmp_path / "t.nc",
        times=TIMES[:3],
        lat=LAT,
        lon=np.arange(0.0, 40, 10),
        values={"t2m": fields(3, 4, 4)},
    )
    set_time(path, values, units=units, calendar=calendar)

    with pytest.raises(SourceError, match=error(path, problem)):
        read_source_file(path, source("netcdf", ["t2m"])).to_dataset()


def test_file_without_time_steps_is_an_error(tmp_path, netcdf_writer, source):
    path = netcdf_writer(
        tmp_path / "empty.nc",
        times=TIMES[:0],
        lat=LAT,
        lon=np.arange(0.0, 40, 10),
        values={"t2m": fields(0, 4, 4)},
        packed=False,
    )

    with pytest.raises(SourceError, match=error(path, "the file has no time steps")):
        read_source_file(path, source("netcdf", ["t2m"])).to_dataset()


def test_missing_variable_lists_what_the_file_has(ncep_path, source):
    with pytest.raises(
        SourceError,
        match=error(
            ncep_path,
            r"variable\(s\) \['t2m'\] not found; the file "
            r"has \['air'\]",
        ),
    ):
        read_source_file(ncep_path, source("netcdf", ["air", "t2m"])).to_dataset()


def test_all_missing_variable_is_an_error(tmp_path, netcdf_writer, source):
    values = {"t2m": fields(2, 4, 4), "u10": np.full((2, 4, 4), np.nan)}
    path = netcdf_writer(
        tmp_path / "nan.nc",
        times=TIMES[:2],
        lat=LAT,
        lon=np.arange(0.0, 40, 10),
        values=values,
        packed=False,
    )

    with pytest.raises(SourceError, match=error(path, "variable 'u10' has no valid values")):
        read_source_file(path, source("netcdf", ["t2m", "u10"])).to_dataset()


def test_extra_dimension_is_an_error(tmp_path, netcdf_writer, source):
    path = netcdf_writer(
        tmp_path / "lvl.nc",
        times=TIMES[:2],
        lat=LAT,
        lon=np.arange(0.0, 40, 10),
        values={"t2m": fields(2, 4, 4)},
    )
    with netCDF4.Dataset(path, "a") as nc:
        nc.createDimension("level", 3)
        nc.createVariable("t", "f4", ("time", "level", "latitude", "longitude"))[:] = 1.0

    with pytest.raises(
        SourceError,
        match=error(
            path,
            r"variable 't' has dims \{'time': 2, "
            r"'level': 3, 'latitude': 4, 'longitude': 4\}",
        ),
    ):
        read_source_file(path, source("netcdf", ["t"])).to_dataset()


@pytest.mark.parametrize(
    ("lat", "lon", "problem"),
    [
        (
            np.array([50.0, 60.0, 55.0, 45.0]),
            np.arange(0.0, 40, 10),
            r"latitude is not strictly monotonic",
        ),
        (
            LAT,
            np.array([0.0, 180.0, 360.0, 10.0]),
            r"longitude has duplicate points in the -180..180 convention",
        ),
    ],
    ids=["lat", "lon"],
)
def test_bad_coordinates_raise_source_error(tmp_path, netcdf_writer, source, lat, lon, problem):
    path = netcdf_writer(
        tmp_path / "c.nc", times=TIMES[:2], lat=lat, lon=lon, values={"t2m": fields(2, 4, 4)}
    )

    with pytest.raises(SourceError, match=error(path, problem)):
        read_source_file(path, source("netcdf", ["t2m"])).to_dataset()


def test_missing_coordinate_is_named(tmp_path, source):
    path = tmp_path / "nolat.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", 1)
        nc.createDimension("y", 2)
        nc.createVariable("time", "i4", ("time",)).units = "hours since 2000-01-01"

    with pytest.raises(SourceError, match=error(path, "no latitude coordinate")):
        read_source_file(path, source("netcdf", ["t2m"])).to_dataset()


@pytest.mark.parametrize(
    ("file_format", "problem"),
    [("NETCDF4", "not a readable NetCDF file"), ("NETCDF3_CLASSIC", "truncated NetCDF file")],
)
def test_truncated_file_is_an_error(tmp_path, netcdf_writer, source, file_format, problem):
    path = netcdf_writer(
        tmp_path / "cut.nc",
        times=TIMES,
        lat=LAT,
        lon=np.arange(0.0, 360, 5),
        values={"t2m": fields(4, 4, 72)},
        file_format=file_format,
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(SourceError, match=error(path, problem)):
        read_source_file(path, source("netcdf", ["t2m"])).to_dataset()


def test_non_netcdf_and_absent_files_are_errors(tmp_path, source):
    junk = tmp_path / "junk.nc"
    junk.write_text("this is not a NetCDF file\n")

    with pytest.raises(SourceError, match=error(junk, "not a readable NetCDF file")):
        read_source_file(junk, source("netcdf", ["t2m"])).to_dataset()
    with pytest.raises(SourceError, match=error(tmp_path / "absent.nc", "file not found")):
        read_source_file(tmp_path / "absent.nc", source("netcdf", ["t2m"])).to_dataset()

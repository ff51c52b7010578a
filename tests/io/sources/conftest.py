"""Writers of real source files (netCDF4, ecCodes, h5py) in the layouts the readers meet."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import eccodes
import h5py
import netCDF4
import numpy as np
import pandas as pd
import pytest

from stpipe.io.settings import SourceSection

ERA5_FILL = -32767
ERA5_UNITS = {"t2m": "K", "u10": "m s**-1", "v10": "m s**-1", "msl": "Pa"}
ERA5_LONG_NAMES = {
    "t2m": "2 metre temperature",
    "u10": "10 metre U wind component",
    "v10": "10 metre V wind component",
    "msl": "Mean sea level pressure",
}


def write_era5_netcdf(
    path: Path,
    *,
    times: pd.DatetimeIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    values: Mapping[str, np.ndarray],
    time_name: str = "time",
    packed: bool = True,
    time_units: str = "hours since 1900-01-01 00:00:00.0",
    time_type: str = "i4",
    calendar: str = "gregorian",
    file_format: str = "NETCDF4",
) -> Path:
    """An ERA5 file as the CDS writes it: NaN in ``values`` becomes the fill value.

    ``packed``: int16 with ERA5's packing (offset = mid-range, scale = range / 65532,
    ``_FillValue`` = ``missing_value`` = -32767), as in the CDS NetCDF files up to 2024;
    otherwise float32 with a NaN ``_FillValue``, as in the newer ones (``valid_time``).
    """
    with netCDF4.Dataset(path, "w", format=file_format) as nc:
        nc.Conventions = "CF-1.6"
        nc.history = "2024-05-01 12:00:00 GMT by grib_to_netcdf-2.28.1"
        nc.createDimension("longitude", lon.size)
        nc.createDimension("latitude", lat.size)
        nc.createDimension(time_name, None)
        for name, axis_values, units in (
            ("longitude", lon, "degrees_east"),
            ("latitude", lat, "degrees_north"),
        ):
            var = nc.createVariable(name, "f4", (name,))
            var.units, var.long_name = units, name
            var[:] = axis_values
        time_var = nc.createVariable(time_name, time_type, (time_name,))
        time_var.units, time_var.long_name, time_var.calendar = time_units, "time", calendar
        if len(times):
            time_var[:] = netCDF4.date2num(times.to_pydatetime(), time_units, calendar)
        dims = (time_name, "latitude", "longitude")
        for name, data in values.items():
            if packed:
                var = nc.createVariable(name, "i2", dims, fill_value=ERA5_FILL)
                var.set_auto_maskandscale(False)
                lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
                var.scale_factor = (hi - lo) / (2**16 - 4)
                var.add_offset = (hi + lo) / 2
                var.missing_value = np.int16(ERA5_FILL)
                packed_values = np.round((data - var.add_offset) / var.scale_factor)
                var[:] = np.where(np.isnan(data), ERA5_FILL, packed_values).astype(np.int16)
            else:
                var = nc.createVariable(name, "f4", dims, fill_value=np.float32(np.nan), zlib=True)
                var[:] = data
            var.units = ERA5_UNITS.get(name, "1")
            var.long_name = ERA5_LONG_NAMES.get(name, name)
    return path


def write_grib(
    path: Path,
    *,
    times: pd.DatetimeIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    values: Mapping[str, np.ndarray],
    steps: Sequence[int] = (0,),
    levels: Sequence[int] | None = None,
    bits_per_value: int = 16,
) -> Path:
    """GRIB2 messages (one per time, step, level and shortName) on a regular lat/lon grid.

    ``values[name]`` is ``[time × step × level, lat, lon]`` in that nesting; ``lat``/``lon``
    are the grid in scanning order (first to last point, as GRIB stores them, longitudes in
    0..360); ``steps`` are forecast hours; ``levels`` puts the fields on pressure levels (hPa).
    NaN becomes a bitmap-masked point.
    """
    fields = [
        (time, step, level) for time in times for step in steps for level in (levels or [None])
    ]
    with path.open("wb") as f:
        for i, (time, step, level) in enumerate(fields):
            for short_name, data in values.items():
                h = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
                try:
                    eccodes.codes_set_string(h, "shortName", short_name)
                    eccodes.codes_set(h, "dataDate", int(time.strftime("%Y%m%d")))
                    eccodes.codes_set(h, "dataTime", int(time.strftime("%H%M")))
                    eccodes.codes_set(h, "step", step)
                    if level is not None:
                        eccodes.codes_set_string(h, "typeOfLevel", "isobaricInhPa")
                        eccodes.codes_set(h, "level", level)
                    eccodes.codes_set(h, "Ni", lon.size)
                    eccodes.codes_set(h, "Nj", lat.size)
                    eccodes.codes_set(h, "latitudeOfFirstGridPointInDegrees", float(lat[0]))
                    eccodes.codes_set(h, "latitudeOfLastGridPointInDegrees", float(lat[-1]))
                    eccodes.codes_set(h, "jScansPositively", int(lat[-1] > lat[0]))
                    eccodes.codes_set(h, "longitudeOfFirstGridPointInDegrees", float(lon[0]))
                    eccodes.codes_set(h, "longitudeOfLastGridPointInDegrees", float(lon[-1]))
                    eccodes.codes_set(
                        h, "iDirectionIncrementInDegrees", float(abs(lon[1] - lon[0]) % 360)
                    )
                    eccodes.codes_set(
                        h, "jDirectionIncrementInDegrees", float(abs(lat[1] - lat[0]))
                    )
                    eccodes.codes_set(h, "bitsPerValue", bits_per_value)
                    field = data[i].astype(np.float64).reshape(-1)
                    if np.isnan(field).any():
                        eccodes.codes_set(h, "bitmapPresent", 1)
                        eccodes.codes_set(h, "missingValue", 9999.0)
                        field = np.where(np.isnan(field), 9999.0, field)
                    eccodes.codes_set_values(h, field)
                    eccodes.codes_write(h, f)
                finally:
                    eccodes.codes_release(h)
    return path


def write_taxibj(
    path: Path,
    *,
    dates: Sequence[str],
    data: np.ndarray,
    slots_per_day: int | None = None,
) -> Path:
    """A DeepST-style crowd-flow file: ``data`` [T, 2, H, W] and ``date`` [T] (bytes)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("date", data=np.array([d.encode() for d in dates], dtype="S10"))
        if slots_per_day is not None:
            f.attrs["slots_per_day"] = slots_per_day
    return path


@pytest.fixture
def netcdf_writer() -> Callable[..., Path]:
    return write_era5_netcdf


@pytest.fixture
def grib_writer() -> Callable[..., Path]:
    return write_grib


@pytest.fixture
def taxibj_writer() -> Callable[..., Path]:
    return write_taxibj


@pytest.fixture
def source() -> Callable[..., SourceSection]:
    """``source(kind, variables, **options)`` → a validated ``[source]`` section."""

    def make(kind: str, variables: Sequence[str], **options: object) -> SourceSection:
        return SourceSection(kind=kind, paths="unused/*", variables=list(variables), **options)

    return make

"""GRIB 1/2 reader (ERA5 style) via cfgrib and ecCodes.

Variables are named as ecCodes' ``cfVarName``, which is what ECMWF's own NetCDF
conversion uses (``2t`` → ``t2m``, ``10u`` → ``u10``, ``10v`` → ``v10``, ``msl`` →
``msl``), so one config serves both formats; ``[source] rename`` applies after that.
Only regular lat/lon grids are read. The time axis is the validity time: for analyses one
step per message date; forecast fields with several steps per date (accumulations) are
laid out along valid time, which must come out strictly increasing. Bitmap-masked points
are NaN. cfgrib is told not to write ``.idx`` files, since input folders may be read-only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from stpipe.core.errors import ConfigError, SourceError
from stpipe.io.sources.canonical import (
    SourceData,
    SourceOptions,
    latlon_data,
    latlon_layout,
    library_lock,
    select_variables,
)

try:  # the "grib" extra: cfgrib and ecCodes (~175 MB), which only GRIB sources need
    import cfgrib
    from gribapi.errors import GribInternalError
except ImportError as exc:
    raise ConfigError("GRIB files need cfgrib: pip install 'stpipe[grib]'") from exc

_GRID_DIMS = ("latitude", "longitude")
_TIME_DIMS = ("time", "step")
_KEPT_ATTRS = (
    "units",
    "long_name",
    "standard_name",
    "GRIB_paramId",
    "GRIB_shortName",
    "GRIB_typeOfLevel",
    "GRIB_stepType",
)
_KEPT_GLOBAL_ATTRS = (
    "Conventions",
    "institution",
    "GRIB_edition",
    "GRIB_centre",
    "GRIB_centreDescription",
)


def read_grib(path: Path, source: SourceOptions) -> SourceData:
    """Read one GRIB file into the canonical ``(time, lat, lon)`` data."""
    with library_lock():  # cfgrib reads the values lazily, in _read: ecCodes runs throughout
        try:
            with warnings.catch_warnings():
                # cfgrib merges its groups with xarray's old default; the warning is not ours.
                warnings.simplefilter("ignore", FutureWarning)
                groups = cfgrib.open_datasets(
                    str(path), backend_kwargs={"indexpath": "", "errors": "raise"}
                )
        except (EOFError, OSError, ValueError, KeyError, GribInternalError) as exc:
            raise SourceError(path, f"not a readable GRIB file: {exc}") from exc
        try:
            return _read(path, groups, source)
        finally:
            for group in groups:
                group.close()


def _read(path: Path, groups: list[xr.Dataset], source: SourceOptions) -> SourceData:
    arrays = [group[name] for group in groups for name in group.data_vars]
    chosen = select_variables(path, [str(a.name) for a in arrays], source)
    by_name = {str(a.name): a for a in arrays}
    first = by_name[next(iter(chosen.values()))]
    for file_name in chosen.values():
        _check_grid(path, by_name[file_name])
    times, lat, lon = _valid_times(first), first["latitude"], first["longitude"]
    layout = latlon_layout(path, lat.values, lon.values, longitude=source.longitude)
    variables = {}
    for store_name, file_name in chosen.items():
        array = by_name[file_name]
        if not (np.array_equal(array["latitude"], lat) and np.array_equal(array["longitude"], lon)):
            raise SourceError(
                path, f"variable {file_name!r} is on a different grid than {first.name!r}"
            )
        if not np.array_equal(_valid_times(array), times):
            raise SourceError(
                path, f"variable {file_name!r} has other valid times than {first.name!r}"
            )
        values = _load(path, array).reshape(times.size, lat.size, lon.size)
        attrs = {k: array.attrs[k] for k in _KEPT_ATTRS if k in array.attrs}
        variables[store_name] = (layout.orient(values), attrs)
    attrs = {k: groups[0].attrs[k] for k in _KEPT_GLOBAL_ATTRS if k in groups[0].attrs}
    return latlon_data(path, time=times, layout=layout, variables=variables, attrs=attrs)


def _check_grid(path: Path, array: xr.DataArray) -> None:
    extra = [d for d in array.dims if d not in _GRID_DIMS + _TIME_DIMS]
    if not all(d in array.dims for d in _GRID_DIMS) or extra:
        grid = array.attrs.get("GRIB_gridType", "?")
        raise SourceError(
            path,
            f"variable {array.name!r} has dims {dict(array.sizes)} (gridType {grid}); "
            f"expected a regular lat/lon grid with dims ({', '.join(_TIME_DIMS)}, "
            f"{', '.join(_GRID_DIMS)}): one level and one ensemble member per variable",
        )


def _time_dims(array: xr.DataArray) -> list[str]:
    return [d for d in _TIME_DIMS if d in array.dims]


def _valid_times(array: xr.DataArray) -> np.ndarray:
    """Validity times laid out as the variable's (time, step) dims flatten, datetime64[ns]."""
    template = array.isel({d: 0 for d in _GRID_DIMS}, drop=True)
    valid, _ = xr.broadcast(array["valid_time"], template)
    return valid.transpose(*_time_dims(array)).values.reshape(-1)


def _load(path: Path, array: xr.DataArray) -> np.ndarray:
    try:
        return array.transpose(*_time_dims(array), *_GRID_DIMS).values.astype(
            np.float32, copy=False
        )
    except (OSError, ValueError, GribInternalError) as exc:
        raise SourceError(path, f"cannot decode GRIB values of {array.name!r}: {exc}") from exc

"""NetCDF reader (netCDF-3 and netCDF-4/HDF5, CF/COARDS conventions) via ``netCDF4``.

Decoding is done here in numpy rather than by netCDF4 or xarray, because ingest speed is
measured in MB/s: automatic masking and scaling is off, packed integers are unpacked
chunk-wise (cache-sized blocks) straight into a float32 output. Rules:

- Coordinates are found by name (``time``/``valid_time``, ``latitude``/``lat``,
  ``longitude``/``lon``) or else by ``standard_name``; they must be 1-D (``time`` may be a
  scalar: one step). Data variables must have dims ``(time, lat, lon)`` in that order;
  extra dims of length 1 (a single level, ensemble member) are dropped.
- Missing values: ``_FillValue`` (or, when the variable has none and is not a byte type,
  the netCDF default fill value, as netCDF4 masks it) and ``missing_value``, compared in
  the packed type, become NaN. ``valid_min``/``valid_max``/``valid_range`` mask nothing:
  they are passed on, unpacked, as ``valid_min``/``valid_max`` attributes, which ingest
  enforces (:func:`stpipe.io.sources.canonical.check_values` refuses the file).
- Packed values: ``value = packed * scale_factor + add_offset`` computed in the type of
  those attributes (CF: float64 attributes mean float64 arithmetic, so results equal
  netCDF4's own decoding), then stored as float32.
- Time: CF ``"<unit> since <date>"`` decoded with cftime. Calendars ``standard``,
  ``gregorian`` and ``proleptic_gregorian`` give real dates. The model calendars
  ``noleap``/``365_day``, ``all_leap``/``366_day`` and ``360_day`` are accepted only when
  every date in the file exists in the Gregorian calendar (dates keep their labels, so a
  ``noleap`` year simply has no 29 February); a date such as 30 February is a
  :class:`SourceError`, as are ``julian`` and unknown calendars. Dates must lie within the
  datetime64[ns] range (1678..2261).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cftime
import netCDF4
import numpy as np

from stpipe.core.errors import SourceError
from stpipe.io.sources.canonical import (
    LatLonLayout,
    SourceData,
    SourceOptions,
    cf_valid_range,
    latlon_data,
    latlon_layout,
    library_lock,
    select_variables,
)

_COORD_NAMES = {
    "time": ("time", "valid_time"),
    "latitude": ("latitude", "lat"),
    "longitude": ("longitude", "lon"),
}
_REAL_CALENDARS = frozenset({"standard", "gregorian", "proleptic_gregorian"})
_MODEL_CALENDARS = frozenset({"noleap", "365_day", "all_leap", "366_day", "360_day"})
_ENCODING_ATTRS = frozenset(
    {
        "scale_factor",
        "add_offset",
        "_FillValue",
        "missing_value",
        "valid_min",
        "valid_max",
        "valid_range",
        "_Unsigned",
        "coordinates",
        "grid_mapping",
        "bounds",
    }
)
_CHUNK = 1 << 16  # elements per unpacking block: work arrays stay in L2 cache
_NS_RANGE = (np.datetime64("1678-01-01", "us"), np.datetime64("2262-01-01", "us"))


def read_netcdf(path: Path, source: SourceOptions) -> SourceData:
    """Read one NetCDF file into the canonical ``(time, lat, lon)`` data.

    :func:`library_lock` is held only while netCDF4 reads the packed values; unpacking
    them, most of the CPU, runs outside it, so threads decode several files at once.
    """
    try:
        with library_lock(), netCDF4.Dataset(path) as nc:
            nc.set_auto_maskandscale(False)
            _check_not_truncated(path, nc)
            packed = _read(path, nc, source)
    except (OSError, RuntimeError) as exc:
        raise SourceError(path, f"not a readable NetCDF file: {exc}") from exc
    return packed.unpacked()


@dataclass(frozen=True)
class _Packed:
    """A variable as stored: ``raw[time, row, col]`` in file order, its packing, its fill
    values (in the packed type) and the attributes to keep."""

    raw: np.ndarray
    scale: Any
    offset: Any
    missing: np.ndarray
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class _PackedFile:
    path: Path
    times: np.ndarray
    layout: LatLonLayout
    variables: dict[str, _Packed]
    attrs: dict[str, Any]

    def unpacked(self) -> SourceData:
        variables = {
            name: (_unpack_variable(var, self.layout), var.attrs)
            for name, var in self.variables.items()
        }
        return latlon_data(
            self.path, time=self.times, layout=self.layout, variables=variables, attrs=self.attrs
        )


def _read(path: Path, nc: netCDF4.Dataset, source: SourceOptions) -> _PackedFile:
    time_var, lat_var, lon_var = (_find_coord(path, nc, axis) for axis in _COORD_NAMES)
    times = _decode_times(path, time_var)
    layout = latlon_layout(
        path, _coord_values(path, lat_var), _coord_values(path, lon_var), longitude=source.longitude
    )
    grid_dims = (*time_var.dimensions, lat_var.dimensions[0], lon_var.dimensions[0])
    candidates = [
        name
        for name in nc.variables
        if name not in nc.dimensions and name not in (time_var.name, lat_var.name, lon_var.name)
    ]
    chosen = select_variables(path, candidates, source)
    variables = {
        store_name: _read_packed(path, nc, nc.variables[file_name], grid_dims)
        for store_name, file_name in chosen.items()
    }
    attrs = {key: nc.getncattr(key) for key in nc.ncattrs()}
    return _PackedFile(path, times, layout, variables, attrs)


def _check_not_truncated(path: Path, nc: netCDF4.Dataset) -> None:
    # netCDF-3 files are read with plain offsets, and the library returns zeros past the
    # end of a cut-off file instead of failing (HDF5-based netCDF-4 files do fail).
    if not nc.data_model.startswith("NETCDF3"):
        return
    needed = sum(var.size * var.dtype.itemsize for var in nc.variables.values())
    size = os.path.getsize(path)
    if size < needed:
        raise SourceError(
            path, f"truncated NetCDF file: {size} bytes, but its variables need at least {needed}"
        )


def _find_coord(path: Path, nc: netCDF4.Dataset, axis: str) -> netCDF4.Variable:
    names = _COORD_NAMES[axis]
    found = [nc.variables[n] for n in names if n in nc.variables]
    found += [v for v in nc.variables.values() if getattr(v, "standard_name", None) == axis]
    if not found:
        raise SourceError(
            path,
            f"no {axis} coordinate: expected a variable named {' or '.join(names)} "
            f"or with standard_name={axis!r}; the file has {list(nc.variables)}",
        )
    var = found[0]
    if var.ndim > 1 or (var.ndim == 0 and axis != "time"):
        raise SourceError(
            path,
            f"{axis} coordinate {var.name!r} has dims {var.dimensions}; expected one "
            "dimension (curvilinear grids are not supported)",
        )
    return var


def _coord_values(path: Path, var: netCDF4.Variable) -> np.ndarray:
    var.set_auto_maskandscale(True)
    values = var[...]
    if np.ma.is_masked(values):
        raise SourceError(path, f"coordinate {var.name!r} has missing values")
    return np.atleast_1d(np.ma.getdata(values))


def _decode_times(path: Path, var: netCDF4.Variable) -> np.ndarray:
    """CF time values → datetime64[ns] (see the module docstring for calendars)."""
    units = getattr(var, "units", None)
    calendar = str(getattr(var, "calendar", "standard")).lower()
    if not isinstance(units, str) or " since " not in units:
        raise SourceError(
            path,
            f"time variable {var.name!r} has units {units!r}; expected CF '<unit> since <date>'",
        )
    if calendar not in _REAL_CALENDARS | _MODEL_CALENDARS:
        raise SourceError(
            path,
            f"time calendar {calendar!r} is not supported; supported: "
            f"{sorted(_REAL_CALENDARS | _MODEL_CALENDARS)}",
        )
    values = _coord_values(path, var)
    if values.size == 0:
        return np.empty(0, "datetime64[ns]")
    try:
        dates = cftime.num2date(values, units, calendar, only_use_cftime_datetimes=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise SourceError(
            path, f"cannot decode time units {units!r} (calendar {calendar!r}): {exc}"
        ) from exc
    real = []
    for d in np.atleast_1d(dates):
        try:
            real.append(datetime(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond))
        except ValueError:
            raise SourceError(
                path,
                f"time {d.isoformat()} (calendar {calendar!r}) does not exist in the "
                "Gregorian calendar; convert the file to real dates first",
            ) from None
    times = np.array(real, dtype="datetime64[us]")
    first, last = times.min(), times.max()
    if first < _NS_RANGE[0] or last >= _NS_RANGE[1]:
        seconds = [str(t.astype("datetime64[s]")) for t in (first, last)]
        raise SourceError(
            path,
            f"times {seconds[0]}..{seconds[1]} are outside the supported range "
            f"{_NS_RANGE[0].astype('datetime64[D]')}..{_NS_RANGE[1].astype('datetime64[D]')}",
        )
    return times.astype("datetime64[ns]")


def _read_packed(
    path: Path, nc: netCDF4.Dataset, var: netCDF4.Variable, grid_dims: tuple[str, ...]
) -> _Packed:
    """The variable's packed values ``[time, lat, lon]`` in file order, and how to unpack them."""
    extra = [d for d in var.dimensions if d not in grid_dims]
    kept = tuple(d for d in var.dimensions if d in grid_dims)
    if kept != grid_dims or any(nc.dimensions[d].size != 1 for d in extra):
        have = {d: nc.dimensions[d].size for d in var.dimensions}
        raise SourceError(
            path,
            f"variable {var.name!r} has dims {have}; expected {grid_dims} (plus dims of length 1)",
        )
    if var.dtype.kind not in "iuf":
        raise SourceError(path, f"variable {var.name!r} has non-numeric type {var.dtype}")
    raw = var[...].reshape([nc.dimensions[d].size for d in kept])
    if len(grid_dims) == 2:  # scalar time: a single step
        raw = raw[np.newaxis]
    scale, offset = getattr(var, "scale_factor", None), getattr(var, "add_offset", None)
    return _Packed(raw, scale, offset, _missing_values(var), _descriptive_attrs(var))


def _unpack_variable(var: _Packed, layout: LatLonLayout) -> np.ndarray:
    """The variable as float32 ``[time, lat, lon]`` in canonical order, NaN where missing."""
    raw = var.raw
    out = np.empty(raw.shape, np.float32)
    slab = np.empty(raw.shape[1:], raw.dtype)  # one time step, reused: stays in cache
    for t in range(raw.shape[0]):
        _unpack(
            layout.orient(raw[t], out=slab),
            out[t],
            scale=var.scale,
            offset=var.offset,
            missing=var.missing,
        )
    return out


def _missing_values(var: netCDF4.Variable) -> np.ndarray:
    attrs = var.ncattrs()
    values = [
        np.atleast_1d(var.getncattr(a)) for a in ("_FillValue", "missing_value") if a in attrs
    ]
    if "_FillValue" not in attrs and var.dtype.itemsize > 1:
        default = var.get_fill_value()  # None when the variable was written without fill
        if default is not None:
            values.append(np.atleast_1d(default))
    if not values:
        return np.empty(0, var.dtype)
    found = np.concatenate(values).astype(var.dtype)
    return found[~np.isnan(found)] if var.dtype.kind == "f" else found


def _unpack(
    raw: np.ndarray, out: np.ndarray, *, scale: Any, offset: Any, missing: np.ndarray
) -> None:
    """``out[...] = raw * scale + offset`` (float32), NaN where ``raw`` is in ``missing``.

    Works in blocks so the float64 intermediate (when the packing attributes are float64)
    never leaves the cache.
    """
    packed = scale is not None or offset is not None
    scale = 1 if scale is None else scale
    offset = 0 if offset is None else offset
    work_type = np.result_type(np.float32, scale, offset) if packed else np.float32
    src, dst = raw.reshape(-1), out.reshape(-1)
    work = np.empty(min(_CHUNK, src.size), work_type)
    for start in range(0, src.size, _CHUNK):
        block = src[start : start + _CHUNK]
        w = work[: block.size]
        if packed:
            np.multiply(block, scale, out=w, casting="unsafe")
            w += offset
        else:
            w[...] = block
        for m in missing:
            w[block == m] = np.nan
        dst[start : start + block.size] = w


def _descriptive_attrs(var: netCDF4.Variable) -> Mapping[str, Any]:
    attrs = {a: var.getncattr(a) for a in var.ncattrs()}
    kept = {a: v for a, v in attrs.items() if a not in _ENCODING_ATTRS and not a.startswith("_")}
    return kept | cf_valid_range(attrs, var.dtype)

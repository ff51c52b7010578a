"""The canonical decoded file that every source reader returns, and its helpers.

A reader (one per ``[source] kind``, see :mod:`stpipe.io.sources.kinds`) decodes one file
and hands its numpy arrays to :func:`latlon_data` or :func:`cell_data`, which apply
the conventions of :mod:`stpipe.core.grid` in one place (lat/lon readers first get a
:class:`LatLonLayout` from :func:`latlon_layout` and write their values in its order) and
return a :class:`SourceData`, plain numpy arrays (:meth:`SourceData.to_dataset` makes the
xarray Dataset): ingest worker processes decode files without importing xarray, pandas or
pydantic, which would take most of their start-up:

- dims ``(time, lat, lon)`` with lat ascending and lon ascending in the configured
  convention (``"-180..180"``: values in [-180, 180); ``"0..360"``: [0, 360)), float64
  degrees with CF attributes; or ``(time, y, x)`` with integer cell indices;
- ``time`` datetime64[ns], strictly increasing;
- data variables exactly ``source.variables`` (names after ``source.rename``), float32,
  NaN where the file has no value; ``units`` always present (CF: absent means ``"1"``);
- ``attrs["source_file"]`` (file name) and ``attrs["time_step_s"]`` (the most common
  positive step in seconds, when the file has at least two times).

Any problem with the file raises :class:`stpipe.core.errors.SourceError` naming the file; nothing
partial is returned. Besides the layout, the times must be plausible (none later than now:
the store holds observations and reanalyses) and, checked by :func:`check_values` on every
decoded file, so must the values: none infinite, none outside the variable's bounds (see
:func:`value_bounds`). NaN is the missing value and is always allowed: the readers turn
declared fill values (NetCDF ``_FillValue``/``missing_value``, GRIB bitmaps) into NaN.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from stpipe.core.errors import SourceError

if TYPE_CHECKING:
    import xarray as xr


@functools.cache
def library_lock() -> AbstractContextManager[Any]:
    """Held by a reader while it calls netCDF-C, HDF5 (netCDF4, h5py) or ecCodes, which are
    not thread-safe: ingest decodes files on several threads.

    The locks xarray's backends take, where this process has loaded xarray (it may read such
    files through xarray too: the ingest process imports it before any read); a lock of its
    own in an ingest worker process, which never loads xarray."""
    if "xarray" in sys.modules:
        from xarray.backends.locks import HDF5_LOCK, NETCDFC_LOCK, combine_locks

        return combine_locks([HDF5_LOCK, NETCDFC_LOCK])
    return threading.Lock()


Variables = Mapping[str, tuple[np.ndarray, Mapping[str, Any]]]
"""Store name → (values ``[time, row, col]`` in canonical order, attributes to keep)."""


@dataclass(frozen=True)
class SourceData:
    """One decoded file in the canonical form (module docstring), as numpy arrays.

    ``coords``: each spatial dim's (dim, values, attributes); ``variables``: store name →
    (float32 values ``[time, row, col]``, attributes), in ``source.variables`` order.
    """

    time: np.ndarray
    dims: tuple[str, str, str]
    coords: dict[str, tuple[str, np.ndarray, dict[str, str]]]
    variables: dict[str, tuple[np.ndarray, dict[str, Any]]]
    attrs: dict[str, Any] = field(default_factory=dict)

    def steps(self, start: int, stop: int) -> SourceData:
        """The same file cut to steps ``start:stop`` (views, not copies)."""
        variables = {n: (v[start:stop], a) for n, (v, a) in self.variables.items()}
        return SourceData(self.time[start:stop], self.dims, self.coords, variables, self.attrs)

    def to_dataset(self) -> xr.Dataset:
        """The xarray Dataset of these arrays (shares their memory)."""
        import xarray as xr

        data_vars = {n: (self.dims, v, a) for n, (v, a) in self.variables.items()}
        coords = {"time": ("time", self.time, dict(_TIME_ATTRS)), **self.coords}
        return xr.Dataset(data_vars, coords=coords, attrs=self.attrs)


@dataclass(frozen=True)
class ReaderOptions:
    """The ``[source]`` options a reader uses (a :class:`SourceOptions`) as plain values:
    what an ingest worker is sent, so it never imports the configuration's schema."""

    kind: str
    variables: tuple[str, ...]
    rename: dict[str, str]
    longitude: str
    bounds: dict[str, tuple[float, float]]

    @classmethod
    def of(cls, source: SourceOptions) -> ReaderOptions:
        return cls(
            source.kind,
            tuple(source.variables),
            dict(source.rename),
            source.longitude,
            {k: (float(lo), float(hi)) for k, (lo, hi) in source.bounds.items()},
        )


class SourceOptions(Protocol):
    """The ``[source]`` options a reader is given: :class:`stpipe.io.settings.SourceSection`
    has them. A structural type, because that schema imports the registry of readers
    (:mod:`stpipe.io.sources.kinds`) to validate ``kind``: neither the registry nor the
    readers may import the schema back."""

    @property
    def kind(self) -> str: ...

    @property
    def variables(self) -> Sequence[str]: ...

    @property
    def rename(self) -> Mapping[str, str]: ...

    @property
    def longitude(self) -> str: ...

    @property
    def bounds(self) -> Mapping[str, tuple[float, float]]: ...


@dataclass(frozen=True)
class PhysicalBounds:
    """Values no real field of a variable reaches, in the ``units`` it is given in (None:
    any units, as for counts)."""

    low: float
    high: float
    units: frozenset[str] | None


_KELVIN = frozenset({"K", "degK", "kelvin", "Kelvin"})
_SPEED = frozenset({"m s-1", "m s**-1", "m/s", "m s^-1"})
_TEMPERATURE = PhysicalBounds(150.0, 350.0, _KELVIN)
_WIND = PhysicalBounds(-150.0, 150.0, _SPEED)
_COUNT = PhysicalBounds(0.0, np.inf, None)
PHYSICAL_BOUNDS: dict[str, PhysicalBounds] = {
    "t2m": _TEMPERATURE,
    "2t": _TEMPERATURE,
    "u10": _WIND,
    "v10": _WIND,
    "10u": _WIND,
    "10v": _WIND,
    "msl": PhysicalBounds(80000.0, 110000.0, frozenset({"Pa"})),
    "inflow": _COUNT,
    "outflow": _COUNT,
}
"""Store name → the bounds used when neither ``[source] bounds`` nor the file give any:
2 m temperature 150–350 K, 10 m wind components ±150 m/s, mean sea level pressure
800–1100 hPa, crowd flows ≥ 0."""


_LAT_ATTRS = {
    "standard_name": "latitude",
    "long_name": "latitude",
    "units": "degrees_north",
    "axis": "Y",
}
_LON_ATTRS = {
    "standard_name": "longitude",
    "long_name": "longitude",
    "units": "degrees_east",
    "axis": "X",
}
_TIME_ATTRS = {"standard_name": "time", "axis": "T"}
_LON_START = {"-180..180": -180.0, "0..360": 0.0}


def select_variables(path: Path, available: Iterable[str], source: SourceOptions) -> dict[str, str]:
    """Map each of ``source.variables`` (store names) to the name it has in the file.

    ``source.rename`` maps file name → store name; names not in it keep their file name.
    """
    available = list(available)
    by_store_name: dict[str, list[str]] = {}
    for name in available:
        by_store_name.setdefault(source.rename.get(name, name), []).append(name)
    missing = [v for v in source.variables if v not in by_store_name]
    if missing:
        renamed = f" (rename {source.rename})" if source.rename else ""
        raise SourceError(
            path, f"variable(s) {missing} not found; the file has {sorted(available)}{renamed}"
        )
    for name in source.variables:
        if len(by_store_name[name]) > 1:
            raise SourceError(
                path,
                f"variable {name!r} is ambiguous: file variables {by_store_name[name]} "
                f"all map to it (rename {source.rename})",
            )
    return {name: by_store_name[name][0] for name in source.variables}


@dataclass(frozen=True)
class LatLonLayout:
    """Where each row and column of a file's grid goes in the canonical grid.

    ``lat``/``lon`` are the canonical coordinates (ascending, float64 degrees);
    ``flip_rows`` says the file stores latitude descending; ``runs`` are
    (destination, source, length) column blocks: a longitude re-sort is almost always a
    rotation (two blocks), and copying blocks as slices is several times faster than a
    gather with ``np.take``.
    """

    lat: np.ndarray
    lon: np.ndarray
    flip_rows: bool
    runs: tuple[tuple[int, int, int], ...]

    def orient(self, values: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """``values[..., row, col]`` in file order → a copy in canonical order."""
        if self.flip_rows:
            values = values[..., ::-1, :]
        if out is None:
            out = np.empty(values.shape, values.dtype)
        for dst, src, n in self.runs:
            out[..., dst : dst + n] = values[..., src : src + n]
        return out


def latlon_layout(path: Path, lat: np.ndarray, lon: np.ndarray, *, longitude: str) -> LatLonLayout:
    """The layout of a file grid with 1-D ``lat``/``lon`` (degrees) in the store convention.

    Longitude is moved into the ``longitude`` convention by whole turns of 360° (values
    already in range keep their exact bits) and sorted, so a regional grid stored across the
    0/360 seam comes out contiguous.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if lat.size == 0 or lon.size == 0:
        raise SourceError(path, f"empty grid: {lat.size} latitudes × {lon.size} longitudes")
    if (np.abs(lat) > 90).any():
        raise SourceError(path, f"latitude outside [-90, 90]: {lat.min()}..{lat.max()}")
    steps = np.diff(lat)
    if not ((steps > 0).all() or (steps < 0).all()):
        raise SourceError(path, f"latitude is not strictly monotonic: {lat.tolist()}")
    flip_rows = bool(steps.size and steps[0] < 0)

    start = _LON_START[longitude]
    lon = lon - 360.0 * np.floor((lon - start) / 360.0)
    order = np.argsort(lon, kind="stable")
    lon = lon[order]
    if (np.diff(lon) <= 0).any():
        raise SourceError(
            path, f"longitude has duplicate points in the {longitude} convention: {lon.tolist()}"
        )
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    starts, ends = np.concatenate([[0], breaks]), np.concatenate([breaks, [order.size]])
    runs = tuple((int(a), int(order[a]), int(b - a)) for a, b in zip(starts, ends, strict=True))
    return LatLonLayout(
        lat=lat[::-1] if flip_rows else lat, lon=lon, flip_rows=flip_rows, runs=runs
    )


def latlon_data(
    path: Path,
    *,
    time: np.ndarray,
    layout: LatLonLayout,
    variables: Variables,
    attrs: Mapping[str, Any],
) -> SourceData:
    """Canonical ``(time, lat, lon)`` data from arrays already in ``layout`` order."""
    _check_shapes(path, variables, (len(time), layout.lat.size, layout.lon.size))
    coords = {
        "lat": ("lat", layout.lat, dict(_LAT_ATTRS)),
        "lon": ("lon", layout.lon, dict(_LON_ATTRS)),
    }
    return _finish(
        path,
        time=time,
        coords=coords,
        dims=("time", "lat", "lon"),
        variables=variables,
        attrs=attrs,
        time_step_s=None,
    )


def cell_data(
    path: Path,
    *,
    time: np.ndarray,
    variables: Variables,
    attrs: Mapping[str, Any],
    time_step_s: int,
) -> SourceData:
    """Canonical ``(time, y, x)`` data for grids of cells without geographic coordinates."""
    shape = next(iter(variables.values()))[0].shape
    _check_shapes(path, variables, (len(time), *shape[1:]))
    coords = {"y": ("y", np.arange(shape[1])), "x": ("x", np.arange(shape[2]))}
    return _finish(
        path,
        time=time,
        coords=coords,
        dims=("time", "y", "x"),
        variables=variables,
        attrs=attrs,
        time_step_s=time_step_s,
    )


def _check_shapes(path: Path, variables: Variables, shape: tuple[int, ...]) -> None:
    for name, (values, _) in variables.items():
        if values.shape != shape:
            raise SourceError(
                path,
                f"variable {name!r} has shape {values.shape}, expected {shape} "
                "(time, rows, columns)",
            )


def _finish(
    path: Path,
    *,
    time: np.ndarray,
    coords: dict[str, tuple[str, np.ndarray, dict[str, str]]],
    dims: tuple[str, str, str],
    variables: Variables,
    attrs: Mapping[str, Any],
    time_step_s: int | None,
) -> SourceData:
    time = np.asarray(time, dtype="datetime64[ns]")
    _check_times(path, time)
    data_vars = {}
    for name, (values, var_attrs) in variables.items():
        values = values.astype(np.float32, copy=False)
        if np.isnan(values).all():
            raise SourceError(path, f"variable {name!r} has no valid values (all missing/NaN)")
        data_vars[name] = (values, {"units": "1"} | _plain_attrs(var_attrs))
    attrs = _plain_attrs(attrs)
    if time_step_s is None and time.size >= 2:
        time_step_s = _most_common_step_s(time)
    if time_step_s is not None:
        attrs["time_step_s"] = int(time_step_s)
    attrs["source_file"] = path.name
    return SourceData(time, dims, coords, data_vars, attrs)


def _check_times(path: Path, time: np.ndarray) -> None:
    if time.size == 0:
        raise SourceError(path, "the file has no time steps")
    if np.isnat(time).any():
        raise SourceError(path, "time has missing values (NaT)")
    now = np.datetime64(datetime.now(UTC).replace(tzinfo=None), "s")
    if time.max() > now:
        raise SourceError(
            path,
            f"time {time.max().astype('datetime64[s]')} is later than now ({now} UTC): the "
            "store holds observations, so the file is mis-dated (check its time units and "
            "calendar)",
        )
    bad = np.flatnonzero(np.diff(time) <= np.timedelta64(0))
    if bad.size:
        i = int(bad[0])
        what = "duplicate time" if time[i] == time[i + 1] else "times not increasing"
        here, after = (str(t.astype("datetime64[s]")) for t in time[i : i + 2])
        raise SourceError(path, f"{what}: {here} at position {i} is followed by {after}")


def value_bounds(
    name: str, attrs: Mapping[str, Any], configured: Mapping[str, tuple[float, float]]
) -> tuple[float, float, str] | None:
    """(lowest, highest, where they come from) of variable ``name``, or None if unknown.

    In order: ``configured`` (``[source] bounds``); the ``valid_min``/``valid_max`` in
    ``attrs`` (CF, in the stored units: see :func:`cf_valid_range`; one of them alone
    bounds one side); :data:`PHYSICAL_BOUNDS` when ``attrs["units"]`` is among its units.
    """
    if name in configured:
        low, high = configured[name]
        return float(low), float(high), "[source] bounds"
    if "valid_min" in attrs or "valid_max" in attrs:
        low, high = attrs.get("valid_min", -np.inf), attrs.get("valid_max", np.inf)
        return float(low), float(high), "the file's valid range"
    physical = PHYSICAL_BOUNDS.get(name)
    units = attrs.get("units")
    if physical is not None and (physical.units is None or units in physical.units):
        where = f" in {units}" if physical.units is not None else ""
        return physical.low, physical.high, f"the physical bounds of {name}{where}"
    return None


def check_values(
    path: Path, data: SourceData, bounds: Mapping[str, tuple[float, float]]
) -> SourceData:
    """``data`` if its values are plausible, else SourceError naming the first bad variable,
    how many values are bad and where the first is (time, row, column).

    Refused: infinite values, and values outside :func:`value_bounds` (``bounds`` are
    ``[source] bounds``). NaN (missing) is allowed. Costs two reductions per variable
    when all is well.
    """
    for name, (values, attrs) in data.variables.items():
        # fmin/fmax skip NaN; an infinite value shows up as ±inf among them.
        lowest, highest = np.fmin.reduce(values, axis=None), np.fmax.reduce(values, axis=None)
        limits = value_bounds(name, attrs, bounds)
        low, high, origin = limits if limits is not None else (-np.inf, np.inf, "")
        if np.isfinite(lowest) and np.isfinite(highest) and low <= lowest and highest <= high:
            continue
        infinite = np.isinf(values)
        if infinite.any():
            bad, what = infinite, "infinite value(s)"
        else:
            bad = (values < low) | (values > high)
            units = attrs.get("units", "1")
            unit = "" if units == "1" else f" {units}"
            what = f"value(s) outside [{low:g}, {high:g}]{unit} ({origin})"
        t, row, col = np.unravel_index(np.argmax(bad), bad.shape)
        when = np.datetime_as_string(data.time[t], "s")
        raise SourceError(
            path,
            f"variable {name!r} has {int(bad.sum())} {what}, the first {values[t, row, col]:g} "
            f"at time {when}, row {row}, col {col}",
        )
    return data


def cf_valid_range(attrs: Mapping[str, Any], packed: np.dtype) -> dict[str, float]:
    """The CF ``valid_range``, or ``valid_min``/``valid_max``, of a variable stored as
    ``packed`` with ``attrs``, as ``valid_min``/``valid_max`` in unpacked units (only
    those declared).

    CF gives them in the packed type: when they have the type of the packed data and the
    variable is packed (``scale_factor``/``add_offset``), they are unpacked like the data;
    otherwise they are taken as unpacked values.
    """
    if "valid_range" in attrs:
        low, high = np.asarray(attrs["valid_range"]).reshape(-1)[:2]
        declared = {"valid_min": low, "valid_max": high}
    else:
        keys = [k for k in ("valid_min", "valid_max") if k in attrs]
        declared = {k: np.asarray(attrs[k]).reshape(-1)[0] for k in keys}
    if "scale_factor" in attrs or "add_offset" in attrs:
        scale, offset = attrs.get("scale_factor", 1), attrs.get("add_offset", 0)
        declared = {k: v * scale + offset if v.dtype == packed else v for k, v in declared.items()}
    out = {k: float(v) for k, v in declared.items()}
    if len(out) == 2 and out["valid_min"] > out["valid_max"]:  # a negative scale_factor
        out = {"valid_min": out["valid_max"], "valid_max": out["valid_min"]}
    return out


def _most_common_step_s(time: np.ndarray) -> int:
    steps_s = np.diff(time) // np.timedelta64(1, "s")
    values, counts = np.unique(steps_s, return_counts=True)
    return int(values[np.argmax(counts)])


def _plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as JSON-friendly Python values (what Zarr metadata can hold)."""
    plain: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, np.ndarray):
            value = value.item() if value.size == 1 else value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        plain[str(key)] = value
    return plain

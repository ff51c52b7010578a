"""Whether a decoded source file fits the store it is appended to (ingest refuses it if not).

The file's dataset (or an empty-time copy of it) is compared with the store's: the same
variables in the same order, grid dims and coordinates, units and time step, and times on the
store's grid of steps; and its new times do not start more than ``[source] max_gap`` after
the store's end. Each problem is a :class:`stpipe.core.errors.SourceError` naming the file
and both values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from stpipe.core.errors import SourceError
from stpipe.core.grid import spatial_dims


def check_on_step(path: Path, times: np.ndarray, *, origin: np.datetime64, step_s: int) -> None:
    """SourceError unless every one of ``times`` is a whole number of steps after ``origin``."""
    offsets = (times - origin) % np.timedelta64(step_s, "s")
    off = np.flatnonzero(offsets != np.timedelta64(0))
    if off.size:
        raise SourceError(
            path,
            f"time {times[off[0]]} is not on the store's grid of {step_s} s steps from {origin}",
        )


def check_gap(path: Path, first: np.datetime64, *, end: np.datetime64, max_gap_s: int) -> None:
    """SourceError if ``first``, the file's first new time, lies more than ``max_gap_s``
    seconds after ``end``, the store's last time.

    The store is append-only: a mis-dated file (a wrong year, units or calendar) accepted
    after a long gap would make every later real file a refused backfill, night after night.
    """
    gap_s = (first - end) // np.timedelta64(1, "s")
    if gap_s > max_gap_s:
        raise SourceError(
            path,
            f"its first new time {np.datetime_as_string(first, 's')} is {_duration(gap_s)} "
            f"after the store's end {np.datetime_as_string(end, 's')}, more than [source] "
            f"max_gap ({_duration(max_gap_s)}); if the file is dated right, raise max_gap",
        )


def _duration(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    parts = [f"{days} d"] if days else []
    return " ".join([*parts, f"{rest / 3600:g} h"] if rest or not days else parts)


def check_compatible(path: Path, file: xr.Dataset, store: xr.Dataset, *, step_s: int) -> None:
    """SourceError naming both values if ``file`` cannot be appended to ``store``."""
    if list(file.data_vars) != list(store.data_vars):
        raise SourceError(
            path,
            f"variables {list(file.data_vars)} differ from the store's {list(store.data_vars)}",
        )
    if spatial_dims(file) != spatial_dims(store):
        raise SourceError(
            path, f"grid dims {spatial_dims(file)} differ from the store's {spatial_dims(store)}"
        )
    for dim in spatial_dims(store):
        a, b = file[dim].values, store[dim].values
        if a.shape != b.shape or not np.array_equal(a, b):
            raise SourceError(
                path,
                f"grid differs from the store's: {dim} {_describe_axis(a)} in the file, "
                f"{_describe_axis(b)} in the store",
            )
    for name, var in file.data_vars.items():
        units, stored = var.attrs.get("units"), store[name].attrs.get("units")
        if units != stored:
            raise SourceError(
                path, f"variable {name!r} has units {units!r}, the store has {stored!r}"
            )
    file_step = file.attrs.get("time_step_s")
    if file_step is not None and int(file_step) != step_s:
        raise SourceError(path, f"time step is {file_step} s, the store's is {step_s} s")


def _describe_axis(values: np.ndarray) -> str:
    if values.size == 0:
        return "(empty)"
    return f"[{values[0]} … {values[-1]}] ({values.size} values)"

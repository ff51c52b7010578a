"""Crowd-flow grids in the TaxiBJ / BikeNYC HDF5 layout (DeepST, Zhang et al. 2017), via h5py.

A file holds ``data`` ``[T, 2, H, W]`` (channel 0: inflow, 1: outflow → store variables
``inflow``, ``outflow``) and ``date`` ``[T]``: byte strings ``YYYYMMDDSS`` where ``SS`` is
the 1-based slot of the day; slot 1 starts at 00:00. Slots per day come from the root
attribute ``slots_per_day`` when present; otherwise they are the smallest of 24, 48, 96,
144, 288 that is at least the largest slot seen (TaxiBJ: 48, i.e. 30 min; BikeNYC: 24,
i.e. 1 h). A file with coarser slots (say 8 per day) must carry the attribute.

Missing slots (incomplete days, common in TaxiBJ) are simply absent from the time axis;
the store records the gap. A repeated slot is a :class:`SourceError`.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from stpipe.core.errors import SourceError
from stpipe.io.sources.canonical import (
    SourceData,
    SourceOptions,
    cell_data,
    library_lock,
    select_variables,
)

CHANNELS = ("inflow", "outflow")
_SLOT_COUNTS = (24, 48, 96, 144, 288)
_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{2,3})")
_ATTRS = {
    "inflow": {"units": "1", "long_name": "crowd inflow: entries into the cell during the slot"},
    "outflow": {"units": "1", "long_name": "crowd outflow: exits from the cell during the slot"},
}


def read_taxibj(path: Path, source: SourceOptions) -> SourceData:
    """Read one TaxiBJ-style HDF5 file into the canonical ``(time, y, x)`` data."""
    chosen = select_variables(path, CHANNELS, source)
    try:
        with library_lock(), h5py.File(path, "r") as f:
            data, dates = _dataset(path, f, "data"), _dataset(path, f, "date")
            if data.ndim != 4 or data.shape[1] != len(CHANNELS) or dates.shape != data.shape[:1]:
                raise SourceError(
                    path,
                    f"expected 'data' [T, 2, H, W] and 'date' [T], got 'data' "
                    f"{data.shape} and 'date' {dates.shape}",
                )
            labels = _date_strings(path, dates)
            slots_attr = f.attrs.get("slots_per_day")
            values = {
                name: data[:, CHANNELS.index(file_name)] for name, file_name in chosen.items()
            }
            attrs = dict(f.attrs)
    except OSError as exc:
        raise SourceError(path, f"not a readable HDF5 file: {exc}") from exc
    slots_per_day = None if slots_attr is None else int(slots_attr)
    times, step_s = _slot_times(path, labels, slots_per_day)
    variables = {name: (array, _ATTRS[chosen[name]]) for name, array in values.items()}
    return cell_data(path, time=times, variables=variables, attrs=attrs, time_step_s=step_s)


def _dataset(path: Path, f: h5py.File, name: str) -> h5py.Dataset:
    if not isinstance(f.get(name), h5py.Dataset):
        raise SourceError(path, f"no dataset {name!r}; the file has {sorted(f.keys())}")
    return f[name]


def _date_strings(path: Path, dates: h5py.Dataset) -> list[str]:
    if h5py.check_string_dtype(dates.dtype) is not None:
        return [str(s) for s in dates.asstr()[...]]
    if dates.dtype.kind in "iu":
        return [str(int(s)) for s in dates[...]]
    raise SourceError(path, f"'date' has type {dates.dtype}; expected strings YYYYMMDDSS")


def _slot_times(path: Path, labels: list[str], slots_per_day: int | None) -> tuple[np.ndarray, int]:
    """``YYYYMMDDSS`` labels → datetime64[ns] slot start times, and the slot length in s."""
    days, slots = [], []
    for label in labels:
        match = _DATE.fullmatch(label.strip())
        if match is None:
            raise SourceError(path, f"date {label!r} is not YYYYMMDDSS")
        year, month, day, slot = match.groups()
        days.append(f"{year}-{month}-{day}")
        slots.append(int(slot))
    try:
        day_starts = np.array(days, dtype="datetime64[D]")
    except ValueError as exc:
        raise SourceError(path, f"'date' holds an impossible day: {exc}") from None
    slot_index = np.array(slots, dtype=np.int64)
    largest = int(slot_index.max(initial=0))
    if slots_per_day is None:
        slots_per_day = next((n for n in _SLOT_COUNTS if n >= largest), largest)
    if slots_per_day < 1 or 86400 % slots_per_day:
        raise SourceError(path, f"slots_per_day {slots_per_day} does not divide a day")
    if slot_index.size and (slot_index.min() < 1 or largest > slots_per_day):
        raise SourceError(
            path, f"slots must be 1..{slots_per_day}, got {slot_index.min()}..{largest}"
        )
    step_s = 86400 // slots_per_day
    times = day_starts.astype("datetime64[ns]") + (slot_index - 1) * np.timedelta64(step_s, "s")
    _check_unique(path, labels, times)
    return times, step_s


def _check_unique(path: Path, labels: list[str], times: np.ndarray) -> None:
    values, first, counts = np.unique(times, return_index=True, return_counts=True)
    if (counts > 1).any():
        i = int(first[np.argmax(counts > 1)])
        raise SourceError(
            path,
            f"duplicate slot: date {labels[i]!r} "
            f"({values[counts > 1][0].astype('datetime64[s]')}) occurs "
            f"{counts[counts > 1][0]} times",
        )

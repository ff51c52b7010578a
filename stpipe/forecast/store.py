"""The forecast store: one Zarr v3 group of forecasts, one slot per initialisation time.

Layout
------
Per target variable an array ``(init_time, lead_time, <lat|y>, <lon|x>)`` float32 in
physical units (NaN fill), one chunk per init time and lead. Coordinates: ``init_time``
(CF ``forecast_reference_time``: the time of the last input step; int64 seconds since
1970-01-01), ``lead_time`` (CF ``forecast_period``, a timedelta), ``valid_time``
``(init_time, lead_time)``, the grid coordinates, and per init time the provenance of that
forecast: ``model_name``, ``model_version``, ``run_id``, ``store_digest`` (the manifest
digest of the input store). The root attributes repeat the provenance of the latest write
and its ``written_init_time``. Readable by ``xr.open_zarr``, which shows rows in the order
they were first written and, after a killed rewrite, a row whose ``init_time`` is NaT until
the next write reuses it; :func:`open_forecasts` returns only committed init times, sorted.

Commits and crash safety
------------------------
An init time is visible when the ``init_time`` coordinate holds it, and only rows inside
the committed length (the array shapes in the consolidated metadata of the root
``zarr.json``) exist for readers. A write of init time T:

1. recover: arrays longer than the committed length (a killed append) are cut back;
2. choose the slot: T's row if T is committed, after *un*-committing it (``init_time`` of
   that row set to NaT); else a free row (NaT, left by a killed rewrite); else a new row
   past the committed length (arrays resized, readers still see the old shapes);
3. write the data, ``valid_time`` and provenance of the row;
4. commit: write ``init_time`` of the row (one chunk, one object write);
5. rewrite the root ``zarr.json`` with the consolidated metadata (the new length and the
   latest provenance), one object write.

A kill before 4 leaves T invisible (a new row lies past the committed length or holds NaT);
never a row with T and partly written data. Each step rewrites whole objects: zarr's
``LocalStore`` writes a temporary file and renames it, an S3 PUT replaces an object
atomically. One writer at a time per store (the forecast job runs once per init time).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
import zarr.storage
from zarr.storage import LocalStore

from stpipe.core.errors import StoreError
from stpipe.io.store import CRASH_ENV, crash_point

INIT = "init_time"
LEAD = "lead_time"
VALID = "valid_time"
PROVENANCE = ("model_name", "model_version", "run_id", "store_digest")
FORMAT_KEY = "stpipe_forecast_format"
FORMAT = 1
TIME_UNITS = "seconds since 1970-01-01 00:00:00"
NAT = np.iinfo(np.int64).min
INIT_CHUNK = 4096

StorageOptions = Mapping[str, Any]


@dataclass(frozen=True)
class ForecastWrite:
    """Where one init time went: the store, the row, and whether it replaced a forecast."""

    store: str
    init_time: np.datetime64
    row: int
    replaced: bool


def write_forecast(
    forecast: xr.Dataset, store: str, *, storage_options: StorageOptions | None = None
) -> ForecastWrite:
    """Write one init time of ``forecast`` into the forecast store ``store`` (path or URL).

    ``forecast`` has dims ``(init_time: 1, lead_time, <lat|y>, <lon|x>)``, data variables
    float32 with ``units``, and the provenance keys (:data:`PROVENANCE`) in its attrs; data
    may be lazy (Dask). Re-writing an init time replaces its row. The commit protocol is in
    the module docstring. StoreError if the store holds forecasts of other variables,
    leads or grid.
    """
    init = _single_init(forecast)
    zstore = _zarr_store(store, storage_options, read_only=False)
    group = _open_group(zstore, store) or _create(zstore, forecast)
    _check_compatible(zstore, store, forecast)
    committed = _recover(zstore, group)
    encoded = _encode_times(np.array([init]))[0]
    init_times = group[INIT][:committed]
    (same,) = np.nonzero(init_times == encoded)
    (free,) = np.nonzero(init_times == NAT)
    replaced = bool(len(same))
    if replaced:
        row = int(same[0])
        group[INIT][row] = NAT
    elif len(free):
        row = int(free[0])
    else:
        row = committed
        _resize(group, committed + 1)
    _write_row(zstore, forecast, row)
    group[INIT][row] = encoded
    group.attrs.update(
        {k: forecast.attrs[k] for k in PROVENANCE} | {"written_init_time": str(init)}
    )
    _consolidate(zstore)
    return ForecastWrite(store=store, init_time=init, row=row, replaced=replaced)


def open_forecasts(store: str, *, storage_options: StorageOptions | None = None) -> xr.Dataset:
    """The committed forecasts of ``store``, sorted by ``init_time`` (lazy, Dask-backed).

    Dims ``(init_time, lead_time, <lat|y>, <lon|x>)``; rows of killed writes are left out.
    StoreError if there is no forecast store at ``store``.
    """
    zstore = _zarr_store(store, storage_options, read_only=True)
    if _open_group(zstore, store) is None:
        raise StoreError(f"{store}: no forecast store here; run `stpipe forecast CONFIG` first")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=".*[Cc]onsolidated")
        ds = xr.open_zarr(zstore, consolidated=True, chunks={}, zarr_format=3)
    ds = ds.isel({INIT: np.flatnonzero(ds[INIT].notnull().values)})
    return ds.sortby(INIT)


def forecast_attrs(
    *, model_name: str, model_version: str, run_id: str, store_digest: str
) -> dict[str, str]:
    """The provenance attrs :func:`write_forecast` expects on a forecast dataset."""
    return {
        "model_name": model_name,
        "model_version": model_version,
        "run_id": run_id,
        "store_digest": store_digest,
    }


# --- layout ----------------------------------------------------------------------------------


def _single_init(forecast: xr.Dataset) -> np.datetime64:
    if INIT not in forecast.dims or forecast.sizes[INIT] != 1:
        raise StoreError(
            f"a forecast write needs exactly one {INIT}, got dims {dict(forecast.sizes)}"
        )
    missing = [k for k in PROVENANCE if k not in forecast.attrs]
    if missing:
        raise StoreError(f"forecast attrs lack the provenance keys {missing}")
    return np.datetime64(forecast[INIT].values[0], "ns")


def _template(forecast: xr.Dataset) -> xr.Dataset:
    """``forecast`` with no init time: the arrays, coordinates and attrs of a new store."""
    empty = forecast.isel({INIT: slice(0, 0)}).drop_vars([VALID, *PROVENANCE], errors="ignore")
    empty = empty.assign_coords(
        {
            VALID: ((INIT, LEAD), np.zeros((0, forecast.sizes[LEAD]), "datetime64[ns]")),
            **{k: (INIT, np.array([], dtype=np.dtypes.StringDType())) for k in PROVENANCE},
        }
    )
    for name in (INIT, LEAD, VALID, *PROVENANCE):
        empty[name].attrs = forecast[name].attrs if name in forecast.variables else {}
    for name in forecast.data_vars:
        empty[name] = empty[name].astype(np.float32)
    empty.attrs = {k: v for k, v in forecast.attrs.items() if k not in PROVENANCE}
    return empty


def _encoding(forecast: xr.Dataset) -> dict[str, dict[str, Any]]:
    leads = forecast.sizes[LEAD]
    rows, cols = (forecast.sizes[d] for d in forecast[next(iter(forecast.data_vars))].dims[2:])
    time = {"units": TIME_UNITS, "dtype": "int64", "_FillValue": NAT, "fill_value": NAT}
    encoding = {
        name: {"chunks": (1, 1, rows, cols), "dtype": "float32"} for name in forecast.data_vars
    }
    encoding[INIT] = time | {"chunks": (INIT_CHUNK,)}
    encoding[VALID] = time | {"chunks": (1, leads)}
    encoding[LEAD] = {"dtype": "int64"}
    encoding |= {name: {"chunks": (INIT_CHUNK,)} for name in PROVENANCE}
    return encoding


def _create(zstore: zarr.abc.store.Store, forecast: xr.Dataset) -> zarr.Group:
    """A new store with no init time, laid out for ``forecast``; its group."""
    template = _template(forecast)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=".*[Cc]onsolidated")
        template.to_zarr(
            zstore, mode="w", encoding=_encoding(forecast), consolidated=False, zarr_format=3
        )
    group = zarr.open_group(zstore, mode="r+", use_consolidated=False)
    group.attrs[FORMAT_KEY] = FORMAT
    _consolidate(zstore)
    return group


def _check_compatible(zstore: zarr.abc.store.Store, store: str, forecast: xr.Dataset) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=".*[Cc]onsolidated")
        existing = xr.open_zarr(zstore, consolidated=True, chunks=None, zarr_format=3)
    found = sorted(map(str, existing.data_vars))
    wanted = sorted(map(str, forecast.data_vars))
    if found != wanted:
        raise StoreError(
            f"{store}: forecast store holds variables {found}, this forecast has {wanted}; "
            "set [forecast] store to another location"
        )
    for name in forecast[wanted[0]].dims[1:]:
        if not np.array_equal(existing[name].values, forecast[name].values):
            raise StoreError(
                f"{store}: forecast store has {name} {_describe(existing[name].values)}, "
                f"this forecast has {_describe(forecast[name].values)}; set [forecast] store "
                "to another location"
            )


def _describe(values: np.ndarray) -> str:
    if np.issubdtype(values.dtype, np.timedelta64):
        values = values / np.timedelta64(1, "h")
        return f"[{', '.join(f'{v:g}h' for v in values)}]"
    if len(values) > 4:
        return f"{len(values)} values {values[0]:g} … {values[-1]:g}"
    return str(list(values))


# --- the commit protocol ---------------------------------------------------------------------


def _zarr_store(
    store: str, storage_options: StorageOptions | None, *, read_only: bool
) -> zarr.abc.store.Store:
    if "://" in store and not store.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(
            store, storage_options=dict(storage_options or {}), read_only=read_only
        )
    path = Path(store.removeprefix("file://"))
    if not read_only:
        path.mkdir(parents=True, exist_ok=True)
    crashing = os.environ.get(CRASH_ENV) and not read_only
    return (_CrashingStore if crashing else LocalStore)(path, read_only=read_only)


class _CrashingStore(LocalStore):
    """A LocalStore whose writes and deletes count toward ``STPIPE_CRASH_AT_WRITE``."""

    async def set(self, key: str, value: Any) -> None:
        crash_point()
        await super().set(key, value)

    async def delete(self, key: str) -> None:
        crash_point()
        await super().delete(key)


def _open_group(zstore: zarr.abc.store.Store, store: str) -> zarr.Group | None:
    """The store's group (writable unless the store is read-only); None if none exists.

    A group without the format marker is either a store whose creation was killed (no
    committed row: it is created again) or not a forecast store (StoreError).
    """
    try:
        group = zarr.open_group(
            zstore, mode="r" if zstore.read_only else "r+", use_consolidated=False
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None
    if group.attrs.get(FORMAT_KEY) == FORMAT:
        return group
    if INIT in group and (group[INIT][:] != NAT).any():
        raise StoreError(
            f"{store}: a Zarr group that is not a stpipe forecast store (no {FORMAT_KEY!r} "
            "attribute); set [forecast] store to another location"
        )
    return None


def _timed_arrays(group: zarr.Group) -> list[zarr.Array]:
    return [a for _, a in group.arrays() if (a.metadata.dimension_names or (None,))[0] == INIT]


def _recover(zstore: zarr.abc.store.Store, group: zarr.Group) -> int:
    """Cut arrays back to the committed length (consolidated metadata); return it."""
    committed = zarr.open_group(zstore, mode="r", use_consolidated=True)[INIT].shape[0]
    if any(a.shape[0] != committed for a in _timed_arrays(group)):
        _resize(group, committed)
    return committed


def _resize(group: zarr.Group, length: int) -> None:
    # init_time last: until the commit its new rows are NaT, whatever the other arrays hold.
    arrays = sorted(_timed_arrays(group), key=lambda a: a.basename == INIT)
    for array in arrays:
        array.resize((length, *array.shape[1:]))


def _write_row(zstore: zarr.abc.store.Store, forecast: xr.Dataset, row: int) -> None:
    valid = forecast[INIT].values[:, None] + forecast[LEAD].values[None, :]
    data = forecast.drop_vars(
        [n for n in forecast.variables if INIT not in forecast[n].dims or n == INIT]
    ).assign_coords(
        {
            VALID: ((INIT, LEAD), valid),
            **{k: (INIT, np.array([str(forecast.attrs[k])], dtype=object)) for k in PROVENANCE},
        }
    )
    data.attrs = {}
    for name in data.variables:
        data[name].attrs = {}
        data[name].encoding = {}
    data.to_zarr(zstore, region={INIT: slice(row, row + 1)}, consolidated=False, zarr_format=3)


def _consolidate(zstore: zarr.abc.store.Store) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=".*[Cc]onsolidated")
        zarr.consolidate_metadata(zstore, zarr_format=3)


def _encode_times(times: np.ndarray) -> np.ndarray:
    """datetime64 → int64 seconds since 1970 (the ``init_time`` encoding), NaT → fill."""
    seconds = pd.DatetimeIndex(times).asi8 // 10**9
    return np.where(pd.isna(times), NAT, seconds).astype(np.int64)

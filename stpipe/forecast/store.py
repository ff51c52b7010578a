"""The forecast store: one Zarr v3 group of forecasts, one row per initialisation time.

Layout
------
Per target variable an array ``(init_time, lead_time, <lat|y>, <lon|x>)`` float32 in
physical units (NaN fill), one chunk (one object) per init time holding every lead: a
forecast is written and read whole, and N init times of V variables are N·V objects.
Coordinates: ``init_time`` (CF ``forecast_reference_time``: the time of the last input
step; int64 seconds since 1970-01-01), ``lead_time`` (CF ``forecast_period``, a
timedelta), ``valid_time`` ``(init_time, lead_time)`` (CF ``time``), the grid coordinates,
and per init time the provenance of that forecast: ``model_name``, ``model_version``,
``run_id``, ``store_digest`` (the manifest digest of the input store). The root attributes
carry ``Conventions`` (:data:`stpipe.core.grid.CF_CONVENTIONS`, as the data store) and
repeat the provenance of the latest write and its ``written_init_time``. Readable by ``xr.open_zarr``; :func:`open_forecasts` returns
the committed init times, sorted.

Commits and crash safety
------------------------
The root ``zarr.json`` is the single commit point: it carries the root attributes and the
consolidated metadata, whose array shapes give the committed number of rows; readers take
shapes from it and never see a row past it. A write of init time T (n rows committed):

1. recover what a killed write left (below);
2. grow the arrays to n + 1 rows and write row n: data, ``valid_time``, provenance,
   ``init_time`` (past the committed length: invisible);
3. commit: rewrite the root ``zarr.json`` with n + 1 rows and T's provenance, one object
   write (zarr's ``LocalStore`` writes a temporary file and renames it; an S3 PUT replaces
   an object whole);
4. if T was already at row r: copy row n over row r, commit n rows, cut the arrays back.

Between 3 and 4 the committed rows hold T twice; the later row is the current one, and
:func:`open_forecasts` keeps only the last row of each init time (plain ``xr.open_zarr``
shows both until 4 is done). Recovery cuts arrays back to the committed length and finishes
a step 4 that was killed, so a kill anywhere leaves T's old state (absent, or the previous
forecast) or its new one, never a mix, and the next write completes the store.

Writers of a local store hold its lock (:func:`stpipe.forecast.access.write_lock`), so
concurrent writes of different init times queue up instead of taking the same new row.
Object stores (``s3://``…) have no lock: run one writer at a time per URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from stpipe.core.errors import StoreError
from stpipe.core.grid import CF_CONVENTIONS
from stpipe.forecast.access import (
    ROOT,
    StorageOptions,
    describe_io_error,
    io_error_types,
    io_errors,
    local_path,
    write_lock,
    zarr_store,
)

INIT = "init_time"
LEAD = "lead_time"
VALID = "valid_time"
PROVENANCE = ("model_name", "model_version", "run_id", "store_digest")
FORMAT_KEY = "stpipe_forecast_format"
FORMAT = 1
TIME_UNITS = "seconds since 1970-01-01 00:00:00"
NAT = np.iinfo(np.int64).min
INIT_CHUNK = 4096
LOCK_TIMEOUT_S = 600.0
COORD_ATTRS = {
    INIT: {
        "standard_name": "forecast_reference_time",
        "long_name": "initialisation time (time of the last input step)",
    },
    LEAD: {"standard_name": "forecast_period", "long_name": "lead time"},
    VALID: {"standard_name": "time", "long_name": "valid time"},
}

log = logging.getLogger(__name__)


class MissingForecastStore(StoreError):
    """There is no forecast store at the location (nothing yet, or a killed creation)."""


@dataclass(frozen=True)
class ForecastWrite:
    """Where one init time went: the store, the row, and whether it replaced a forecast."""

    store: str
    init_time: np.datetime64
    row: int
    replaced: bool


def write_forecast(
    forecast: xr.Dataset,
    store: str,
    *,
    storage_options: StorageOptions | None = None,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> ForecastWrite:
    """Write one init time of ``forecast`` into the forecast store ``store`` (path or URL).

    ``forecast`` has dims ``(init_time: 1, lead_time, <lat|y>, <lon|x>)``, data variables
    float32 with ``units``, and the provenance keys (:data:`PROVENANCE`) in its attrs; data
    may be lazy (Dask). Re-writing an init time replaces its row. The commit protocol is in
    the module docstring. StoreError if the store holds forecasts of other variables, leads
    or grid, if another writer holds it past ``lock_timeout_s`` seconds, or on an I/O
    failure (one line naming the store and the cause; the store keeps its committed state).
    """
    init = _single_init(forecast)
    when = pd.Timestamp(init).isoformat()
    path = local_path(store)
    with write_lock(store, timeout_s=lock_timeout_s):
        fresh = path if path is not None and not path.exists() else None
        zstore = zarr_store(store, storage_options, read_only=False)
        with io_errors(store, "cannot write the forecast store"):
            committed = _recover(zstore, store)
        try:
            group, row, committed = _append(zstore, store, forecast, init, committed)
        except io_error_types() as exc:
            _discard(zstore, fresh=fresh, committed=committed)
            raise StoreError(
                f"{store}: cannot write the forecast of {when}: {describe_io_error(exc)}; "
                "the store keeps the forecasts it had"
            ) from None
        try:
            _settle(zstore, group, committed)
        except io_error_types() as exc:  # committed: readers see it, the next write tidies
            log.warning(
                "%s: wrote the forecast of %s; tidying up failed: %s (the next write retries)",
                store,
                when,
                describe_io_error(exc),
            )
    return ForecastWrite(store=store, init_time=init, row=row, replaced=row < committed - 1)


def open_forecasts(store: str, *, storage_options: StorageOptions | None = None) -> xr.Dataset:
    """The committed forecasts of ``store``, sorted by ``init_time`` (lazy, Dask-backed).

    Dims ``(init_time, lead_time, <lat|y>, <lon|x>)``; rows of killed writes are left out.
    MissingForecastStore if there is no forecast store at ``store``; StoreError if it
    cannot be read.
    """
    zstore = zarr_store(store, storage_options, read_only=True)
    with io_errors(store, "cannot read the forecast store"):
        if _committed_length(zstore, store) is None:
            raise MissingForecastStore(
                f"{store}: no forecast store here; run `stpipe forecast CONFIG` first"
            )
        with _quiet_zarr():
            # consolidated=None: a store left by an older stpipe may lack consolidated metadata.
            ds = xr.open_zarr(zstore, consolidated=None, chunks={}, zarr_format=3)
        inits = ds[INIT].values
    # The last row of each init time is its current forecast (module docstring).
    _, last_reversed = np.unique(inits[::-1], return_index=True)
    rows = np.sort(len(inits) - 1 - last_reversed)
    rows = rows[~np.isnat(inits[rows])]
    return ds.isel({INIT: rows}).sortby(INIT)


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
        given = forecast[name].attrs if name in forecast.variables else {}
        empty[name].attrs = COORD_ATTRS.get(name, {}) | given
    for name in forecast.data_vars:
        empty[name] = empty[name].astype(np.float32)
    empty.attrs = {k: v for k, v in forecast.attrs.items() if k not in PROVENANCE}
    empty.attrs |= {FORMAT_KEY: FORMAT, "Conventions": CF_CONVENTIONS}
    return empty


def _encoding(forecast: xr.Dataset) -> dict[str, dict[str, Any]]:
    leads = forecast.sizes[LEAD]
    rows, cols = (forecast.sizes[d] for d in forecast[next(iter(forecast.data_vars))].dims[2:])
    time = {"units": TIME_UNITS, "dtype": "int64", "_FillValue": NAT, "fill_value": NAT}
    encoding = {
        name: {"chunks": (1, leads, rows, cols), "dtype": "float32"} for name in forecast.data_vars
    }
    encoding[INIT] = time | {"chunks": (INIT_CHUNK,)}
    encoding[VALID] = time | {"chunks": (1, leads)}
    encoding[LEAD] = {"dtype": "int64"}
    encoding |= {name: {"chunks": (INIT_CHUNK,)} for name in PROVENANCE}
    return encoding


def _create(zstore: zarr.abc.store.Store, forecast: xr.Dataset) -> None:
    """A new store with no init time, laid out for ``forecast``.

    The root is written first, with the format marker, so a killed creation is recognised
    (marker, no committed ``init_time``) and redone over itself; the commit of 0 rows ends
    it. Without a root (nothing written yet) nothing is deleted.
    """
    template = _template(forecast)
    killed = _read_json(zstore, ROOT) is not None
    zarr.create_group(zstore, overwrite=killed, attributes=template.attrs, zarr_format=3)
    with _quiet_zarr():
        template.to_zarr(
            zstore, mode="a", encoding=_encoding(forecast), consolidated=False, zarr_format=3
        )
    _commit(zstore, _group(zstore), 0)


def _check_compatible(zstore: zarr.abc.store.Store, store: str, forecast: xr.Dataset) -> None:
    with _quiet_zarr():
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


def _append(
    zstore: zarr.abc.store.Store,
    store: str,
    forecast: xr.Dataset,
    init: np.datetime64,
    committed: int | None,
) -> tuple[zarr.Group, int, int]:
    """Steps 2 and 3 of a write (on a new store if ``committed`` is None): the group, the
    row T ends in, and the committed length."""
    if committed is None:
        _create(zstore, forecast)
        committed = 0
    group = _group(zstore)
    _check_compatible(zstore, store, forecast)
    encoded = _encode_times(np.array([init]))[0]
    (same,) = np.nonzero(group[INIT][:committed] == encoded)
    _resize(group, committed + 1)
    _write_row(zstore, forecast, committed)
    group[INIT][committed] = encoded
    provenance = {k: forecast.attrs[k] for k in PROVENANCE}
    _commit(zstore, group, committed + 1, provenance | {"written_init_time": str(init)})
    return group, int(same[0]) if len(same) else committed, committed + 1


def _recover(zstore: zarr.abc.store.Store, store: str) -> int | None:
    """Bring the store back to its committed state (module docstring); the committed length,
    None if there is no forecast store yet."""
    committed = _committed_length(zstore, store)
    if committed is None:
        return None
    group = _group(zstore)
    if not _read_json(zstore, ROOT).get("consolidated_metadata"):
        _commit(zstore, group, committed)  # left by an older stpipe killed mid-commit
    return _settle(zstore, group, committed)


def _settle(zstore: zarr.abc.store.Store, group: zarr.Group, committed: int) -> int:
    """Step 4: if the last committed row repeats an earlier init time, copy it there and
    commit one row less; cut the arrays back to the committed length, which is returned."""
    inits = group[INIT][:committed]
    last = inits[-1] if committed else NAT
    (earlier,) = np.nonzero(inits[:-1] == last)
    if last != NAT and len(earlier):
        for array in _timed_arrays(group):
            if array.basename != INIT:
                array[int(earlier[0])] = array[committed - 1]
        committed -= 1
        _commit(zstore, group, committed)
    _resize(group, committed)
    return committed


def _discard(zstore: zarr.abc.store.Store, *, fresh: Path | None, committed: int | None) -> None:
    """Best effort after a failed write: remove the directory of a local store this write
    began (``fresh``), or cut the arrays back to the ``committed`` length (the next write's
    recovery does it otherwise)."""
    with contextlib.suppress(*io_error_types()):
        if fresh is not None:
            shutil.rmtree(fresh)
        elif committed is not None:
            _resize(_group(zstore), committed)


def _committed_length(zstore: zarr.abc.store.Store, store: str) -> int | None:
    """The number of committed rows; None if there is no forecast store (nothing there, or
    a creation that was killed). StoreError if the location holds another Zarr group."""
    root = _read_json(zstore, ROOT)
    if root is None:
        return None
    consolidated = (root.get("consolidated_metadata") or {}).get("metadata") or {}
    init_meta = consolidated.get(INIT) or _read_json(zstore, f"{INIT}/{ROOT}")
    rows = init_meta["shape"][0] if init_meta else 0
    if root.get("attributes", {}).get(FORMAT_KEY) == FORMAT:
        # Marked but no rows and no consolidated metadata: a creation that was killed.
        return rows if INIT in consolidated or rows else None
    if init_meta is not None and rows == 0:
        return None  # an older stpipe killed before marking the store it created
    raise StoreError(
        f"{store}: a Zarr group that is not a stpipe forecast store (no {FORMAT_KEY!r} "
        "attribute); set [forecast] store to another location"
    )


def _commit(
    zstore: zarr.abc.store.Store,
    group: zarr.Group,
    length: int,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Rewrite the root ``zarr.json`` (one write): its attributes updated with ``attrs`` and
    consolidated metadata of every array, ``init_time``-dimensioned ones ``length`` long."""
    root = _read_json(zstore, ROOT)
    metadata = {}
    with _quiet_zarr():
        names = sorted(group.array_keys())
    for name in names:
        meta = _read_json(zstore, f"{name}/{ROOT}")
        if (meta.get("dimension_names") or [None])[0] == INIT:
            meta["shape"][0] = length
        metadata[name] = meta
    root["attributes"] = root.get("attributes", {}) | dict(attrs or {})
    root["consolidated_metadata"] = {
        "kind": "inline",
        "must_understand": False,
        "metadata": metadata,
    }
    blob = default_buffer_prototype().buffer.from_bytes(json.dumps(root, indent=1).encode())
    sync(zstore.set(ROOT, blob))


def _group(zstore: zarr.abc.store.Store) -> zarr.Group:
    with _quiet_zarr():
        return zarr.open_group(zstore, mode="r+", use_consolidated=False, zarr_format=3)


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Without zarr's warnings that consolidated metadata is not in the v3 spec, and that a
    temporary file a killed write left is not a Zarr node."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=".*[Cc]onsolidated")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*not recognized as a")
        yield


def _timed_arrays(group: zarr.Group) -> list[zarr.Array]:
    with _quiet_zarr():
        arrays = [a for _, a in group.arrays()]
    return [a for a in arrays if (a.metadata.dimension_names or (None,))[0] == INIT]


def _resize(group: zarr.Group, length: int) -> None:
    for array in _timed_arrays(group):
        if array.shape[0] != length:
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
    for name in forecast.data_vars:  # one Dask chunk per Zarr chunk: each written once
        if data[name].chunks is not None:
            data[name] = data[name].chunk(dict.fromkeys(data[name].dims, -1))
    data.attrs = {}
    for name in data.variables:
        data[name].attrs = {}
        data[name].encoding = {}
    data.to_zarr(zstore, region={INIT: slice(row, row + 1)}, consolidated=False, zarr_format=3)


def _read_json(zstore: zarr.abc.store.Store, key: str) -> dict[str, Any] | None:
    """The JSON document at ``key``; None if there is none (or no store directory)."""
    try:
        blob = sync(zstore.get(key, prototype=default_buffer_prototype()))
    except FileNotFoundError:
        return None
    return None if blob is None else json.loads(blob.to_bytes())


def _encode_times(times: np.ndarray) -> np.ndarray:
    """datetime64 → int64 seconds since 1970 (the ``init_time`` encoding), NaT → fill."""
    seconds = pd.DatetimeIndex(times).asi8 // 10**9
    return np.where(pd.isna(times), NAT, seconds).astype(np.int64)

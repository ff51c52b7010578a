"""The Zarr v3 store: layout, atomic commits, crash recovery, the writer's lock.

Layout
------
One group ``workdir/store.zarr``; one array per variable, dims ``(time, lat, lon)`` or
``(time, y, x)``, float32 with NaN fill; 1-D coordinate arrays ``time`` (int64 seconds
since 1970-01-01, CF ``units``/``calendar``), ``lat``/``lon`` or ``y``/``x``; variable
attributes (``units``, ``long_name``, ``standard_name``) as the source gave them; CF
globals ``Conventions`` and ``history`` (a line per commit: the first and the newest
:data:`HISTORY_LINES`); ``time_step_s``. Readable
by ``xr.open_zarr``.

Chunks and compression: :mod:`stpipe.io.layout`.

Commits and crash safety
------------------------
The root ``zarr.json`` is the single commit point: it carries the manifest
(:mod:`stpipe.io.manifest`, with the committed length) and inline consolidated metadata whose
array shapes are the committed length. Readers (:func:`open_store`, ``xr.open_zarr``,
``zarr.open_group(..., use_consolidated=True)``) take shapes from it, so they see only
committed steps, whatever lies beyond in the arrays. An append: resize the arrays → write
the region (the chunk holding the old end is rewritten whole; zarr 3.1's ``LocalStore``
writes every key to a temporary file and renames it, so a chunk file is always either the
old or the new version, both holding the same committed values) → write the root
``zarr.json`` (temporary file, rename). A store's first commit is a directory
rename of a staging store. :func:`recover` truncates arrays back to the committed length
after a crash. This protects against a killed process (a rename is atomic and the page
cache outlives the process); against power loss the chunk files would need fsync too, so
the root is not fsynced either: an fsync per commit made the commits, the serial part of
an ingest, several times slower (0.3-30 ms each, by file system) for no guarantee.

A write the file system refuses (disk full, file size limit, read-only) raises
:class:`StoreWriteError` naming the path and the cause; the committed state is unchanged.
A rollback (:mod:`stpipe.io.rollback`) removes the newest committed files by the same
protocol: commit the shorter manifest, then truncate the arrays (a kill in between leaves
arrays that recovery truncates).

Set ``STPIPE_CRASH_AT_WRITE=N`` to make the process SIGKILL itself just before its N-th
store write (crash tests). The region writes of ingest workers, and the lock they hold while
they write, are in :mod:`stpipe.io.store_writes` (no xarray, for worker processes).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from stpipe.core.errors import StoreError
from stpipe.io.layout import Layout, blosc_codecs, choose_layout
from stpipe.io.locks import LockTimeout, file_lock
from stpipe.io.manifest import (
    MANIFEST_KEY,
    ROOT_METADATA,
    Manifest,
    read_manifest,
    read_root_metadata,
    store_digest,
)
from stpipe.io.store_writes import (
    StoreWriteError,
    crash_point,
    data_write_lock,
    local_store,
    os_errors,
)

__all__ = [
    "Layout",
    "StoreWriteError",
    "choose_layout",
    "open_store",
    "read_manifest",
    "recover",
    "store_digest",
    "store_lock",
]

STORE_NAME = "store.zarr"
TIME_UNITS = "seconds since 1970-01-01 00:00:00"
TIME_COORD_CHUNK = 8192
HISTORY_LINES = 100  # newest lines of the CF history kept after its first (bounded_history)


def store_location(workdir: Path) -> Path:
    """Where a pipeline's store lives: ``<workdir>/store.zarr``."""
    return workdir / STORE_NAME


def open_store(path: str | Path) -> xr.Dataset:
    """The committed part of the store, lazily (dask arrays chunked like the Zarr arrays).

    Data variables ``(time, lat, lon)`` or ``(time, y, x)`` float32 with ``units``;
    ``attrs["time_step_s"]`` (int) and the CF globals. StoreError if ``path`` is missing
    or not a stpipe store.
    """
    raw = read_root_metadata(path)
    ds = xr.open_zarr(path, consolidated=True, chunks={}, zarr_format=3)
    ds.attrs.pop(MANIFEST_KEY, None)
    ds.attrs["time_step_s"] = int(raw["attributes"][MANIFEST_KEY]["time_step_s"])
    return ds


@contextlib.contextmanager
def store_lock(workdir: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the exclusive writer's lock of ``workdir`` (``workdir/store.lock``).

    A second writer waits (``wait=True``) or gets a StoreError naming the holder. The lock
    is an ``flock``: the kernel releases it when the holder dies, even by SIGKILL.
    """
    workdir = Path(workdir)
    with contextlib.ExitStack() as stack:
        with os_errors(workdir, "take the store's writer lock (a writable workdir is needed)"):
            try:
                lock = file_lock(workdir / "store.lock", timeout_s=math.inf if wait else 0)
                stack.enter_context(lock)
            except LockTimeout as exc:
                raise StoreError(
                    f"{workdir}: the store is being written by another process "
                    f"({exc.holder}); try again when it has finished"
                ) from None
        yield


def staging_path(store_path: Path) -> Path:
    """Where a new store is built before its first commit renames it to ``store_path``."""
    return store_path.with_name(f".{store_path.name}.staging")


def recover(store_path: Path) -> Manifest | None:
    """Undo what a killed ingest left beyond the last commit; the committed manifest.

    Removes a staging store and temporary files, and truncates arrays that were resized
    past the committed length. None if there is no committed store yet.
    """
    store_path = Path(store_path)
    with os_errors(store_path, "recover the store"), data_write_lock(store_path):
        staging = staging_path(store_path)
        if staging.exists():
            shutil.rmtree(staging)
        if not store_path.exists():
            return None
        manifest = read_manifest(store_path)
        _remove_temporaries(store_path)
        group = zarr.open_group(store=local_store(store_path), mode="r+", use_consolidated=False)
        for name, array in group.arrays():
            _remove_temporaries(store_path / name)
            if not _is_timed(array):
                continue
            _remove_chunk_temporaries(
                store_path / name, array.chunks[0], since=manifest.committed_length
            )
            if array.shape[0] != manifest.committed_length:
                array.resize((manifest.committed_length, *array.shape[1:]))
    return manifest


def _remove_temporaries(directory: Path) -> None:
    for leftover in directory.glob("*.partial"):
        leftover.unlink()


def _remove_chunk_temporaries(array_dir: Path, time_chunk: int, *, since: int) -> None:
    # Only chunks at or after the committed end are ever written by an append; looking
    # there alone keeps recovery cheap on a store of many years.
    chunks = array_dir / "c"
    if not chunks.is_dir():
        return
    for entry in chunks.iterdir():
        index = entry.name.split(".", 1)[0]
        if not index.isdigit() or int(index) < since // time_chunk:
            continue
        if entry.is_dir():
            for leftover in entry.rglob("*.partial"):
                leftover.unlink()
        elif entry.name.endswith(".partial"):
            entry.unlink()


def create_staging(
    store_path: Path,
    *,
    template: xr.Dataset,
    layout: Layout,
    attrs: Mapping[str, Any],
) -> Path:
    """Empty arrays (0 steps) shaped like ``template`` in the staging store; its path."""
    staging = staging_path(store_path)
    with os_errors(staging, "create the store"):
        _create_arrays(staging, template=template, layout=layout, attrs=attrs)
    return staging


def _create_arrays(
    staging: Path, *, template: xr.Dataset, layout: Layout, attrs: Mapping[str, Any]
) -> None:
    store = local_store(staging)
    root = zarr.create_group(store=store, attributes=dict(attrs), zarr_format=3)
    codecs = blosc_codecs(layout.compressor, layout.compression_level)
    rows, cols = template[next(iter(template.data_vars))].dims[1:]
    for name in (rows, cols):
        coord = template[name]
        root.create_array(
            name,
            data=coord.values,
            chunks=coord.shape,
            attributes=dict(coord.attrs),
            dimension_names=[name],
            compressors=codecs,
        )
    time_attrs = dict(template["time"].attrs) | {
        "units": TIME_UNITS,
        "calendar": "proleptic_gregorian",
    }
    root.create_array(
        "time",
        shape=(0,),
        dtype="int64",
        chunks=(TIME_COORD_CHUNK,),
        fill_value=0,
        attributes=time_attrs,
        dimension_names=["time"],
        compressors=codecs,
    )
    ny, nx = template.sizes[rows], template.sizes[cols]
    for name, var in template.data_vars.items():
        root.create_array(
            str(name),
            shape=(0, ny, nx),
            dtype="float32",
            chunks=(layout.time_chunk, *layout.spatial_chunk),
            fill_value=np.nan,
            attributes=dict(var.attrs),
            dimension_names=["time", rows, cols],
            compressors=codecs,
        )


def resize(store_path: Path, length: int) -> None:
    """Give every time-dimensioned array ``length`` steps.

    Steps past the committed length are invisible to readers; an ingest grows the arrays
    ahead of its appends and truncates them to the committed length when it ends.
    """
    with os_errors(store_path, f"resize the arrays to {length} steps"):
        group = zarr.open_group(store=local_store(store_path), mode="r+", use_consolidated=False)
        for _, array in group.arrays():
            if _is_timed(array) and array.shape[0] != length:
                array.resize((length, *array.shape[1:]))


def write_times(store_path: Path, times: np.ndarray, *, offset: int) -> None:
    """Write ``times`` (datetime64) into the time coordinate at store positions ``offset``….

    Called by the writer that holds :func:`store_lock` (the ingest loop), so it needs no
    :func:`data_write_lock`: its writes cannot outlive it.
    """
    seconds = times.astype("datetime64[s]").astype(np.int64)
    with os_errors(store_path / "time", f"write times {offset}…{offset + seconds.size - 1}"):
        array = zarr.open_array(store=local_store(store_path), path="time", mode="r+")
        array[offset : offset + seconds.size] = seconds


def read_times(store_path: Path) -> np.ndarray:
    """The committed time coordinate as datetime64[ns]."""
    group = zarr.open_group(store=local_store(store_path), mode="r", use_consolidated=True)
    return group["time"][:].astype("datetime64[s]").astype("datetime64[ns]")


def commit(store_path: Path, manifest: Manifest, *, history: str) -> None:
    """Make ``manifest`` the committed state: rewrite the root ``zarr.json``, atomically.

    ``history`` is appended to the CF ``history`` attribute, which keeps its first line and
    the newest :data:`HISTORY_LINES` (:func:`bounded_history`). In a staging store the
    commit ends with renaming it to the final store path.
    """
    Committer(store_path).commit(manifest, history=history)


def bounded_history(previous: str, entry: str) -> str:
    """The CF ``history`` text ``previous`` with ``entry`` appended: its first line (when
    the store was made) and the newest :data:`HISTORY_LINES` lines, so a store ingested
    file by file for years keeps a root ``zarr.json`` of bounded size."""
    lines = [*previous.splitlines(), *entry.splitlines()]
    if len(lines) > HISTORY_LINES + 1:
        lines = [lines[0], *lines[-HISTORY_LINES:]]
    return "\n".join(lines)


class Committer:
    """The commits of one writer (holding :func:`store_lock`) to ``store_path``, in order.

    The root and array metadata are read at the first commit and kept: between commits
    only this writer changes them (resizes change array shapes, which a commit overwrites
    with the committed length anyway). A commit is then one write of the root ``zarr.json``
    to a temporary file and a rename, with no fsync: the guarantee is against a killed
    process, for which the rename alone is atomic (see the module docstring).
    """

    def __init__(self, store_path: Path) -> None:
        self.store_path = Path(store_path)
        self._staging = staging_path(self.store_path)
        self._renamed = False
        self._attrs: dict[str, Any] | None = None
        self._arrays: dict[str, dict[str, Any]] = {}

    @property
    def target(self) -> Path:
        """Where the arrays are now: the staging store until the first commit renames it."""
        staged = not self._renamed and self._staging.exists()
        return self._staging if staged else self.store_path

    def commit(self, manifest: Manifest, *, history: str) -> None:
        target = self.target
        with os_errors(target, "commit"):
            if self._attrs is None:
                self._read(target)
            self._write(target, manifest, history)
        if target == self._staging:
            crash_point()
            with os_errors(self.store_path, "commit the new store"):
                os.rename(self._staging, self.store_path)
            self._renamed = True

    def _read(self, target: Path) -> None:
        root = json.loads((target / ROOT_METADATA).read_bytes())
        self._attrs = dict(root.get("attributes", {}))
        for meta_path in sorted(target.glob(f"*/{ROOT_METADATA}")):
            self._arrays[meta_path.parent.name] = json.loads(meta_path.read_bytes())

    def _write(self, target: Path, manifest: Manifest, history: str) -> None:
        attrs = dict(self._attrs or {})
        attrs["history"] = bounded_history(attrs.get("history", ""), history)
        attrs["time_step_s"] = manifest.time_step_s
        attrs[MANIFEST_KEY] = manifest.to_json()
        for meta in self._arrays.values():
            if meta.get("dimension_names", [None])[0] == "time":
                meta["shape"][0] = manifest.committed_length
        root = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": attrs,
            "consolidated_metadata": {
                "kind": "inline",
                "must_understand": False,
                "metadata": self._arrays,
            },
        }
        # Compact: the C encoder (json's indenting encoder is pure Python, 5× slower).
        _atomic_write(target / ROOT_METADATA, json.dumps(root, separators=(",", ":")).encode())
        self._attrs = attrs


def _atomic_write(path: Path, blob: bytes) -> None:
    crash_point()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_timed(array: zarr.Array) -> bool:
    return (array.metadata.dimension_names or (None,))[0] == "time"

"""What ingest's workers do with one file, and what the ingest loop asks of a pool of them.

A worker decodes a file (:func:`decode`: checksum, read, float32 ``(time, y, x)`` arrays,
a :class:`stpipe.io.sources.canonical.SourceData`), keeps it and answers with its
description (:func:`describe`), compares its first steps with the store
(:func:`first_difference`) and writes its new steps (:func:`write_loaded`). The
pools that run these are :class:`stpipe.io.ingest_workers.LocalPool` (this machine) and
:class:`stpipe.io.ingest_dask.DaskPool` (``[dask] address``); both satisfy :class:`DecodePool`.
What runs on a worker imports neither xarray nor pydantic: worker processes start sooner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from stpipe.core.errors import SourceError
from stpipe.io.checksums import Signature, file_sha256, file_signature
from stpipe.io.sources.canonical import SourceData, SourceOptions
from stpipe.io.sources.kinds import read_source_file
from stpipe.io.store_writes import read_steps, write_steps


@dataclass(frozen=True)
class Loaded:
    """A decoded file, held by the worker that read it, or the reader's complaint."""

    data: SourceData | None
    error: str | None
    signature: Signature
    sha256: str


@dataclass(frozen=True)
class Decoded:
    """What the ingest loop needs of a ``Loaded`` file: its times and an empty-time copy of
    it (coords, attributes), or the error; its stat signature and checksum."""

    times: np.ndarray | None
    template: SourceData | None
    error: str | None
    signature: Signature
    sha256: str


def decode(path: Path, source: SourceOptions) -> Loaded:
    """Checksum and decode ``path`` (runs on a worker)."""
    try:
        signature, sha256 = file_signature(path), file_sha256(path)
    except OSError as exc:
        return Loaded(None, f"cannot read the file: {exc.strerror}", [], "")
    try:
        # The readers hold the format libraries' lock themselves, only while they call them.
        return Loaded(read_source_file(path, source), None, signature, sha256)
    except SourceError as exc:
        # Returned, not raised: the loop records it as the file's refusal, in file order.
        return Loaded(None, exc.problem, signature, sha256)


def describe(loaded: Loaded) -> Decoded:
    if loaded.data is None:
        return Decoded(None, None, loaded.error, loaded.signature, loaded.sha256)
    data = loaded.data
    return Decoded(data.time, data.steps(0, 0), None, loaded.signature, loaded.sha256)


def write_loaded(store_path: Path, loaded: Loaded, *, first: int, offset: int) -> int:
    """Write the data variables of ``loaded`` from step ``first`` on at store position
    ``offset`` (the ingest loop writes the time coordinate); the float32 bytes written."""
    arrays = {name: values for name, (values, _) in loaded.data.variables.items()}
    return write_steps(store_path, arrays, first=first, offset=offset)


def first_difference(
    store_path: Path, loaded: Loaded, n_steps: int, index: np.ndarray
) -> str | None:
    """Where the file's first ``n_steps`` first differ bitwise from stored ``index``."""
    data = loaded.data
    stored = read_steps(store_path, list(data.variables), index)
    for name, (values, _) in data.variables.items():
        new, old = values[:n_steps], stored[name]
        same = (new.view(np.uint32) == old.view(np.uint32)) | (np.isnan(new) & np.isnan(old))
        if not same.all():
            t = np.unravel_index(np.argmin(same), same.shape)[0]
            when = np.datetime_as_string(data.time[t], "s")
            return f"first in {name!r} at {when}"
    return None


class Writing(Protocol):
    """A write under way on the worker that holds the file."""

    def done(self) -> bool: ...

    def result(self) -> int: ...


class Decoding(Protocol):
    """One file given to a pool: its description once decoded, and its fate."""

    def described(self) -> Decoded: ...

    def write(self, target: Path, *, first: int, offset: int) -> Writing:
        """Write its steps from ``first`` on at ``offset`` of ``target``; drops it after."""
        ...

    def first_difference(self, store_path: Path, n_steps: int, index: np.ndarray) -> str | None: ...

    def release(self) -> None:
        """Drop the decoded file (or its decoding, if not started)."""
        ...


class DecodePool(Protocol):
    """Workers that decode files in the order given, as workers come free."""

    def decode(self, path: Path) -> Decoding: ...

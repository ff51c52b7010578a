"""The store's manifest: which files made the committed data, where its time has gaps, and
which files rollbacks removed.

The manifest lives in the attributes of the store's root ``zarr.json`` (key ``"stpipe"``),
the single commit point of the store (see :mod:`stpipe.io.store`), so it always describes
exactly the committed data. It is read here as plain JSON, without opening Zarr, so that a
no-op ingest and lineage look-ups stay cheap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from stpipe.core.errors import StoreError
from stpipe.core.splits import TimeRange

MANIFEST_KEY = "stpipe"
MANIFEST_FORMAT = 1
ROOT_METADATA = "zarr.json"


@dataclass(frozen=True)
class FileEntry:
    """One ingested source file.

    ``start``/``end``/``n_steps`` describe the file; ``offset``/``appended`` the steps it
    added to the store (``appended == 0``: every step was already stored with identical
    values, so the file is recorded only to be skipped by checksum next time).
    """

    name: str
    size: int
    sha256: str
    start: np.datetime64
    end: np.datetime64
    n_steps: int
    offset: int
    appended: int


@dataclass(frozen=True)
class RollbackEntry:
    """One ``stpipe store rollback``: when (UTC), the committed length before and after,
    and the file entries it removed, oldest first."""

    time: np.datetime64
    length_before: int
    length_after: int
    files: tuple[FileEntry, ...]


@dataclass(frozen=True)
class Manifest:
    """What the committed store holds: ``committed_length`` steps of ``time_step_s`` seconds.

    ``rollbacks`` is the store's record of rolled-back files; it does not count as content
    (:func:`manifest_digest`).
    """

    time_step_s: int
    variables: tuple[str, ...]
    committed_length: int = 0
    start: np.datetime64 | None = None
    end: np.datetime64 | None = None
    gaps: tuple[TimeRange, ...] = ()
    files: tuple[FileEntry, ...] = field(default=())
    rollbacks: tuple[RollbackEntry, ...] = field(default=())

    @property
    def checksums(self) -> frozenset[str]:
        return frozenset(f.sha256 for f in self.files)

    def to_json(self) -> dict[str, Any]:
        # Shallow: asdict would deep-copy every file entry, only to be replaced below (each
        # ingest commit writes the manifest, so this runs once per file ingested).
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["format"] = MANIFEST_FORMAT
        out["variables"] = list(self.variables)
        out["start"], out["end"] = _iso(self.start), _iso(self.end)
        out["gaps"] = [[_iso(a), _iso(b)] for a, b in self.gaps]
        out["files"] = [_file_json(f) for f in self.files]
        out["rollbacks"] = [
            asdict(r) | {"time": _iso(r.time), "files": [_file_json(f) for f in r.files]}
            for r in self.rollbacks
        ]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any], *, origin: str) -> Manifest:
        if raw.get("format") != MANIFEST_FORMAT:
            raise StoreError(
                f"{origin}: manifest format {raw.get('format')!r} is not the supported "
                f"{MANIFEST_FORMAT}"
            )
        try:
            return cls(
                time_step_s=int(raw["time_step_s"]),
                variables=tuple(raw["variables"]),
                committed_length=int(raw["committed_length"]),
                start=_time(raw["start"]),
                end=_time(raw["end"]),
                gaps=tuple((_time(a), _time(b)) for a, b in raw["gaps"]),
                files=tuple(_file_entry(f) for f in raw["files"]),
                rollbacks=tuple(
                    RollbackEntry(
                        time=_time(r["time"]),
                        length_before=int(r["length_before"]),
                        length_after=int(r["length_after"]),
                        files=tuple(_file_entry(f) for f in r["files"]),
                    )
                    for r in raw.get("rollbacks", [])
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{origin}: manifest is malformed: {exc!r}") from None


def files_after(manifest: Manifest, time: np.datetime64) -> int:
    """How many of the newest files must go for the store to end at or before ``time``:
    from the first file that appended a step after ``time`` on."""
    for i, entry in enumerate(manifest.files):
        if entry.appended and entry.end > time:
            return len(manifest.files) - i
    return 0


def rolled_back(manifest: Manifest, count: int, *, when: np.datetime64, origin: str) -> Manifest:
    """``manifest`` without its ``count`` newest files and the steps they appended, and
    with a :class:`RollbackEntry` saying so (StoreError naming ``origin``, the store, if
    that would empty the store)."""
    if not 0 < count <= len(manifest.files):
        raise StoreError(
            f"{origin}: cannot roll back {count} file(s): the store holds {len(manifest.files)}"
        )
    kept, removed = manifest.files[:-count], manifest.files[-count:]
    length = removed[0].offset
    if length == 0:
        raise StoreError(
            f"{origin}: rolling back {count} file(s) would remove every committed step; to "
            "start over, delete the store instead"
        )
    # A file appends the tail of its times, so the last file that appended ends the store.
    end = next(f.end for f in reversed(kept) if f.appended)
    entry = RollbackEntry(when, manifest.committed_length, length, removed)
    return replace(
        manifest,
        committed_length=length,
        end=end,
        gaps=tuple(gap for gap in manifest.gaps if gap[1] <= end),
        files=kept,
        rollbacks=(*manifest.rollbacks, entry),
    )


def read_root_metadata(path: str | Path) -> dict[str, Any]:
    """The root ``zarr.json`` of a stpipe store as a dict; StoreError if there is none."""
    path = Path(path)
    root = path / ROOT_METADATA
    try:
        raw = json.loads(root.read_bytes())
    except FileNotFoundError:
        what = "does not exist" if not path.exists() else "has no committed data (no zarr.json)"
        raise StoreError(f"{path}: store {what}; run `stpipe ingest` first") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{root}: cannot read store metadata: {exc}") from None
    if raw.get("node_type") != "group" or MANIFEST_KEY not in raw.get("attributes", {}):
        raise StoreError(
            f"{path}: not a stpipe store (root zarr.json has no {MANIFEST_KEY!r} manifest)"
        )
    return raw


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of the committed store at ``path`` (StoreError if it is not a store)."""
    raw = read_root_metadata(path)
    return Manifest.from_json(raw["attributes"][MANIFEST_KEY], origin=str(path))


def manifest_digest(manifest: Manifest) -> str:
    """16 hex digits that change iff the committed data changes.

    Hashes the variables, the step, the committed length and, for each file that added
    steps, its checksum and position; files recorded only as duplicates do not count.
    """
    content = {
        "time_step_s": manifest.time_step_s,
        "variables": list(manifest.variables),
        "committed_length": manifest.committed_length,
        "files": [[f.sha256, f.offset, f.appended] for f in manifest.files if f.appended],
    }
    blob = json.dumps(content, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def store_digest(path: str | Path) -> str:
    """Short hash of the store's committed content, for caching and lineage."""
    return manifest_digest(read_manifest(path))


def _file_json(entry: FileEntry) -> dict[str, Any]:
    return asdict(entry) | {"start": _iso(entry.start), "end": _iso(entry.end)}


def _file_entry(raw: dict[str, Any]) -> FileEntry:
    return FileEntry(**(raw | {"start": _time(raw["start"]), "end": _time(raw["end"])}))


def _iso(t: np.datetime64 | None) -> str | None:
    return None if t is None else str(np.datetime64(t, "s"))


def _time(text: str | None) -> np.datetime64 | None:
    return None if text is None else np.datetime64(text, "ns")

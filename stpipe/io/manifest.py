"""The store's manifest: which files made the committed data, and where its time has gaps.

The manifest lives in the attributes of the store's root ``zarr.json`` (key ``"stpipe"``),
the single commit point of the store (see :mod:`stpipe.io.store`), so it always describes
exactly the committed data. It is read here as plain JSON, without opening Zarr, so that a
no-op ingest and lineage look-ups stay cheap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
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
class Manifest:
    """What the committed store holds: ``committed_length`` steps of ``time_step_s`` seconds."""

    time_step_s: int
    variables: tuple[str, ...]
    committed_length: int = 0
    start: np.datetime64 | None = None
    end: np.datetime64 | None = None
    gaps: tuple[TimeRange, ...] = ()
    files: tuple[FileEntry, ...] = field(default=())

    @property
    def checksums(self) -> frozenset[str]:
        return frozenset(f.sha256 for f in self.files)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["format"] = MANIFEST_FORMAT
        out["variables"] = list(self.variables)
        out["start"], out["end"] = _iso(self.start), _iso(self.end)
        out["gaps"] = [[_iso(a), _iso(b)] for a, b in self.gaps]
        out["files"] = [
            asdict(f) | {"start": _iso(f.start), "end": _iso(f.end)} for f in self.files
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
                files=tuple(
                    FileEntry(**(f | {"start": _time(f["start"]), "end": _time(f["end"])}))
                    for f in raw["files"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{origin}: manifest is malformed: {exc!r}") from None


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


def _iso(t: np.datetime64 | None) -> str | None:
    return None if t is None else str(np.datetime64(t, "s"))


def _time(text: str | None) -> np.datetime64 | None:
    return None if text is None else np.datetime64(text, "ns")

"""The sha256 of source files, cached under each file's stat signature.

Ingest skips a file whose sha256 the manifest already holds without reading it
(:mod:`stpipe.io.ingestion`). The checksums are cached in ``workdir/.sha256-cache.json``
under the file's (path, size, mtime_ns, ctime_ns, inode, device). Any rewrite or replacement
of the file changes its ctime, which no tool can set back, so a cached checksum is never used
for changed content; it makes a no-op re-run cost one ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

CHECKSUM_CACHE = ".sha256-cache.json"
_HASH_BLOCK = 1 << 22

log = logging.getLogger(__name__)

Signature = list[int]
"""(size, mtime_ns, ctime_ns, inode, device) of a file."""


def cached_checksums(paths: Iterable[Path], *, cache: Path) -> dict[Path, tuple[Signature, str]]:
    """(stat signature, sha256) of the ``paths`` whose cached signature still matches."""
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    found = {}
    for path in paths:
        entry = known.get(str(path))
        if entry is not None and entry[0] == file_signature(path):
            found[path] = (entry[0], entry[1])
    return found


def save_checksums(cache: Path, checksums: dict[Path, tuple[Signature, str]]) -> None:
    """Replace the cache with ``checksums`` (atomically; files gone from the feed drop out).

    A cache that cannot be written (disk full, read-only) is logged, not raised: it saves
    reading files again, it holds no data.
    """
    blob = json.dumps({str(p): [sig, sha] for p, (sig, sha) in checksums.items()})
    try:
        if cache.read_text() == blob:
            return
    except OSError:
        pass
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(blob)
        os.replace(tmp, cache)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("cannot write the checksum cache %s: %s", cache, exc.strerror or exc)


def file_signature(path: Path) -> Signature:
    s = path.stat()
    return [s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, s.st_dev]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()

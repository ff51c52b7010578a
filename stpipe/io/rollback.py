"""Rollback: remove the newest committed files from the store (``stpipe store rollback``).

The store is append-only, so a file that should not have been ingested (mis-dated,
implausible values that predate the checks) would stay at its end for good, and every
later file be refused. A rollback removes whole files, newest first, with every step they
appended, in one commit (:func:`stpipe.io.store.commit`: the manifest is the commit point;
the arrays are truncated after it, and a kill in between leaves arrays past the committed
length that the next writer's recovery truncates). The manifest records it
(:class:`stpipe.io.manifest.RollbackEntry`), and the removed files' checksums leave it, so
the next ingest reads them again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from stpipe.core.errors import StoreError
from stpipe.io import store as st
from stpipe.io.manifest import RollbackEntry, files_after, rolled_back


def rollback(
    workdir: Path, *, files: int | None = None, to: np.datetime64 | None = None
) -> RollbackEntry | None:
    """Remove the newest ``files`` committed files, or those that appended steps after
    ``to``, from the store of ``workdir``; the manifest's record of it (None if nothing
    was after ``to``).

    Whole files go, with every step they appended; their checksums leave the manifest, so
    the next ingest reads them again. Takes the writer's lock; StoreError if the store is
    missing or would be left empty.
    """
    store_path = st.store_location(Path(workdir))
    with st.store_lock(workdir):
        manifest = st.recover(store_path)
        if manifest is None:
            raise StoreError(f"{store_path}: store does not exist; nothing to roll back")
        count = files
        if count is None:
            count = files_after(manifest, np.datetime64(to, "ns"))
            if count == 0:
                return None
        when = np.datetime64(datetime.now(UTC).replace(tzinfo=None), "s")
        shorter = rolled_back(manifest, count, when=when, origin=str(store_path))
        entry = shorter.rollbacks[-1]
        names = ", ".join(f.name for f in entry.files)
        removed = entry.length_before - entry.length_after
        st.commit(
            store_path,
            shorter,
            history=f"{when}Z stpipe store rollback: removed {count} file(s) ({names}), "
            f"{removed} steps",
        )
        st.resize(store_path, shorter.committed_length)
    return entry

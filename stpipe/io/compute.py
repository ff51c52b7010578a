"""Where Dask work runs: the threaded scheduler locally, or an existing cluster.

``[dask] address`` in the config points at a running ``distributed`` scheduler; the same
library code then runs there unchanged, because it only builds Dask graphs and calls
``dask.compute`` inside :func:`dask_context`. Ingest streams its files through the
client's futures there (:mod:`stpipe.io.ingest_dask`) and through its own workers
otherwise (:mod:`stpipe.io.ingest_workers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from stpipe.core.errors import StpipeError

if TYPE_CHECKING:  # the schema imports pydantic, which ingest worker processes do without
    from stpipe.io.settings import DaskSection

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_context(cfg: DaskSection | None) -> Iterator[object | None]:
    """Yield a ``distributed.Client`` for ``cfg.address``, or None for local threads."""
    if cfg is None or not cfg.address:
        yield None
        return
    from distributed import Client

    try:
        client = Client(cfg.address, timeout="10s", set_as_default=True)
    except (OSError, TimeoutError) as exc:
        raise StpipeError(f"[dask] address: cannot reach scheduler {cfg.address}: {exc}") from exc
    log.info(
        "using dask cluster at %s (%d workers)",
        cfg.address,
        len(client.scheduler_info().get("workers", {})),
    )
    try:
        yield client
    finally:
        client.close()


def release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``; no-op elsewhere).

    Many threads allocating and freeing multi-MB arrays leave them cached in glibc's
    per-thread arenas, so a long-lived process (a flow worker) keeps the RSS of its
    busiest moment. Trimming after a batch of work hands it back; trimming after every
    file cost ingest 15% (the freed pages fault in again) for no lower peak.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_freed_memory() -> None:
    """Let glibc keep freed multi-MB buffers for reuse instead of unmapping them.

    Sets the thresholds that glibc's own dynamic tuning reaches after freeing a 32 MB block
    (``M_MMAP_THRESHOLD`` 32 MB, ``M_TRIM_THRESHOLD`` 64 MB), which the 1-6 MB buffers of
    decoding and compressing never trigger: every freed buffer was given back and the next
    one faulted in again, page by page. Measured on the zarr writes of ingest with threads
    (2 cores): 47,000 page faults and 5.8 ms of CPU per MB before, 140 and 3.5 ms after.
    :func:`release_free_memory` still hands the memory back after a batch. No-op off glibc.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)


@contextlib.contextmanager
def collector_skips_existing_objects() -> Iterator[None]:
    """Keep the objects that exist now (the imports' hundreds of thousands) out of the
    cyclic garbage collector's scans until the block ends; what the block creates is
    collected as usual.

    A full collection scans every tracked object under the GIL, which the ingest's worker
    threads share: measured on the 2-core machine, one full collection of 60-130 ms in an
    ingest of 30 files of 12.6 MB (about 3 s), none with this.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None

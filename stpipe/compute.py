"""Where Dask work runs: the threaded scheduler locally, or an existing cluster.

``[dask] address`` in the config points at a running ``distributed`` scheduler; the same
library code then runs there unchanged, because it only builds Dask graphs and calls
``dask.compute`` inside :func:`dask_context`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from stpipe.config import DaskSection
from stpipe.errors import StpipeError

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

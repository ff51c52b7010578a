"""``ingest_flow``: new source files → the pipeline's store, under the pipeline lock."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import flow

from stpipe.app.flows.common import Overrides, ingest_task, pipeline_config, pipeline_lock

if TYPE_CHECKING:
    from stpipe.io.ingestion import IngestReport


@flow(name="ingest")
def ingest_flow(
    config_path: str, overrides: Overrides | None = None, wait_for_lock: bool = True
) -> IngestReport:
    """Ingest the new files of the pipeline ``config_path`` (see :func:`stpipe.io.store.ingest`).

    ``overrides``: config keys to replace for this run (``{"source.on_bad_file": "skip"}``);
    ``wait_for_lock``: queue behind a running flow of the same pipeline (up to ``[pipeline]
    lock_timeout_s``; the default) or fail at once (False).
    """
    config = pipeline_config(config_path, overrides)
    with pipeline_lock(config, wait=wait_for_lock):
        return ingest_task(config)

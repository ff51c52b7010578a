"""Two runs of one pipeline never write at once: the second stops clearly, or waits its turn.

The first run is this test process holding the pipeline lock (as a running nightly flow
does); the second is a real flow run in another process.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from stpipe.app.flows.common import pipeline_config, pipeline_lock
from stpipe.io.store import open_store

INGEST = (
    "from stpipe.app.flows.ingest import ingest_flow; ingest_flow({config!r}, wait_for_lock={wait})"
)


def _lines_until(proc, marker: str, seen: list[str]) -> threading.Event:
    """Collect the process's output lines in ``seen``; the event is set once ``marker`` shows."""
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    return found


@pytest.mark.slow
def test_a_second_run_stops_with_a_message_naming_the_first(new_pipeline, flow_process):
    # given: a run of the pipeline in progress (this process holds its lock)
    pipeline = new_pipeline(days=2, arrived=2)
    config = pipeline_config(pipeline.config, None)
    with pipeline_lock(config, wait=False):
        # when: another process starts an ingest run of the same pipeline
        proc = flow_process(
            INGEST.format(config=str(pipeline.config), wait=False), cwd=pipeline.config.parent
        )
        out, _ = proc.communicate(timeout=300)

    # then: it fails without touching the store, saying who holds the pipeline
    assert proc.returncode != 0, out
    assert "pipeline 'tiny-weather' is already running" in out, out
    assert "`stpipe nightly --wait`" in out, "the remedy is the CLI's flag, not a Python argument"
    assert f"pid {os.getpid()} on " in out, out
    assert not (pipeline.workdir / "store.zarr").exists()


@pytest.mark.slow
def test_a_second_run_that_may_wait_runs_when_the_first_ends(new_pipeline, flow_process):
    # given: a run of the pipeline in progress
    pipeline = new_pipeline(days=2, arrived=2)
    config = pipeline_config(pipeline.config, None)
    seen: list[str] = []
    with pipeline_lock(config, wait=False):
        # when: another process starts a run that may wait for the lock
        proc = flow_process(
            INGEST.format(config=str(pipeline.config), wait=True), cwd=pipeline.config.parent
        )
        started = _lines_until(proc, "Beginning flow run", seen)
        assert started.wait(timeout=300), "".join(seen)
        time.sleep(2.0)
        # then: it is still waiting, and has written nothing
        assert proc.poll() is None, "".join(seen)
        assert not (pipeline.workdir / "store.zarr").exists()
    # and: once the first run ends, it ingests and finishes
    assert proc.wait(timeout=300) == 0, "".join(seen)
    assert open_store(config.store_path).sizes["time"] == 2 * 24

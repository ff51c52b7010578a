"""Two runs of one pipeline never write at once: the second stops clearly, or waits its turn.

The first run is this test process holding the pipeline lock (as a running nightly flow
does); the second is a real flow run, in another process or in this one. A first run in
another workdir stands for one on another host: only the Prefect concurrency limit of the
pipeline's name is shared.
"""

from __future__ import annotations

import os
import re
import threading
import time

import pytest

from stpipe.app.flows.common import (
    NO_WAIT_S,
    concurrency_limit_name,
    pipeline_config,
    pipeline_lock,
)
from stpipe.app.flows.ingest import ingest_flow
from stpipe.core.errors import StoreError
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
    assert "`stpipe nightly` without --no-wait" in out, "the remedy names the CLI's flag"
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


def test_a_run_that_waits_past_lock_timeout_stops_with_one_line(new_pipeline):
    # given: a run of the pipeline in progress on this host
    pipeline = new_pipeline(days=2, arrived=2)
    config = pipeline_config(pipeline.config, None)
    impatient = pipeline_config(pipeline.config, {"pipeline.lock_timeout_s": 0.5})
    with pipeline_lock(config, wait=False):
        # when: another run of it may wait only half a second
        started = time.monotonic()
        with pytest.raises(StoreError) as caught, pipeline_lock(impatient, wait=True):
            pytest.fail("two runs of one pipeline held its lock together")
    # then: it waited that long, then stopped with one line naming the holder and the key
    message = str(caught.value)
    assert 0.5 <= time.monotonic() - started < 10
    assert "\n" not in message, message
    assert message.startswith("pipeline 'tiny-weather' is still running (held by pid "), message
    assert f"pid {os.getpid()} on " in message, message
    assert re.search(
        r"after this run waited \d+\.\d s for it \(\[pipeline\] lock_timeout_s = 0.5\)", message
    )


@pytest.mark.slow
def test_runs_of_one_pipeline_on_two_hosts_queue_on_the_prefect_limit(new_pipeline, flow_process):
    # given: a run of the pipeline in progress "on another host": another workdir, so no
    # shared file lock, only the Prefect concurrency limit of the pipeline's name
    here, there = new_pipeline(days=2, arrived=2), new_pipeline(days=2, arrived=2)
    seen: list[str] = []
    with pipeline_lock(pipeline_config(there.config, None), wait=False):
        # when: a flow run of the same pipeline starts here, waiting by default
        proc = flow_process(
            f"from stpipe.app.flows.ingest import ingest_flow; ingest_flow({str(here.config)!r})",
            cwd=here.config.parent,
        )
        started = _lines_until(proc, "Beginning flow run", seen)
        assert started.wait(timeout=300), "".join(seen)
        time.sleep(3.0)
        # then: it waits for the slot and has written nothing
        assert proc.poll() is None, "".join(seen)
        assert not (here.workdir / "store.zarr").exists()
        released = time.time()
    # and: it runs once the first run has released the slot
    assert proc.wait(timeout=300) == 0, "".join(seen)
    store = here.workdir / "store.zarr"
    assert open_store(store).sizes["time"] == 2 * 24
    assert (store / "zarr.json").stat().st_mtime > released


def test_another_pipeline_is_not_blocked_and_a_full_slot_stops_in_one_line(new_pipeline):
    # given: a run of pipeline 'tiny-weather' in progress elsewhere (another workdir)
    running, other, same = (new_pipeline(days=2, arrived=2) for _ in range(3))
    with pipeline_lock(pipeline_config(running.config, None), wait=False):
        # when: a flow run of another pipeline starts
        report = ingest_flow(str(other.config), overrides={"pipeline.name": "other-weather"})
        # then: it runs at once
        assert len(report.ingested) == 2
        # when: a run of the same pipeline may wait one second
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            ingest_flow(str(same.config), overrides={"pipeline.lock_timeout_s": 1})
        # then: it stops after the server's NO_WAIT_S (more than that second) with one line
        # naming the limit, how long it waited and the key
        waited = time.monotonic() - started
        assert NO_WAIT_S <= waited < 60
    message = str(caught.value)
    assert "\n" not in message, message
    prefix = (
        f"pipeline 'tiny-weather' is still running (Prefect concurrency limit "
        f"{concurrency_limit_name('tiny-weather')!r} has no free slot) after this run waited "
    )
    assert message.startswith(prefix), message
    assert message.endswith(" s for it ([pipeline] lock_timeout_s = 1); this run stops"), message
    assert NO_WAIT_S <= float(message.removeprefix(prefix).split(" ")[0]) <= waited
    assert not (same.workdir / "store.zarr").exists()

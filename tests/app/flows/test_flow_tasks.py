"""Task mechanics with real Prefect: a retry after a transient failure, a cache that outlives
the process that filled it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateName,
)

from stpipe.app.flows.common import ingest_task, pipeline_config, statistics_task
from stpipe.app.flows.ingest import ingest_flow
from stpipe.core.errors import StoreError
from stpipe.io.store import open_store, store_lock

HERE = Path(__file__).parent
RETRY_FLOW = "ingest-with-quick-retries"


@flow(name=RETRY_FLOW)
def ingest_with_quick_retries(config_path: str):
    """The flows' ingest task, retrying after 3 s instead of a minute."""
    config = pipeline_config(config_path, None)
    return ingest_task.with_options(retry_delay_seconds=3)(config, return_state=True)


def _await_retry_then(fix, *, timeout_s: float = 120.0) -> threading.Thread:
    """In a thread: wait until an ingest task run of RETRY_FLOW awaits its retry, then fix()."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                waiting = client.read_task_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRY_FLOW])),
                    task_run_filter=TaskRunFilter(
                        state=TaskRunFilterState(
                            name=TaskRunFilterStateName(any_=["AwaitingRetry", "Retrying"])
                        )
                    ),
                )
                if waiting:
                    fix()
                    return
                time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_ingest_retries_a_file_that_was_still_being_copied(new_pipeline):
    # given: three daily files, the last one only half copied when the run starts
    pipeline = new_pipeline(days=3, arrived=2)
    whole = pipeline.archive[2].read_bytes()
    partial = pipeline.feed / pipeline.archive[2].name
    partial.write_bytes(whole[: len(whole) // 2])

    def finish_copy() -> None:  # as a copy tool does: write aside, rename into place
        done = partial.with_suffix(".part")
        done.write_bytes(whole)
        os.replace(done, partial)

    # when: the ingest task fails on the truncated file, and the copy finishes meanwhile
    watcher = _await_retry_then(finish_copy)
    state = ingest_with_quick_retries(str(pipeline.config))
    watcher.join(timeout=5)

    # then: the second attempt ingested it and the task ran twice
    assert state.is_completed(), state
    with get_client(sync_client=True) as client:
        task_run = client.read_task_run(state.state_details.task_run_id)
    assert task_run.run_count == 2, task_run.state
    report = state.result()
    assert [p.name for p in report.ingested] == ["era5_20240103.nc"], report.summary()
    assert open_store(pipeline.workdir / "store.zarr").sizes["time"] == 3 * 24


def test_a_locked_store_is_not_retried(new_pipeline):
    # given: another writer holds the store's lock
    pipeline = new_pipeline(days=1, arrived=1)
    with store_lock(pipeline.workdir):
        # when: the ingest task runs
        flow_state = ingest_with_quick_retries(str(pipeline.config), return_state=True)
    # then: it fails at once, naming the holder: waiting 3 s would not free the lock
    with pytest.raises(StoreError, match=rf"being written by another process \(pid {os.getpid()} "):
        flow_state.result()
    with get_client(sync_client=True) as client:
        (task_run,) = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])
            )
        )
    assert task_run.state.is_failed() and task_run.run_count == 1, task_run.state


@flow(name="statistics-only")
def statistics_only(config_path: str):
    """The flows' statistics task alone, as the nightly and train flows call it."""
    config = pipeline_config(config_path, None)
    return statistics_task(config, return_state=True)


def stats_files(workdir: Path) -> dict[str, int]:
    """The JSON statistics cached beside the store: name → mtime_ns."""
    return {p.name: p.stat().st_mtime_ns for p in (workdir / "stats").glob("norm-*.json")}


@pytest.mark.slow
def test_statistics_are_cached_across_processes(new_pipeline, flow_process):
    # given: a store, and the statistics computed once in this process
    pipeline = new_pipeline(days=5, arrived=4)
    ingest_flow(str(pipeline.config))
    first = statistics_only(str(pipeline.config))
    assert first.name == "Completed"
    first_files = stats_files(pipeline.workdir)

    # when: another process asks for them on the same committed data
    proc = flow_process(
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        "from test_flow_tasks import statistics_only; "
        f"print('STATE', statistics_only({str(pipeline.config)!r}).name)",
        cwd=pipeline.config.parent,
    )
    out, _ = proc.communicate(timeout=300)

    # then: it reads the statistics cached as JSON instead of recomputing
    assert proc.returncode == 0, out
    assert "STATE Completed" in out, out
    cached = stats_files(pipeline.workdir)
    assert len(cached) == 1 and cached == first_files, "the other process wrote them again"

    # and: once the store changes, the statistics are computed again
    pipeline.arrive(pipeline.archive[4])
    ingest_flow(str(pipeline.config))
    assert statistics_only(str(pipeline.config)).name == "Completed"
    assert len(stats_files(pipeline.workdir)) == 2

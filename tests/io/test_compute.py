"""Where Dask work runs (stpipe.io.compute): local threads without ``[dask] address``, the
cluster at the address otherwise (closed afterwards), and one line for an unreachable one."""

from __future__ import annotations

import gc
import socket
import weakref
from collections.abc import Iterator

import dask
import dask.array as da
import pytest
from distributed import Client, LocalCluster, get_client, get_task_stream

from stpipe.core.errors import StpipeError
from stpipe.io.compute import collector_skips_existing_objects, dask_context
from stpipe.io.settings import DaskSection


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.mark.parametrize("cfg", [None, DaskSection()])
def test_without_an_address_the_work_runs_on_local_threads(cfg: DaskSection | None) -> None:
    with dask_context(cfg) as client:
        assert client is None
        assert da.arange(10, chunks=3).sum().compute() == 45
        with pytest.raises(ValueError, match="No global client found"):
            get_client()


def test_with_an_address_the_work_runs_on_that_cluster_until_the_block_ends(
    cluster: LocalCluster,
) -> None:
    with dask_context(DaskSection(address=cluster.scheduler_address)) as client:
        assert isinstance(client, Client)
        assert get_client() is client
        with get_task_stream(client) as stream:
            total = dask.compute(da.arange(10, chunks=3).sum())[0]
        assert total == 45
        assert len(stream.data) >= 4, "the chunks' tasks ran on the cluster"
    assert client.status == "closed"


def test_an_unreachable_scheduler_is_one_line_naming_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(StpipeError) as info, dask_context(DaskSection(address=address)):
        pytest.fail("the block must not run")
    assert str(info.value).startswith(f"[dask] address: cannot reach scheduler {address}: ")
    assert "\n" not in str(info.value)


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_collector_skips_existing_objects_but_collects_new_garbage_until_the_block_ends():
    before = _Node()
    old = weakref.ref(before)
    with collector_skips_existing_objects():
        assert gc.get_freeze_count() >= 1
        del before
        gc.collect()
        assert old() is not None, "an object that existed before the block is not scanned"
        new = weakref.ref(_Node())
        gc.collect()
        assert new() is None, "garbage made inside the block is still collected"
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old() is None, "after the block the collector scans it again"


def test_collector_scans_everything_again_after_an_error():
    with pytest.raises(RuntimeError), collector_skips_existing_objects():
        raise RuntimeError("stop")
    assert gc.get_freeze_count() == 0

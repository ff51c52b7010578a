"""Ingest on an existing distributed cluster (``[dask] address``), worker processes."""

from __future__ import annotations

import pytest

from stpipe.io.ingestion import ingest
from stpipe.io.manifest import read_manifest
from stpipe.io.store import open_store

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster_address():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


def test_ingest_through_a_cluster_address_matches_the_local_ingest(
    cluster_address, source_data, write_feed, make_config, assert_same_values
):
    good, broken, later = write_feed(source_data)
    broken.write_bytes(b"not netcdf")
    config = make_config(source={"on_bad_file": "skip"}, dask={"address": cluster_address})

    report = ingest(config.ingest_job, progress=False)

    assert report.ingested == [good, later]
    ((path, reason),) = report.refused
    assert path == broken and reason, "the reader's SourceError must come back from a worker"
    ds = open_store(config.store_path).load()
    assert_same_values(ds, source_data.isel(time=[*range(24), *range(48, 72)]))
    assert [f.name for f in read_manifest(config.store_path).files] == [good.name, later.name]
    assert ingest(config.ingest_job, progress=False).ingested == []

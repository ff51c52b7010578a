"""The nightly flow end to end on a tiny feed: two nights, as the deployment would run them."""

from __future__ import annotations

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from stpipe.app.config import load_config
from stpipe.app.flows.nightly import nightly_flow
from stpipe.app.jobs import tracking_for
from stpipe.forecast.store import open_forecasts
from stpipe.io.store import open_store
from stpipe.tracking import registry

pytestmark = pytest.mark.slow


def test_second_night_ingests_the_new_day_then_trains_promotes_and_forecasts(
    tiny_pipeline, first_night
):
    # given: the first night ingested six days and registered the first champion
    config = load_config(tiny_pipeline.config)
    assert first_night.ingest.committed_length == 6 * 24, first_night.ingest.summary()
    assert first_night.training.promotion.promoted, first_night.training.summary()
    assert first_night.champion_version == first_night.training.version

    # when: the seventh day arrives and the next night runs
    tiny_pipeline.arrive(tiny_pipeline.archive[6])
    night = nightly_flow(str(tiny_pipeline.config))

    # then: the store grew by that day, and only that file was ingested
    assert [p.name for p in night.ingest.ingested] == ["era5_20240107.nc"]
    assert open_store(config.store_path).sizes["time"] == 7 * 24
    # a second version was registered and the registry's champion is the one reported
    assert night.training.version != first_night.training.version
    champion = registry.champion(tracking_for(config))
    assert champion is not None and str(champion.version) == night.champion_version
    # both nights' forecasts are in the store, the second from the newest complete window
    forecasts = open_forecasts(config.forecast_store)
    assert list(forecasts["init_time"].values) == [
        np.datetime64("2024-01-06T23:00", "ns"),
        np.datetime64("2024-01-07T23:00", "ns"),
    ]
    assert night.forecast.init_time == np.datetime64("2024-01-07T23:00", "ns")
    # the champion was scored against the baselines at every lead
    per_lead = night.per_lead()
    assert {"model", "persistence", "climatology"} <= per_lead.keys()
    assert all(len(v) == 2 and np.isfinite(v).all() for v in per_lead.values()), per_lead

    # and: each night left a markdown artifact under the pipeline's key, the newest first
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tiny-weather-nightly"])),
            sort=ArtifactSort.CREATED_DESC,
        )
    assert len(artifacts) == 2, [a.key for a in artifacts]
    markdown = artifacts[0].data
    assert markdown == night.markdown()
    assert "**Ingested** 1 file(s): era5_20240107.nc" in markdown
    assert f"| 3 | {per_lead['model'][1]:.4g} | " in markdown
    assert f"`{night.training.promotion.alias}`" in markdown

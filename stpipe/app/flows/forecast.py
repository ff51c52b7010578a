"""``forecast_flow``: the champion's batch forecast → forecast store, under the pipeline lock."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import flow

from stpipe.app.flows.common import (
    Overrides,
    forecast_task,
    ingest_task,
    pipeline_config,
    pipeline_lock,
)

if TYPE_CHECKING:
    from stpipe.app.jobs import ForecastOutcome


@flow(name="forecast")
def forecast_flow(
    config_path: str,
    overrides: Overrides | None = None,
    init_time: str | None = None,
    ingest_first: bool = False,
    wait_for_lock: bool = True,
) -> ForecastOutcome:
    """Forecast with the champion from the newest complete input window (or the one ending at
    ``init_time``, ISO), write it, and verify past forecasts whose truth has arrived.

    ``ingest_first``: ingest the files that arrived since the last run before forecasting
    (the morning deployment does). ``overrides`` and ``wait_for_lock`` as in the other flows.
    """
    config = pipeline_config(config_path, overrides)
    with pipeline_lock(config, wait=wait_for_lock):
        if ingest_first:
            ingest_task(config)
        return forecast_task(config, init_time)

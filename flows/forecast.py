"""Prefect entrypoint ``flows/forecast.py:forecast_flow`` for ``deployments/prefect.yaml``."""

from stpipe.app.flows.forecast import forecast_flow

__all__ = ["forecast_flow"]

"""Prefect entrypoint ``flows/ingest.py:ingest_flow`` for ``deployments/prefect.yaml``."""

from stpipe.app.flows.ingest import ingest_flow

__all__ = ["ingest_flow"]

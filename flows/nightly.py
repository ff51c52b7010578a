"""Prefect entrypoint ``flows/nightly.py:nightly_flow`` for ``deployments/prefect.yaml``."""

from stpipe.app.flows.nightly import nightly_flow

__all__ = ["nightly_flow"]

"""Prefect entrypoint ``flows/train.py:train_flow`` for ``deployments/prefect.yaml``."""

from stpipe.app.flows.train import train_flow

__all__ = ["train_flow"]

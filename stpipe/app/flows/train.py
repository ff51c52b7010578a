"""``train_flow``: statistics → train → evaluate → register → promote, under the pipeline lock."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import flow

from stpipe.app.flows.common import (
    Overrides,
    pipeline_config,
    pipeline_lock,
    statistics_task,
    training_task,
)

if TYPE_CHECKING:
    from stpipe.app.jobs import TrainingOutcome


@flow(name="train")
def train_flow(
    config_path: str, overrides: Overrides | None = None, wait_for_lock: bool = True
) -> TrainingOutcome:
    """Train the model of ``config_path`` on its store, register it, promote it if better.

    ``overrides``: config keys to replace for this run (``{"train.epochs": 2}``);
    ``wait_for_lock``: queue behind a running flow of the same pipeline (up to ``[pipeline]
    lock_timeout_s``; the default) or fail at once (False).
    """
    config = pipeline_config(config_path, overrides)
    with pipeline_lock(config, wait=wait_for_lock):
        statistics_task(config)
        return training_task(config)

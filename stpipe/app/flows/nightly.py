"""``nightly_flow``: ingest → statistics → train → evaluate → promote → forecast, one night.

Runs under the pipeline lock, so two nights of one pipeline never overlap, and ends with a
markdown artifact (key ``<pipeline>-nightly``) that the Prefect UI shows for each night:
files ingested, the champion against the baselines per lead, the promotion decision and the
forecast written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from stpipe.app.flows.common import (
    Overrides,
    evaluation_task,
    forecast_task,
    ingest_task,
    pipeline_config,
    pipeline_lock,
    statistics_task,
    training_task,
)
from stpipe.learn.lead_table import lead_table
from stpipe.learn.scores import headline, per_lead

if TYPE_CHECKING:
    import xarray as xr

    from stpipe.app.jobs import ForecastOutcome, TrainingOutcome
    from stpipe.io.ingestion import IngestReport

_LISTED_FILES = 10


@dataclass(frozen=True)
class NightReport:
    """What one night did; ``champion`` is the champion's and the baselines' scores on the
    test split (:mod:`stpipe.learn.scores`)."""

    pipeline: str
    ingest: IngestReport
    training: TrainingOutcome
    champion: xr.Dataset
    forecast: ForecastOutcome

    @property
    def champion_version(self) -> str:
        return self.forecast.model_version

    @property
    def per_lead_metric(self) -> str:
        """The metric the night reports: the evaluation's headline."""
        return headline(self.champion)

    def per_lead(self) -> dict[str, tuple[float, ...]]:
        """``per_lead_metric`` per lead of the champion (key ``"model"``) and each baseline."""
        return per_lead(self.champion, self.per_lead_metric)

    def markdown(self) -> str:
        ingest, promotion = self.ingest, self.training.promotion
        names = [p.name for p in ingest.ingested]
        listed = ", ".join(names[:_LISTED_FILES]) + (
            f" and {len(names) - _LISTED_FILES} more" if len(names) > _LISTED_FILES else ""
        )
        held = (
            "empty"
            if ingest.time_range is None
            else " … ".join(np.datetime_as_string(t, "m") for t in ingest.time_range)
        )
        lines = [
            f"# {self.pipeline}: nightly run",
            "",
            f"**Ingested** {len(names)} file(s){': ' + listed if names else ''}; "
            f"{len(ingest.skipped)} skipped, {len(ingest.refused)} refused. "
            f"Store holds {held} ({ingest.committed_length} steps, digest `{ingest.digest}`).",
        ]
        lines += [f"- refused `{p.name}`: {reason}" for p, reason in ingest.refused]
        if promotion.champion_version is None:
            champion = "no champion before"
        elif promotion.champion_score is None:
            champion = f"champion v{promotion.champion_version} not scored"
        else:
            champion = f"champion v{promotion.champion_version} {promotion.champion_score:.4g}"
        table = lead_table(self.champion, role="champion", model_version=self.champion_version)
        lines += [
            "",
            f"**Promotion**: v{self.training.version} → `{promotion.alias}` ({promotion.reason}); "
            f"{promotion.metric} on {promotion.window}: candidate {promotion.candidate_score:.4g}, "
            f"{champion}.",
            "",
            table.to_markdown(),
            "",
            f"**Forecast**: {self.forecast.summary()}.",
        ]
        return "\n".join(lines)


@flow(name="nightly")
def nightly_flow(
    config_path: str, overrides: Overrides | None = None, wait_for_lock: bool = True
) -> NightReport:
    """One night of the pipeline ``config_path``; returns what it did (also as an artifact).

    ``overrides``: config keys to replace for this run (``{"train.epochs": 2}``);
    ``wait_for_lock``: queue behind a running flow of the same pipeline (up to ``[pipeline]
    lock_timeout_s``; the default) or fail at once (False).
    """
    config = pipeline_config(config_path, overrides)
    with pipeline_lock(config, wait=wait_for_lock):
        ingested = ingest_task(config)
        statistics_task(config)
        training = training_task(config)
        champion = training.test if training.promotion.promoted else evaluation_task(config)
        forecast = forecast_task(config)
    report = NightReport(config.pipeline.name, ingested, training, champion, forecast)
    create_markdown_artifact(
        report.markdown(),
        key=re.sub(r"[^a-z0-9]+", "-", f"{config.pipeline.name}-nightly".lower()),
        description=f"{config.pipeline.name}: what the nightly run ingested, trained, promoted "
        "and forecast",
    )
    return report

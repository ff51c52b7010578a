"""The registered versions side by side: ``stpipe compare``.

One row per version of ``[mlflow] model_name``, newest first: its aliases, registration
date, run, the data it was trained on, the promotion metric per lead on its run's test
split (logged at training; for ``rmse_wmean``, the headline metric its run's tag
``stpipe.headline_metric`` names), the lead mean, and the promotion decision with its
validation score. Printed with rich; written as CSV or JSON. (The per-lead table of one
evaluation, model beside baselines, is :mod:`stpipe.learn.lead_table`.)
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from stpipe.core.metrics import METRICS
from stpipe.tracking.client import Tracking, tracking_errors
from stpipe.tracking.registry import TAG_PREFIX, aliases, per_lead_metric, versions
from stpipe.tracking.runs import HEADLINE_TAG

Cell = str | float | None
LONG_NAMES = {m.name: m.long_name for m in METRICS}


@dataclass(frozen=True)
class VersionTable:
    """``rows`` of ``columns`` (values: text, numbers, None for missing); ``per_lead`` the
    per-lead metrics behind ``metric`` that the rows show (one unless the grid changed)."""

    model_name: str
    metric: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, Cell], ...]
    per_lead: tuple[str, ...] = ()

    def to_rich(self) -> Table:
        words = " or ".join(LONG_NAMES.get(m, m) for m in self.per_lead) or self.metric
        table = Table(
            title=f"{self.model_name}: {words} per lead of each version on its run's test "
            f"split, and the mean over leads ([mlflow] metric {self.metric}; lower is better)"
        )
        for column in self.columns:
            numeric = column.startswith("+") or column in ("mean", "val score")
            table.add_column(column, justify="right" if numeric else "left")
        for row in self.rows:
            table.add_row(*(_text(row.get(c)) for c in self.columns))
        return table

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(
                {c: "" if row.get(c) is None else row[c] for c in self.columns} for row in self.rows
            )
        return path

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model_name": self.model_name,
            "metric": self.metric,
            "per_lead": list(self.per_lead),
            "columns": list(self.columns),
            "rows": [_jsonable(r) for r in self.rows],
        }
        path.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
        return path


def version_table(tracking: Tracking, *, metric: str) -> VersionTable:
    """The table of every version of the pipeline's registered model (module docstring)."""
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases(tracking).items():
        by_version.setdefault(version, []).append(alias)
    rows: list[dict[str, Cell]] = []
    leads: set[float] = set()
    shown: dict[str, None] = {}
    for mv in versions(tracking):
        tags = mv.tags or {}
        name, per_lead = _per_lead(
            tracking, mv.run_id, metric, step_s=float(tags.get(TAG_PREFIX + "time_step_s", 3600))
        )
        leads.update(per_lead)
        if name is not None and per_lead:
            shown[name] = None
        values = [v for v in per_lead.values() if math.isfinite(v)]
        rows.append(
            {
                "version": str(mv.version),
                "aliases": ", ".join(sorted(by_version.get(str(mv.version), []))),
                "registered": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime(
                    "%Y-%m-%d %H:%M"
                ),
                "run": mv.run_id,
                "data": f"{tags.get(TAG_PREFIX + 'data_start', '?')[:16]} … "
                f"{tags.get(TAG_PREFIX + 'data_end', '?')[:16]}",
                **{_lead_column(h): v for h, v in per_lead.items()},
                "mean": sum(values) / len(values) if values else None,
                "decision": tags.get(TAG_PREFIX + "decision"),
                "val score": _float(tags.get(TAG_PREFIX + "candidate_score")),
            }
        )
    columns = (
        "version",
        "aliases",
        "registered",
        "run",
        "data",
        *(_lead_column(h) for h in sorted(leads)),
        "mean",
        "decision",
        "val score",
    )
    return VersionTable(
        model_name=tracking.model_name,
        metric=metric,
        columns=columns,
        rows=tuple(rows),
        per_lead=tuple(shown),
    )


def _per_lead(
    tracking: Tracking, run_id: str, metric: str, *, step_s: float
) -> tuple[str | None, dict[float, float]]:
    """The per-lead metric behind ``metric`` on the run's test split and its values by lead
    (hours).

    ``rmse_wmean`` reads the headline metric the run's tag names (none for runs logged
    before the tag: no values); ``<name>_mean`` reads ``<name>``.
    """
    with tracking_errors(tracking.uri, f"read the metrics of run {run_id}"):
        run = tracking.client.get_run(run_id)
        name = per_lead_metric(metric, run.data.tags.get(HEADLINE_TAG))
        key = f"test_{name}_model"
        logged = name is not None and key in run.data.metrics
        history = tracking.client.get_metric_history(run_id, key) if logged else []
    return name, {m.step * step_s / 3600: m.value for m in history}


def _lead_column(hours: float) -> str:
    return f"+{hours:g}h"


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _text(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


def _jsonable(row: dict[str, Cell]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}

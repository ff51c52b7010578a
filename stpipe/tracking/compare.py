"""The registered versions side by side: ``stpipe compare``.

One row per version of ``[mlflow] model_name``, newest first: its aliases, registration
date, run, the data it was trained on, the windows of its split (``train_end``,
``val_window``, ``test_window``: its tags, half-open), the version it was fine-tuned from
(``init_from``), the promotion metric per lead on its run's test window (logged at
training; for ``rmse_wmean``, the headline metric its run's tag ``stpipe.headline_metric``
names), the lead mean, and the promotion decision with its score and the window it was scored on
(``scored on``: its ``val_window``, or its ``test_window`` after a refit, ``[train] refit``). With rolling windows each version's scores are on its own night's test
window; :func:`rescored` puts every version on one window instead: the scores of each
version re-scored on today's test window, beside each baseline and the best baseline per
lead there. Printed with rich; written as CSV or JSON (``{"rows": [...]}``, and
``"baselines"`` when re-scored). (The per-lead table of one evaluation, model beside
baselines, is :mod:`stpipe.learn.lead_table`.)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xarray as xr
from rich.markup import escape
from rich.table import Table

from stpipe.core.metrics import METRICS
from stpipe.learn.scores import (
    MODEL,
    best_baseline,
    forecaster_label,
    headline,
    lead_hours,
    per_lead,
)
from stpipe.tracking.client import Tracking, tracking_errors
from stpipe.tracking.registry import TAG_PREFIX, WINDOW_KEYS, aliases, per_lead_metric, versions
from stpipe.tracking.runs import HEADLINE_TAG

Cell = str | float | None
LONG_NAMES = {m.name: m.long_name for m in METRICS}
BEST = "best baseline"
INIT_FROM = "init_from"
NOTE = "note"


@dataclass(frozen=True)
class VersionTable:
    """``rows`` of ``columns`` (values: text, numbers, None for missing); ``per_lead`` the
    per-lead metrics behind ``metric`` that the rows show (one unless the grid changed).

    ``window``: the test window every row is scored on (:func:`rescored`), None when each
    row shows its own run's (its ``test_window``). ``baselines``: with ``window``, one row
    per baseline on it (``baseline``: its name in words, the lead columns, ``mean``) and
    last the best baseline per lead, whose ``best`` maps each lead column to that
    baseline's name.
    """

    model_name: str
    metric: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, Cell], ...]
    per_lead: tuple[str, ...] = ()
    window: str | None = None
    baselines: tuple[dict[str, Any], ...] = ()

    def to_rich(self) -> Table:
        words = " or ".join(LONG_NAMES.get(m, m) for m in self.per_lead) or self.metric
        units = f"([mlflow] metric {self.metric}; lower is better)"
        if self.window is None:
            title = (
                f"{self.model_name}: {words} per lead of each version on its own run's test "
                f"window (test_window), and the mean over leads {units}"
            )
        else:
            title = (
                f"{self.model_name}: {words} per lead of each version re-scored on the test "
                f"window {self.window} through its own model card, beside each baseline and "
                f"the best baseline per lead there, and the mean over leads {units}; "
                "train_end, val_window and promotion score are each version's own"
            )
        table = Table(title=escape(title))
        for column in self.columns:
            numeric = _is_lead(column) or column in ("mean", "promotion score")
            # Run ids and numbers stay whole (other columns wrap to fit): copied, not read.
            whole = numeric or column == "run"
            width = max([len(column), *(len(_text(r.get(column))) for r in self.rows)])
            table.add_column(
                column, justify="right" if numeric else "left", min_width=width if whole else None
            )
        for row in self.rows:
            table.add_row(*(_text(row.get(c), window=c in WINDOW_KEYS) for c in self.columns))
        if self.baselines and self.rows:
            table.add_section()
        for row in self.baselines:
            best = row.get("best", {})
            cells = {"version": row["baseline"]} | {
                c: _text(row.get(c)) + (f" {best[c]}" if c in best else "")
                for c in self.columns
                if _is_lead(c) or c == "mean"
            }
            table.add_row(*(cells.get(c, "") for c in self.columns))
        return table

    def to_csv(self, path: str | Path) -> Path:
        """The rows, then (re-scored) a row per baseline named in ``version``; the best
        baseline's names per lead go to an extra column ``best``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = [*self.columns, *(["best"] if self.baselines else [])]
        baselines = [b | {"version": b["baseline"], "best": _best_text(b)} for b in self.baselines]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(
                {c: "" if row.get(c) is None else row[c] for c in columns}
                for row in [*self.rows, *baselines]
            )
        return path

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model_name": self.model_name,
            "metric": self.metric,
            "per_lead": list(self.per_lead),
            "window": self.window,
            "columns": list(self.columns),
            "rows": [_jsonable(r) for r in self.rows],
            "baselines": [_jsonable(b) for b in self.baselines],
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
                **{key: tags.get(TAG_PREFIX + key) for key in (*WINDOW_KEYS, INIT_FROM)},
                **_lead_cells(per_lead),
                "decision": tags.get(TAG_PREFIX + "decision"),
                "promotion score": _float(tags.get(TAG_PREFIX + "candidate_score")),
                # versions from before the tag were all scored on validation
                "scored on": tags.get(TAG_PREFIX + "promotion_window", "validation"),
            }
        )
    return VersionTable(
        model_name=tracking.model_name,
        metric=metric,
        columns=_columns(leads),
        rows=tuple(rows),
        per_lead=tuple(shown),
    )


def rescored(
    table: VersionTable,
    scored: Mapping[str, xr.Dataset | str],
    *,
    window: str,
    reference: xr.Dataset,
) -> VersionTable:
    """``table`` with each version's per-lead values and mean replaced by its evaluation on
    the test window ``window`` (``scored``: version → the evaluation, or why it could not be
    scored, shown in the column ``note``), and the baselines of the evaluation
    ``reference`` (scored with baselines on the same window) as :attr:`VersionTable.baselines`.
    """
    rows: list[dict[str, Cell]] = []
    leads: set[float] = set()
    shown: dict[str, None] = {}
    for row in table.rows:
        result = scored.get(str(row["version"]), "not scored")
        values: dict[float, float] = {}
        if isinstance(result, xr.Dataset):
            name = per_lead_metric(table.metric, headline(result)) or headline(result)
            shown[name] = None
            values = dict(zip(lead_hours(result), per_lead(result, name)[MODEL], strict=True))
        leads.update(values)
        kept = {k: v for k, v in row.items() if not _is_lead(k) and k != "mean"}
        note = result if isinstance(result, str) else ""
        rows.append(kept | {"test_window": window, **_lead_cells(values), NOTE: note})
    notes = (NOTE,) if any(r[NOTE] for r in rows) else ()
    return replace(
        table,
        columns=_columns(leads) + notes,
        rows=tuple(rows),
        per_lead=tuple(shown),
        window=window,
        baselines=_baseline_rows(reference, table.metric),
    )


def _baseline_rows(evaluation: xr.Dataset, metric: str) -> tuple[dict[str, Any], ...]:
    """Each baseline of ``evaluation`` and the best per lead, on the per-lead metric that
    ``metric`` averages (rows of :attr:`VersionTable.baselines`)."""
    name = per_lead_metric(metric, headline(evaluation)) or headline(evaluation)
    hours = lead_hours(evaluation)
    rows: list[dict[str, Any]] = [
        {"baseline": forecaster_label(f), **_lead_cells(dict(zip(hours, values, strict=True)))}
        for f, values in per_lead(evaluation, name).items()
        if f != MODEL
    ]
    best_names, best_values = best_baseline(evaluation, name)
    best = {_lead_column(h): forecaster_label(b) for h, b in zip(hours, best_names, strict=True)}
    rows.append(
        {"baseline": BEST, **_lead_cells(dict(zip(hours, best_values, strict=True))), "best": best}
    )
    return tuple(rows)


def _columns(leads: set[float]) -> tuple[str, ...]:
    return (
        "version",
        "aliases",
        "registered",
        "run",
        "data",
        *WINDOW_KEYS,
        INIT_FROM,
        *(_lead_column(h) for h in sorted(leads)),
        "mean",
        "decision",
        "promotion score",
        "scored on",
    )


def _lead_cells(values: Mapping[float, float]) -> dict[str, Cell]:
    """Lead columns (``+1h`` …) of ``values`` (hours → value) and ``mean`` of the finite ones."""
    finite = [v for v in values.values() if math.isfinite(v)]
    return {_lead_column(h): v for h, v in values.items()} | {
        "mean": sum(finite) / len(finite) if finite else None
    }


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


def _is_lead(column: str) -> bool:
    return column.startswith("+") and column.endswith("h")


def _best_text(row: Mapping[str, Any]) -> str:
    return "; ".join(f"{lead} {name}" for lead, name in row.get("best", {}).items())


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _text(value: Cell, *, window: bool = False) -> str:
    """A cell for people: numbers to 4 digits; ``window``: a window's midnights as dates."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return value.replace("T00:00:00", "") if window else value


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}

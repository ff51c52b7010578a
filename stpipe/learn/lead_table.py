"""The per-lead table of one evaluation, for people: the model beside every baseline, the
best baseline at each lead and the model's margin over it.

:func:`lead_table` builds it once; :meth:`LeadTable.to_rich` prints it in a terminal
(``stpipe evaluate``, the demo summary, ``benchmarks/bench_quality.py``) and
:meth:`LeadTable.to_markdown` writes it into the nightly Prefect artifact. Forecasters are
named in words, values are in the metric's units, and the notes under the table define
the metric and the margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import xarray as xr
from rich.table import Table

from stpipe.core.errors import ConfigError
from stpipe.learn.scores import (
    MODEL,
    best_baseline,
    forecaster_label,
    headline,
    lead_hours,
    margins,
    metric_attrs,
    metric_label,
    model_label,
    per_lead,
)

BEST = "best baseline"


@dataclass(frozen=True)
class LeadTable:
    """``rows`` of formatted cells under ``columns``; ``notes`` define what they show."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...]

    def to_rich(self) -> Table:
        table = Table(
            title=self.title,
            caption="\n".join(self.notes),
            title_justify="left",
            caption_justify="left",
        )
        for i, column in enumerate(self.columns):
            table.add_column(
                column,
                justify="left" if column == BEST else "right",
                style="bold" if i == 1 else "",  # the model
            )
        for row in self.rows:
            table.add_row(*row)
        return table

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|---" * len(self.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join([*lines, "", *(f"- {note}" for note in self.notes)])


def lead_table(
    evaluation: xr.Dataset,
    *,
    metric: str | None = None,
    role: str = MODEL,
    model_version: str | None = None,
) -> LeadTable:
    """The per-lead table of ``metric`` (an error, lower is better; default the headline).

    Columns: lead (h), the model (``role`` and version, e.g. "champion v3"; the version
    defaults to the evaluation's ``model_version``), each baseline, and, with baselines,
    the best baseline at that lead, its value, and the margin 1 − model / best baseline.
    """
    metric = metric or headline(evaluation)
    attrs = metric_attrs(evaluation, metric)
    if attrs["better"] != "lower":
        raise ConfigError(f"the per-lead table compares errors (lower is better); not {metric}")
    values = per_lead(evaluation, metric)
    label = model_label(evaluation, role=role, version=model_version)
    others = [f for f in values if f != MODEL]
    name = attrs["long_name"]
    columns = ["lead (h)", label, *(forecaster_label(f) for f in others)]
    notes = [_definition(evaluation, name, attrs["units"])]
    best_names: tuple[str, ...] = ()
    if others:
        columns += [BEST, "best value", "margin"]
        best_names, best_values = best_baseline(evaluation, metric)
        margin = margins(evaluation, metric)
        notes.append(
            f"margin = 1 − {label} / best baseline, on the {name} at each lead (a ratio of "
            f"{name}s, not the MSE-based skill score): > 0 where the {label} beats every "
            "baseline at that lead."
        )
    rows = []
    for i, hours in enumerate(lead_hours(evaluation)):
        cells = [f"{hours:g}", *(_number(values[f][i]) for f in [MODEL, *others])]
        if best_names:
            cells += [forecaster_label(best_names[i]), _number(best_values[i]), f"{margin[i]:+.1%}"]
        rows.append(tuple(cells))
    title = (
        f"{label[:1].upper()}{label[1:]} on the {evaluation.attrs['split']} split "
        f"({evaluation.attrs['n_samples']} samples): {metric_label(evaluation, metric)} per lead"
    )
    return LeadTable(title=title, columns=tuple(columns), rows=tuple(rows), notes=tuple(notes))


def _definition(evaluation: xr.Dataset, name: str, units: str) -> str:
    variables = [str(v) for v in evaluation["variable"].values]
    scope = f"of {variables[0]}" if len(variables) == 1 else "pooled over " + ", ".join(variables)
    unit_words = "dimensionless" if units == "1" else f"in {units}" if units else "units unknown"
    return f"{name} {scope}, {unit_words}; lower is better."


def _number(value: float) -> str:
    return f"{value:.4g}"

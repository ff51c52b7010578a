"""The evaluation result: an ``xarray.Dataset`` of scores, read and written here.

Layout (built by :func:`scores_dataset`):

- dims ``forecaster`` (``"model"``, then the baselines), ``lead``, ``variable`` (the
  target variables);
- coords ``lead`` (lead time in hours, attr ``units = "h"``), ``lead_step`` (along
  ``lead``: the lead in time steps of the store), ``variable_units`` (along ``variable``);
- data variables (float64), two per metric of :mod:`stpipe.core.metrics`: ``<name>``
  (forecaster, lead, variable) and ``<name>_pooled`` (forecaster, lead), pooled over the
  variables as the metric defines; attrs ``long_name``, ``units``, ``better`` (``"lower"``
  or ``"higher"``) and ``forecasters`` (those the metric scores; the others are NaN);
- attrs ``split``, ``n_samples``, ``lead_unit`` (``"h"``), ``headline`` (the metric that
  tables and plots lead with, :func:`stpipe.core.metrics.headline_metric`) and, where
  known, ``model_version`` (the registered version evaluated as ``"model"``) and
  ``climatology`` (what the climatology baselines' slots are, e.g. ``"day of year × hour,
  ±30-day smoothing"``: :attr:`stpipe.models.climatology.Climatology.description`).

:func:`to_json` writes (``stpipe evaluate --json``, the ``evaluation/<split>.json``
artifact of a training run)::

    {"leads": [1.0, 3.0, 6.0, 12.0], "lead_unit": "h", "lead_steps": [1, 3, 6, 12],
     "split": "test", "variables": ["t2m"], "variable_units": {"t2m": "K"},
     "n_samples": 412, "headline": "rmse_lat_weighted", "climatology": "hour of day",
     "forecasters": ["model", "persistence", "climatology", "persistence_clim_change",
                     "advection"],
     "metrics": {"rmse": {"model": [...], "persistence": [...], "climatology": [...],
                          "persistence_clim_change": [...], "advection": [...]},
                 "mae": {...}, "skill_vs_persistence": {...}, "skill_vs_climatology": {...},
                 "rmse_lat_weighted": {...}, "acc": {...},        # lat/lon grids
                 "mse_openstl": {...}, "mae_openstl": {...}},     # cell grids (traffic)
     "metric_attrs": {"rmse": {"long_name": "RMSE", "units": "K", "better": "lower"}, ...},
     "summary": {"rmse_mean": {...}, "rmse_wmean": {...}, ...},
     "per_variable": {"t2m": {"rmse": {...}, ...}}}

Each list has one value per lead. ``metrics`` holds the pooled values, ``per_variable``
the values of each variable; a forecaster a metric does not score is left out (ACC of the
climatology itself). ``summary`` averages each list over the leads; ``rmse_wmean`` is the
mean over leads of the headline metric (the default promotion metric). Non-finite values
are written as ``null``. Human output names forecasters in words (:func:`forecaster_label`);
JSON and MLflow keep the code names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from stpipe.core.errors import ConfigError

MODEL = "model"
HEADLINE_MEAN = "rmse_wmean"
FORECASTER_WORDS = {
    "persistence_clim_change": "persistence + climatological change",
    "advection": "advected anomaly + climatology",
}
DIMS = ("forecaster", "lead", "variable")
OPTIONAL_ATTRS = ("model_version", "climatology")  # attrs the JSON carries where known

PerLead = tuple[float, ...]
Table = dict[str, dict[str, PerLead]]  # metric → forecaster → per lead


@dataclass(frozen=True)
class MetricScores:
    """One metric's scores: forecaster → [L, V] per variable and [L] pooled, and its attrs
    (``units`` already resolved for the variables scored, e.g. ``"K"`` or ``"1"``)."""

    per_variable: Mapping[str, np.ndarray]
    pooled: Mapping[str, np.ndarray]
    long_name: str
    units: str
    better: str


def scores_dataset(
    scores: Mapping[str, MetricScores],
    *,
    forecasters: Sequence[str],
    lead_hours: Sequence[float],
    lead_steps: Sequence[int],
    variables: Sequence[str],
    variable_units: Sequence[str],
    split: str,
    n_samples: int,
    headline: str,
) -> xr.Dataset:
    """The Dataset of the module docstring from each metric's scores."""
    if headline not in scores:
        raise ConfigError(f"headline metric {headline!r} is not among {sorted(scores)}")
    shape = (len(forecasters), len(lead_hours), len(variables))
    data_vars = {}
    for name, metric in scores.items():
        per_variable, pooled = np.full(shape, np.nan), np.full(shape[:2], np.nan)
        for i, forecaster in enumerate(forecasters):
            if forecaster in metric.pooled:
                per_variable[i] = metric.per_variable[forecaster]
                pooled[i] = metric.pooled[forecaster]
        attrs = {
            "long_name": metric.long_name,
            "units": metric.units,
            "better": metric.better,
            "forecasters": [f for f in forecasters if f in metric.pooled],
        }
        data_vars[name] = (DIMS, per_variable, attrs)
        data_vars[f"{name}_pooled"] = (DIMS[:2], pooled, attrs)
    coords = {
        "forecaster": list(forecasters),
        "lead": ("lead", np.asarray(lead_hours, dtype=np.float64), {"units": "h"}),
        "lead_step": ("lead", np.asarray(lead_steps, dtype=np.int64)),
        "variable": list(variables),
        "variable_units": ("variable", list(variable_units)),
    }
    attrs = {
        "split": split,
        "n_samples": int(n_samples),
        "lead_unit": "h",
        "headline": headline,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def metric_names(evaluation: xr.Dataset) -> list[str]:
    """The metrics of ``evaluation``, in the order they were scored."""
    return [str(name) for name, da in evaluation.data_vars.items() if da.dims == DIMS]


def headline(evaluation: xr.Dataset) -> str:
    """The metric tables and plots lead with."""
    return str(evaluation.attrs["headline"])


def lead_hours(evaluation: xr.Dataset) -> PerLead:
    return tuple(float(h) for h in evaluation["lead"].values)


def baselines(evaluation: xr.Dataset) -> tuple[str, ...]:
    return tuple(str(f) for f in evaluation["forecaster"].values if f != MODEL)


def metric_attrs(evaluation: xr.Dataset, metric: str) -> dict[str, Any]:
    """``long_name``, ``units``, ``better``, ``forecasters`` of ``metric``; ConfigError
    naming the metrics there are if ``evaluation`` has no ``metric``."""
    if metric not in metric_names(evaluation):
        raise ConfigError(
            f"metric {metric!r} is not in this evaluation; it has {metric_names(evaluation)}"
        )
    return dict(evaluation[metric].attrs)


def metric_label(evaluation: xr.Dataset, metric: str) -> str:
    """``metric`` in words with its units, e.g. "latitude-weighted RMSE (K)"."""
    attrs = metric_attrs(evaluation, metric)
    units = attrs["units"]
    return f"{attrs['long_name']} ({units})" if units and units != "1" else attrs["long_name"]


def per_lead(evaluation: xr.Dataset, metric: str) -> dict[str, PerLead]:
    """Forecaster → pooled values of ``metric`` per lead (only the forecasters it scores)."""
    attrs = metric_attrs(evaluation, metric)
    return _by_forecaster(evaluation[f"{metric}_pooled"], attrs)


def metrics_table(evaluation: xr.Dataset) -> Table:
    """Every metric's :func:`per_lead` values."""
    return {name: per_lead(evaluation, name) for name in metric_names(evaluation)}


def summary(evaluation: xr.Dataset) -> dict[str, dict[str, float]]:
    """Each metric averaged over leads (``rmse_mean`` …) and ``rmse_wmean``, the headline's."""
    table = metrics_table(evaluation)
    out = {f"{name}_mean": _lead_means(by) for name, by in table.items()}
    out[HEADLINE_MEAN] = _lead_means(table[headline(evaluation)])
    return out


def best_baseline(evaluation: xr.Dataset, metric: str) -> tuple[tuple[str, ...], PerLead]:
    """Per lead, the best baseline on ``metric`` (lowest or highest, as the metric's
    ``better`` says) and its value. ConfigError if the evaluation has no baselines."""
    attrs = metric_attrs(evaluation, metric)
    rows = {k: v for k, v in per_lead(evaluation, metric).items() if k != MODEL}
    if not rows:
        raise ConfigError("this evaluation was run without baselines")
    pick = min if attrs["better"] == "lower" else max
    names, values = [], []
    for i in range(len(evaluation["lead"])):
        name = pick(rows, key=lambda k: _orderable(rows[k][i], attrs["better"]))
        names.append(name)
        values.append(rows[name][i])
    return tuple(names), tuple(values)


def margins(evaluation: xr.Dataset, metric: str) -> PerLead:
    """Per lead, 1 − model / best baseline on the error ``metric`` (> 0: the model beats
    every baseline at that lead). ConfigError for a metric where higher is better."""
    if metric_attrs(evaluation, metric)["better"] != "lower":
        raise ConfigError(f"the margin compares errors (lower is better); {metric} is not one")
    model = per_lead(evaluation, metric)[MODEL]
    _, best = best_baseline(evaluation, metric)
    return tuple(1.0 - m / b if b else math.nan for m, b in zip(model, best, strict=True))


def forecaster_label(name: str, *, model: str = MODEL) -> str:
    """A forecaster in words: ``model`` for the model (e.g. "champion v3"); baselines as
    "persistence", "climatology", "persistence + climatological change", "advected anomaly
    + climatology"."""
    return model if name == MODEL else FORECASTER_WORDS.get(name, name.replace("_", " "))


def model_label(evaluation: xr.Dataset, *, role: str = MODEL, version: str | None = None) -> str:
    """``role`` with the model version (``version``, else the evaluation's), e.g. "champion v3"."""
    version = version or evaluation.attrs.get("model_version")
    return f"{role} v{version}" if version else role


def to_dict(evaluation: xr.Dataset) -> dict[str, Any]:
    """The JSON form of the module docstring (NaN → None)."""
    names = metric_names(evaluation)
    variables = [str(v) for v in evaluation["variable"].values]
    raw = {
        "leads": list(lead_hours(evaluation)),
        "lead_unit": evaluation.attrs["lead_unit"],
        "lead_steps": [int(s) for s in evaluation["lead_step"].values],
        "split": evaluation.attrs["split"],
        "variables": variables,
        "variable_units": dict(
            zip(variables, evaluation["variable_units"].values.tolist(), strict=True)
        ),
        "n_samples": int(evaluation.attrs["n_samples"]),
        "headline": headline(evaluation),
        **{k: evaluation.attrs[k] for k in OPTIONAL_ATTRS if k in evaluation.attrs},
        "forecasters": [str(f) for f in evaluation["forecaster"].values],
        "metrics": metrics_table(evaluation),
        "metric_attrs": {
            n: {k: evaluation[n].attrs[k] for k in ("long_name", "units", "better")} for n in names
        },
        "summary": summary(evaluation),
        "per_variable": {
            v: {
                n: _by_forecaster(evaluation[n].sel(variable=v), evaluation[n].attrs) for n in names
            }
            for v in variables
        },
    }
    return _jsonable(raw)


def to_json(evaluation: xr.Dataset, path: str | Path) -> Path:
    """Write :func:`to_dict` as JSON (strict: NaN → null) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(evaluation), indent=1, allow_nan=False) + "\n")
    return path


def from_dict(raw: Mapping[str, Any]) -> xr.Dataset:
    """The Dataset back from :func:`to_dict`'s form."""
    variables = raw["variables"]

    def values(by_forecaster: Mapping[str, list]) -> dict[str, np.ndarray]:
        return {k: np.array([_nan(x) for x in v]) for k, v in by_forecaster.items()}

    scores = {
        name: MetricScores(
            per_variable={
                f: np.stack([values(raw["per_variable"][v][name])[f] for v in variables], -1)
                for f in by_forecaster
            },
            pooled=values(by_forecaster),
            **raw["metric_attrs"][name],
        )
        for name, by_forecaster in raw["metrics"].items()
    }
    evaluation = scores_dataset(
        scores,
        forecasters=raw["forecasters"],
        lead_hours=raw["leads"],
        lead_steps=raw["lead_steps"],
        variables=variables,
        variable_units=[raw["variable_units"][v] for v in variables],
        split=raw["split"],
        n_samples=raw["n_samples"],
        headline=raw["headline"],
    )
    evaluation.attrs |= {k: raw[k] for k in OPTIONAL_ATTRS if k in raw}
    return evaluation


def from_json(path: str | Path) -> xr.Dataset:
    return from_dict(json.loads(Path(path).read_text()))


def _by_forecaster(values: xr.DataArray, attrs: Mapping[str, Any]) -> dict[str, PerLead]:
    """(forecaster, lead) values → forecaster → per lead, for the forecasters scored."""
    return {
        f: tuple(float(x) for x in values.sel(forecaster=f).values) for f in attrs["forecasters"]
    }


def _orderable(value: float, better: str) -> float:
    """NaN sorts last for either direction (a baseline without a score is never best)."""
    if math.isnan(value):
        return math.inf if better == "lower" else -math.inf
    return value


def _lead_means(by_forecaster: Mapping[str, PerLead]) -> dict[str, float]:
    return {k: float(np.mean(v)) if v else math.nan for k, v in by_forecaster.items()}


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

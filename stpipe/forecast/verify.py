"""Scoring past forecasts once the truth for all their leads is in the store.

A forecast of init time t is verifiable when the store holds every valid time t + lead;
its scores are per target variable and lead, in physical units, over all grid cells with
a finite truth, computed by the evaluation's own metrics (:data:`stpipe.core.metrics.METRICS`)
on the whole grid as one sample: ``rmse`` is the headline metric
(:func:`stpipe.core.metrics.headline_metric`: RMSE weighted by cos(lat)/mean(cos(lat)) on
lat/lon grids, the plain RMSE on cell grids), ``mae`` the unweighted MAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from stpipe.core.grid import is_latlon, latitude_weights, spatial_dims
from stpipe.core.metrics import MAE, METRICS, ScoredBatch, headline_metric, patch_weights
from stpipe.forecast.store import INIT, LEAD, VALID

FORECASTER = "forecast"


@dataclass(frozen=True)
class Verification:
    """The scores of one forecast: ``scores`` maps ``<key>_<variable>_lead<steps>`` to a
    value (keys :func:`verification_metrics`); ``run_id`` and ``model_version`` say which
    model made the forecast."""

    init_time: np.datetime64
    run_id: str
    model_version: str
    scores: dict[str, float]


def verification_metrics(*, latlon: bool) -> dict[str, str]:
    """Score key → name of the metric in :data:`stpipe.core.metrics.METRICS` it reports."""
    return {"rmse": headline_metric(latlon=latlon), "mae": MAE.name}


def verifiable_inits(forecasts: xr.Dataset, truth_times: np.ndarray) -> np.ndarray:
    """Init times of ``forecasts`` whose every valid time is in ``truth_times``."""
    valid = forecasts[VALID].values.astype("datetime64[ns]")
    covered = np.isin(valid, np.asarray(truth_times, dtype="datetime64[ns]")).all(axis=1)
    return forecasts[INIT].values[covered]


def verify_forecast(forecast: xr.Dataset, truth: xr.Dataset, *, step_s: int) -> Verification:
    """Score one init time of ``forecast`` (dims ``(lead_time, <rows>, <cols>)`` after
    selecting it) against the canonical store ``truth``."""
    rows, _ = spatial_dims(truth)
    latlon = is_latlon(truth)
    variables = [str(name) for name in forecast.data_vars]
    valid = forecast[VALID].values.astype("datetime64[ns]")
    leads = (forecast[LEAD].values / np.timedelta64(step_s, "s")).astype(int)
    # One sample [1, L, V, ny, nx] covering the grid, as the evaluation's batches of patches.
    observed = np.stack([truth[v].sel(time=valid).values for v in variables], axis=1)
    predicted = np.stack([forecast[v].values for v in variables], axis=1)
    target = torch.from_numpy(observed)[None]
    weights = None
    if latlon:
        grid_weights = torch.from_numpy(latitude_weights(truth[rows].values))
        weights = patch_weights(grid_weights, torch.zeros(1, dtype=torch.long), target.shape[-2])
    batch = ScoredBatch(
        {FORECASTER: torch.from_numpy(predicted)[None]},
        target,
        torch.ones_like(target),
        weights=weights,
    )
    metrics = {m.name: m for m in METRICS}
    scores: dict[str, float] = {}
    for key, name in verification_metrics(latlon=latlon).items():
        metric = metrics[name]
        values = metric.per_variable(metric.batch_sums(batch, FORECASTER))  # [L, V]
        for k, lead in enumerate(leads):
            for j, variable in enumerate(variables):
                scores[f"{key}_{variable}_lead{lead}"] = float(values[k, j])
    return Verification(
        init_time=np.datetime64(forecast[INIT].values, "ns"),
        run_id=str(forecast["run_id"].values),
        model_version=str(forecast["model_version"].values),
        scores=scores,
    )

"""Scoring past forecasts once the truth for all their leads is in the store.

A forecast of init time t is verifiable when the store holds every valid time t + lead;
its scores are per target variable and lead, in physical units, over all grid cells with
a finite truth: RMSE (latitude-weighted on lat/lon grids, cos(lat)/mean as in
:func:`stpipe.core.grid.latitude_weights`) and MAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from stpipe.core.grid import is_latlon, latitude_weights, spatial_dims
from stpipe.forecast.store import INIT, LEAD, VALID


@dataclass(frozen=True)
class Verification:
    """The scores of one forecast: ``scores`` maps ``<metric>_<variable>_lead<steps>`` to a
    value; ``run_id`` and ``model_version`` say which model made the forecast."""

    init_time: np.datetime64
    run_id: str
    model_version: str
    scores: dict[str, float]


def verifiable_inits(forecasts: xr.Dataset, truth_times: np.ndarray) -> np.ndarray:
    """Init times of ``forecasts`` whose every valid time is in ``truth_times``."""
    valid = forecasts[VALID].values.astype("datetime64[ns]")
    covered = np.isin(valid, np.asarray(truth_times, dtype="datetime64[ns]")).all(axis=1)
    return forecasts[INIT].values[covered]


def verify_forecast(forecast: xr.Dataset, truth: xr.Dataset, *, step_s: int) -> Verification:
    """Score one init time of ``forecast`` (dims ``(lead_time, <rows>, <cols>)`` after
    selecting it) against the canonical store ``truth``."""
    rows, _ = spatial_dims(truth)
    weights = (
        latitude_weights(truth[rows].values) if is_latlon(truth) else np.ones(truth.sizes[rows])
    )[:, None]
    valid = forecast[VALID].values.astype("datetime64[ns]")
    leads = (forecast[LEAD].values / np.timedelta64(step_s, "s")).astype(int)
    scores: dict[str, float] = {}
    for name in forecast.data_vars:
        observed = truth[name].sel(time=valid).values.astype(np.float64)  # [L, ny, nx]
        error = forecast[name].values.astype(np.float64) - observed
        finite = np.isfinite(observed)
        for k, lead in enumerate(leads):
            e, m = error[k], finite[k]
            w = np.where(m, weights, 0.0)
            scores[f"rmse_{name}_lead{lead}"] = float(
                np.sqrt(np.sum(w * np.where(m, e, 0) ** 2) / np.sum(w))
            )
            scores[f"mae_{name}_lead{lead}"] = float(np.abs(e[m]).mean())
    return Verification(
        init_time=np.datetime64(forecast[INIT].values, "ns"),
        run_id=str(forecast["run_id"].values),
        model_version=str(forecast["model_version"].values),
        scores=scores,
    )

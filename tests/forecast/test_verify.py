"""Verification scores a forecast with the evaluation's own metrics: the same arrays scored
as the evaluation scores them (patches in batches, sums added up) give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from stpipe.core.grid import is_latlon, latitude_weights, spatial_dims
from stpipe.core.metrics import (
    METRICS,
    MetricSums,
    ScoredBatch,
    ScoringSetup,
    headline_metric,
    patch_weights,
)
from stpipe.forecast.verify import verification_metrics, verify_forecast
from stpipe.testing import make_dataset

VARIABLES = ("t2m", "u10")
LEADS = (1, 3)
ROWS_PER_PATCH = 3  # the 6 grid rows scored as two patches, one per batch


def one_forecast(truth: xr.Dataset, seed: int) -> xr.Dataset:
    """A forecast of init time ``truth.time[0]``: the truth at each lead plus noise, one
    predicted cell NaN where the truth is NaN too (left out), lead-dim first."""
    rows, cols = spatial_dims(truth)
    init = truth["time"].values[0]
    valid = init + np.array(LEADS) * np.timedelta64(1, "h")
    rng = np.random.default_rng(seed)
    data = {
        v: (
            ("lead_time", rows, cols),
            truth[v].sel(time=valid).values + rng.normal(0, 1 + k, (len(LEADS), 6, 5)),
        )
        for k, v in enumerate(VARIABLES)
    }
    return xr.Dataset(
        data,
        coords={
            "init_time": init,
            "lead_time": ("lead_time", np.array(LEADS) * np.timedelta64(3600, "s")),
            "valid_time": ("lead_time", valid),
            rows: truth[rows].values,
            cols: truth[cols].values,
            "run_id": "run1",
            "model_version": "1",
        },
    ).astype(np.float32)


def evaluation_scores(forecast: xr.Dataset, truth: xr.Dataset) -> dict[str, np.ndarray]:
    """Metric name → [L, V] as the evaluation computes it: patches of the grid in batches,
    latitude weights cropped to each patch, sums added over the batches."""
    rows, _ = spatial_dims(truth)
    latlon = is_latlon(truth)
    valid = forecast["valid_time"].values
    target = np.stack([truth[v].sel(time=valid).values for v in VARIABLES], axis=1)[None]
    pred = np.stack([forecast[v].values for v in VARIABLES], axis=1)[None]
    grid_weights = torch.as_tensor(latitude_weights(truth[rows].values))
    scored = [m for m in METRICS if m.name in {"rmse", "mae", headline_metric(latlon=latlon)}]
    sums = MetricSums(scored, ScoringSetup(latlon=latlon, forecasters=("model",)))
    for row0 in range(0, target.shape[-2], ROWS_PER_PATCH):
        patch = slice(row0, row0 + ROWS_PER_PATCH)
        y = torch.as_tensor(target[..., patch, :])
        start = torch.tensor([row0])
        weights = patch_weights(grid_weights, start, ROWS_PER_PATCH) if latlon else None
        sums.update(
            ScoredBatch(
                {"model": torch.as_tensor(pred[..., patch, :])},
                y,
                torch.ones_like(y),
                weights=weights,
            )
        )
    return {name: sums.per_variable(name, "model").numpy() for name in sums.scored}


@pytest.mark.parametrize("latlon", [True, False])
def test_verification_equals_the_evaluation_metrics_on_the_same_arrays(latlon: bool) -> None:
    truth = make_dataset(nt=6, ny=6, nx=5, variables=VARIABLES, latlon=latlon, seed=3)
    truth["t2m"][3, 2, 1] = np.nan  # a missing truth value at lead 3: the cell drops out
    forecast = one_forecast(truth, seed=4)

    scores = verify_forecast(forecast, truth, step_s=3600).scores
    expected = evaluation_scores(forecast, truth)

    keys = verification_metrics(latlon=latlon)
    assert keys == {"rmse": headline_metric(latlon=latlon), "mae": "mae"}
    assert len(scores) == len(keys) * len(LEADS) * len(VARIABLES)
    for key, name in keys.items():
        for k, lead in enumerate(LEADS):
            for j, variable in enumerate(VARIABLES):
                value = scores[f"{key}_{variable}_lead{lead}"]
                assert np.isfinite(value)
                assert value == pytest.approx(expected[name][k, j], rel=1e-12), (key, lead)
    if latlon:  # the weights matter: the weighted RMSE is not the plain one
        assert scores["rmse_t2m_lead1"] != pytest.approx(expected["rmse"][0, 0], rel=1e-6)

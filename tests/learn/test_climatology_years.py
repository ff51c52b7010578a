"""Climatology on multi-year archives: by day of year (smoothed ±30 days) it follows the
annual cycle a time-of-day climatology averages away, on a held-out year; a store whose
train split spans a year gets it from 'auto', and the evaluation says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from stpipe.app.config import config_from_dict
from stpipe.app.jobs import data_context
from stpipe.io.ingestion import ingest
from stpipe.learn.context import build_forecaster
from stpipe.learn.evaluate import evaluate_model
from stpipe.models.climatology import Climatology, ClimatologyLookup, climatology_period
from stpipe.testing import make_dataset

ANNUAL_K, DIURNAL_K, AR_COEFF = 10.0, 3.0, 0.9  # noise: AR(1) per step, unit variance


def annual_diurnal_noise(*, days: int, step: str, start: str, size: int = 4) -> xr.Dataset:
    """t2m [K] = 280 + cell offset + 10 cos(annual, phase per cell) + 3 cos(diurnal, peak
    at 14 UTC) + AR(1) noise of unit variance, on a size × size lat/lon grid."""
    steps = days * pd.Timedelta("1D") // pd.Timedelta(step)
    ds = make_dataset(nt=steps, ny=size, nx=size, variables=("t2m",), step=step, start=start)
    times = pd.DatetimeIndex(ds["time"].values)
    rng = np.random.default_rng(0)
    phase = rng.uniform(0.0, 2 * np.pi, (size, size))
    elapsed = ((times - times[0]) / pd.Timedelta("1D")).to_numpy()[:, None, None]
    hours = (times.hour.to_numpy() + times.minute.to_numpy() / 60)[:, None, None]
    shocks = rng.standard_normal((steps, size, size)) * np.sqrt(1 - AR_COEFF**2)
    noise = np.empty_like(shocks)
    noise[0] = rng.standard_normal((size, size))
    for t in range(1, steps):
        noise[t] = AR_COEFF * noise[t - 1] + shocks[t]
    ds["t2m"][:] = (
        280.0
        + rng.normal(0.0, 3.0, (size, size))
        + ANNUAL_K * np.cos(2 * np.pi * elapsed / 365.25 + phase)
        + DIURNAL_K * np.cos(2 * np.pi * (hours - 14) / 24)
        + noise
    ).astype(np.float32)
    return ds


def held_out_rmse(clim: Climatology, test: xr.Dataset) -> float:
    """RMSE [K] of the climatology (looked up in torch) over every step and cell of ``test``."""
    lookup = ClimatologyLookup(clim, variables=["t2m"], step_s=clim.step_s)
    times = torch.from_numpy(pd.DatetimeIndex(test["time"].values).as_unit("ns").asi8)[None]
    height, width = test.sizes["lat"], test.sizes["lon"]
    pred = lookup(times, torch.tensor([0]), torch.tensor([0]), height=height, width=width)
    return float(np.sqrt(np.mean((pred[0, :, 0].numpy() - test["t2m"].values) ** 2)))


def test_day_of_year_climatology_beats_time_of_day_on_a_held_out_leap_year() -> None:
    ds = annual_diurnal_noise(days=1096, step="1h", start="2022-01-01")  # 2022–2024
    train, test = ds.sel(time=slice("2022", "2023")), ds.sel(time="2024")
    assert climatology_period("auto", train, step_s=3600) == "doy"
    fits = {
        period: Climatology.fit(train, variables=["t2m"], period=period, step_s=3600, max_lag=2)
        for period in ("day", "doy")
    }
    rmse = {period: held_out_rmse(clim, test) for period, clim in fits.items()}
    figures = f"RMSE on 2024: {rmse}"
    # 'day' misses the annual cycle: √(10²/2 + 1) = 7.14 K; 'doy' leaves the unit noise and
    # the ±30-day window's damping of the annual cycle (4.5 %, 0.32 K rms): √1.10 = 1.05 K
    np.testing.assert_allclose(
        rmse["day"], np.sqrt(ANNUAL_K**2 / 2 + 1), rtol=0.03, err_msg=figures
    )
    assert rmse["doy"] < 1.1 and rmse["doy"] < 0.2 * rmse["day"], figures
    assert not np.isnan(fits["doy"].table).any(), "Feb 29 2024, never seen, from its neighbours"
    # one step ahead the blend is damped anomaly persistence with the noise's AR coefficient
    w_p, w_c, w_0 = fits["doy"].blend("t2m", 1)
    np.testing.assert_allclose((w_p, w_c, -w_0), (AR_COEFF, 1.0, AR_COEFF), atol=0.03)


def test_a_train_split_of_a_year_gets_the_doy_climatology_and_the_evaluation_says_so(
    write_feed, tmp_path: Path
) -> None:
    write_feed(annual_diurnal_noise(days=396, step="6h", start="2023-01-01"), steps_per_file=400)
    config = config_from_dict(
        {
            "pipeline": {"name": "years", "workdir": "work"},
            "source": {"kind": "netcdf", "paths": "feed/*.nc", "variables": ["t2m"]},
            "patches": {"input_steps": 4, "leads": [1, 4], "size": [4, 4], "stride": [4, 4]},
            "split": {"val_start": "2024-01-01", "test_start": "2024-01-16"},
            "train": {"device": "cpu"},
        },
        base=tmp_path,
    )
    ingest(config.ingest_job, progress=False)
    data = data_context(config)  # train: 2023, 365 days of 6-hourly steps
    assert data.climatology.period == "doy"
    assert data.climatology.table.shape == (366 * 4, 1, 4, 4)
    evaluation = evaluate_model(build_forecaster(config.model, data, name="persistence"), data)
    assert evaluation.attrs["climatology"] == "day of year × 6-h slot, ±30-day smoothing"
    clim_rmse = evaluation["rmse"].sel(forecaster="climatology", variable="t2m").values
    assert (clim_rmse < 1.3).all(), f"climatology RMSE {clim_rmse} K: the annual cycle is in it"

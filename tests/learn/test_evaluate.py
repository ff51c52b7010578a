"""Evaluation: the JSON contract, and scores checked against brute force on small stores."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from stpipe.app.config import Config, config_from_dict
from stpipe.app.jobs import data_context
from stpipe.core.grid import latitude_weights
from stpipe.io.ingestion import ingest
from stpipe.io.store import open_store
from stpipe.learn.context import build_forecaster
from stpipe.learn.evaluate import Evaluation, evaluate_model
from stpipe.testing import make_dataset

INPUT_STEPS, LEADS = 4, [1, 3]
BASELINES = {"persistence", "climatology", "persistence_clim_change"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def store(write_feed, tmp_path: Path) -> Callable[..., tuple[Config, xr.Dataset]]:
    """``store(latlon=…)``: an ingested 4-day 12×10 store (hourly weather on lat/lon, or
    half-hourly synthetic traffic on cells) and its content."""

    def make(*, latlon: bool) -> tuple[Config, xr.Dataset]:
        if latlon:
            write_feed(make_dataset(nt=96, ny=12, nx=10, variables=("t2m", "u10"), seed=5))
            source = {"kind": "netcdf", "paths": "feed/*.nc", "variables": ["t2m", "u10"]}
            targets = ["t2m"]
        else:
            source = {
                "kind": "synthetic-traffic",
                "variables": ["inflow", "outflow"],
                "synthetic": {"start": "2024-01-01", "days": 4, "grid": [12, 10]},
            }
            targets = ["inflow"]
        config = config_from_dict(
            {
                "pipeline": {"name": "test", "workdir": "work"},
                "source": source,
                "patches": {
                    "input_steps": INPUT_STEPS,
                    "leads": LEADS,
                    "size": [8, 8],
                    "stride": [4, 4],
                    "target_variables": targets,
                },
                "split": {"val_start": "2024-01-03", "test_start": "2024-01-04"},
                "train": {"device": "cpu"},
            },
            base=tmp_path,
        )
        ingest(config.ingest_job, progress=False)
        return config, open_store(config.store_path).load()

    return make


def persistence_errors(ds: xr.Dataset, *, variable: str = "t2m", start: str) -> np.ndarray:
    """Brute force: persistence errors on every window inside [start, end), float64
    [window, lead, row, col]."""
    t2m = ds[variable].values.astype(np.float64)
    first = int(np.searchsorted(ds["time"].values, np.datetime64(start)))
    span = INPUT_STEPS + LEADS[-1]
    starts = range(first, len(ds["time"]) - span + 1)
    last = INPUT_STEPS - 1
    return np.array([[t2m[t0 + last + lead] - t2m[t0 + last] for lead in LEADS] for t0 in starts])


def test_json_has_the_documented_keys_and_one_value_per_lead(store, tmp_path: Path) -> None:
    config, _ = store(latlon=True)
    model = build_forecaster(config.model, data_context(config))  # untrained scnn_lstm
    evaluation = evaluate_model(model, data_context(config))

    raw = json.loads(evaluation.to_json(tmp_path / "eval.json").read_text())
    assert raw["leads"] == [1.0, 3.0] and raw["lead_unit"] == "h"
    assert raw["lead_steps"] == LEADS and raw["split"] == "test" and raw["variables"] == ["t2m"]
    assert set(raw["metrics"]) == {
        "rmse",
        "mae",
        "rmse_lat_weighted",
        "acc",
        "skill_vs_persistence",
        "skill_vs_climatology",
    }
    for name, by_forecast in raw["metrics"].items():
        expected = {"model", *BASELINES} - ({"climatology"} if name == "acc" else set())
        assert set(by_forecast) == expected, name
        for forecast, values in by_forecast.items():
            assert len(values) == len(LEADS), (name, forecast)
            assert all(isinstance(v, float) for v in values), (name, forecast, values)
    assert raw["summary"]["rmse_wmean"]["model"] == pytest.approx(
        np.mean(raw["metrics"]["rmse_lat_weighted"]["model"])
    )
    assert raw["per_variable"]["t2m"]["rmse"] == raw["metrics"]["rmse"]
    assert Evaluation.from_json(tmp_path / "eval.json").metrics == evaluation.metrics


def test_a_model_that_is_persistence_scores_exactly_as_persistence(store) -> None:
    config, ds = store(latlon=True)
    data = data_context(config)
    evaluation = evaluate_model(
        build_forecaster(config.model, data, name="persistence"), data
    )

    for name, by_forecast in evaluation.metrics.items():
        assert by_forecast["model"] == by_forecast["persistence"], name
    assert evaluation.metrics["skill_vs_persistence"]["model"] == (0.0, 0.0)

    errors = persistence_errors(ds, start="2024-01-04")
    # Scored on non-overlapping patches whatever [patches] stride says: 2×2 of 8×8 on 12×10.
    assert evaluation.n_samples == len(errors) * 2 * 2
    rmse = np.sqrt((errors**2).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(evaluation.metrics["rmse"]["persistence"], rmse, rtol=1e-6)
    np.testing.assert_allclose(
        evaluation.metrics["mae"]["persistence"], np.abs(errors).mean(axis=(0, 2, 3)), rtol=1e-6
    )
    w = latitude_weights(ds["lat"].values)[None, None, :, None]
    weighted = np.sqrt((w * errors**2).sum(axis=(0, 2, 3)) / (w + 0 * errors).sum(axis=(0, 2, 3)))
    np.testing.assert_allclose(
        evaluation.metrics["rmse_lat_weighted"]["persistence"], weighted, rtol=1e-6
    )
    assert not np.allclose(weighted, rmse, rtol=1e-6)


def test_cell_grids_get_openstl_scores_and_leads_in_hours(store) -> None:
    config, ds = store(latlon=False)
    data = data_context(config)
    evaluation = evaluate_model(
        build_forecaster(config.model, data, name="persistence"), data, split="val"
    )

    assert evaluation.lead_hours == (0.5, 1.5)
    assert {"mse_openstl", "mae_openstl"} <= set(evaluation.metrics)
    assert not {"acc", "rmse_lat_weighted"} & set(evaluation.metrics)
    train = ds["inflow"].sel(time=slice(None, "2024-01-02T23:59")).values
    scale = float(train.max() - train.min())
    errors = (
        persistence_errors(
            ds.sel(time=slice(None, "2024-01-03T23:59")), variable="inflow", start="2024-01-03"
        )
        / scale
    )
    openstl = (errors**2).mean(axis=0).sum(axis=(1, 2))  # per-pixel mean, summed over H×W
    np.testing.assert_allclose(evaluation.metrics["mse_openstl"]["persistence"], openstl, rtol=1e-5)

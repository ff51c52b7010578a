"""Evaluation: the Dataset and JSON contracts, scores checked against brute force on small
stores, and a metric added to the table."""

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
from stpipe.core.metrics import METRICS, Metric, ScoredBatch
from stpipe.io.ingestion import ingest
from stpipe.io.store import open_store
from stpipe.learn.context import build_forecaster
from stpipe.learn.evaluate import evaluate_model
from stpipe.learn.scores import (
    from_json,
    lead_hours,
    metric_names,
    metrics_table,
    per_lead,
    summary,
    to_dict,
    to_json,
)
from stpipe.testing import make_dataset
from stpipe.tracking import registry

INPUT_STEPS, LEADS = 4, [1, 3]
BASELINES_IN_ORDER = ["persistence", "climatology", "persistence_clim_change", "advection"]
BASELINES = set(BASELINES_IN_ORDER)


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

    raw = json.loads(to_json(evaluation, tmp_path / "eval.json").read_text())
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
    assert metrics_table(from_json(tmp_path / "eval.json")) == metrics_table(evaluation)
    assert raw["headline"] == "rmse_lat_weighted" and raw["variable_units"] == {"t2m": "K"}
    assert raw["metric_attrs"]["rmse"] == {"long_name": "RMSE", "units": "K", "better": "lower"}


def test_the_result_is_a_dataset_of_forecaster_lead_variable(store) -> None:
    config, _ = store(latlon=True)
    data = data_context(config)
    evaluation = evaluate_model(build_forecaster(config.model, data), data)

    assert evaluation["rmse"].dims == ("forecaster", "lead", "variable")
    assert evaluation["rmse_pooled"].dims == ("forecaster", "lead")
    assert list(evaluation["forecaster"].values) == ["model", *BASELINES_IN_ORDER]
    assert list(evaluation["lead"].values) == [1.0, 3.0]
    assert evaluation["lead"].attrs["units"] == "h"
    assert list(evaluation["lead_step"].values) == LEADS
    assert list(evaluation["variable"].values) == ["t2m"]
    assert evaluation.attrs == {
        "split": "test",
        "n_samples": evaluation.attrs["n_samples"],
        "lead_unit": "h",
        "headline": "rmse_lat_weighted",
        "climatology": "hour of day",
    }
    assert evaluation.attrs["n_samples"] > 0
    assert evaluation["acc"].attrs["forecasters"] == [
        "model",
        "persistence",
        "persistence_clim_change",
        "advection",
    ]
    assert np.isnan(evaluation["acc"].sel(forecaster="climatology")).all(), "not scored: NaN"
    assert evaluation["skill_vs_persistence"].attrs["units"] == "1"
    assert evaluation["rmse"].attrs["better"] == "lower"


def test_without_baselines_only_the_model_is_scored_and_no_skill(store) -> None:
    config, _ = store(latlon=True)
    data = data_context(config)
    evaluation = evaluate_model(
        build_forecaster(config.model, data), data, split="val", baselines=False
    )

    assert list(evaluation["forecaster"].values) == ["model"]
    assert set(metric_names(evaluation)) == {"rmse", "mae", "rmse_lat_weighted", "acc"}
    assert evaluation.attrs["split"] == "val"
    assert summary(evaluation)["rmse_wmean"]["model"] == pytest.approx(
        np.mean(per_lead(evaluation, "rmse_lat_weighted")["model"])
    )


class MeanSquaredError(Metric):
    """A toy metric: what adding one takes (this class and an entry in the table)."""

    name = "mse"
    long_name = "MSE"
    units = "variable²"
    better = "lower"

    def batch_sums(self, batch: ScoredBatch, forecaster: str) -> torch.Tensor:
        e = batch.error(forecaster)
        return torch.stack([batch.counted.sum(dim=(0, 3, 4)), (e * e).sum(dim=(0, 3, 4))])

    def per_variable(self, sums: torch.Tensor) -> torch.Tensor:
        return sums[1] / sums[0]


def test_a_metric_added_to_the_table_is_in_the_result_the_json_and_promotion(store) -> None:
    config, ds = store(latlon=True)
    data = data_context(config)
    table = (*METRICS, MeanSquaredError())
    persistence = build_forecaster(config.model, data, name="persistence")
    evaluation = evaluate_model(persistence, data, metrics=table)

    errors = persistence_errors(ds, start="2024-01-04")
    np.testing.assert_allclose(
        evaluation["mse"].sel(forecaster="persistence", variable="t2m"),
        (errors**2).mean(axis=(0, 2, 3)),
        rtol=1e-6,
    )
    assert evaluation["mse"].attrs["units"] == "K²"
    assert per_lead(evaluation, "mse")["model"] == per_lead(evaluation, "mse")["persistence"]
    raw = to_dict(evaluation)
    assert raw["metrics"]["mse"]["climatology"] == list(per_lead(evaluation, "mse")["climatology"])
    assert raw["climatology"] == evaluation.attrs["climatology"] == "hour of day"
    assert raw["summary"]["mse_mean"]["model"] == pytest.approx(
        np.mean(raw["metrics"]["mse"]["model"])
    )
    registry.check_metric("mse_mean", metrics=table)
    assert registry.promotion_score(evaluation, "mse_mean") == raw["summary"]["mse_mean"]["model"]


def test_a_model_that_is_persistence_scores_exactly_as_persistence(store) -> None:
    config, ds = store(latlon=True)
    data = data_context(config)
    evaluation = evaluate_model(build_forecaster(config.model, data, name="persistence"), data)

    metrics = metrics_table(evaluation)
    for name, by_forecast in metrics.items():
        assert by_forecast["model"] == by_forecast["persistence"], name
    assert metrics["skill_vs_persistence"]["model"] == (0.0, 0.0)

    errors = persistence_errors(ds, start="2024-01-04")
    # Scored on non-overlapping patches whatever [patches] stride says: 2×2 of 8×8 on 12×10.
    assert evaluation.attrs["n_samples"] == len(errors) * 2 * 2
    rmse = np.sqrt((errors**2).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(metrics["rmse"]["persistence"], rmse, rtol=1e-6)
    np.testing.assert_allclose(
        metrics["mae"]["persistence"], np.abs(errors).mean(axis=(0, 2, 3)), rtol=1e-6
    )
    w = latitude_weights(ds["lat"].values)[None, None, :, None]
    weighted = np.sqrt((w * errors**2).sum(axis=(0, 2, 3)) / (w + 0 * errors).sum(axis=(0, 2, 3)))
    np.testing.assert_allclose(metrics["rmse_lat_weighted"]["persistence"], weighted, rtol=1e-6)
    assert not np.allclose(weighted, rmse, rtol=1e-6)


def test_cell_grids_get_openstl_scores_and_leads_in_hours(store) -> None:
    config, ds = store(latlon=False)
    data = data_context(config)
    evaluation = evaluate_model(
        build_forecaster(config.model, data, name="persistence"), data, split="val"
    )

    assert lead_hours(evaluation) == (0.5, 1.5)
    assert {"mse_openstl", "mae_openstl"} <= set(metric_names(evaluation))
    assert not {"acc", "rmse_lat_weighted"} & set(metric_names(evaluation))
    assert evaluation.attrs["headline"] == "rmse"
    train = ds["inflow"].sel(time=slice(None, "2024-01-02T23:59")).values
    scale = float(train.max() - train.min())
    errors = (
        persistence_errors(
            ds.sel(time=slice(None, "2024-01-03T23:59")), variable="inflow", start="2024-01-03"
        )
        / scale
    )
    openstl = (errors**2).mean(axis=0).sum(axis=(1, 2))  # per-pixel mean, summed over H×W
    np.testing.assert_allclose(
        per_lead(evaluation, "mse_openstl")["persistence"], openstl, rtol=1e-5
    )

"""Fixtures of the MLflow tests: a pipeline config, its SQLite tracking in a temporary
workdir, a small ConvLSTM, its card and a logged copy of it (one of each per test module)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stpipe.app.config import Config, config_from_dict
from stpipe.app.jobs import tracking_for
from stpipe.core.card import Grid, ModelCard
from stpipe.models import build_model
from stpipe.models.settings import ConvLstmSettings
from stpipe.testing import make_dataset
from stpipe.tracking.client import Tracking
from stpipe.tracking.model import log_model

HOUR_NS = 3600 * 10**9


def make_config(workdir: Path, **sections: dict) -> Config:
    raw = {
        "pipeline": {"name": "unit", "workdir": str(workdir)},
        "source": {"kind": "synthetic-weather", "variables": ["t2m", "u10"]},
        "patches": {"input_steps": 4, "leads": [1, 3], "size": [8, 8]},
        "split": {"val_start": "2024-01-04", "test_start": "2024-01-05"},
    }
    for name, keys in sections.items():
        raw[name] = raw.get(name, {}) | keys
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Tracking:
    return tracking_for(make_config(tmp_path_factory.mktemp("mlflow")))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        ConvLstmSettings(hidden=(4,)),
        input_variables=["t2m", "u10"],
        target_variables=["t2m"],
        input_steps=4,
        leads=[1, 3],
        patch_shape=(8, 8),
        n_time_features=4,
        n_static=1,
        norm_mean=[280.0, 0.0],
        norm_std=[5.0, 2.0],
        climatology=None,
        step_s=3600,
    ).eval()


def batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": 280 + 5 * torch.randn(n, 4, 2, 8, 8, generator=g),
        "x_time": torch.randn(n, 4, 4, generator=g),
        "y_time": torch.randn(n, 2, 4, generator=g),
        "x_times": torch.arange(4)[None].repeat(n, 1) * HOUR_NS,
        "y_times": torch.tensor([[4, 6]]).repeat(n, 1) * HOUR_NS,
        "static": torch.randn(n, 1, 8, 8, generator=g),
        "row0": torch.arange(n) * 8,
        "col0": torch.zeros(n, dtype=torch.int64),
    }


CARD = ModelCard(
    pipeline="unit",
    model="convlstm",
    input_variables=("t2m", "u10"),
    target_variables=("t2m",),
    units=("K",),
    input_steps=4,
    leads=(1, 3),
    step_s=3600,
    patch_shape=(8, 8),
    halo=0,
    static_features=("lat",),
    n_time_features=4,
    edge="pad",
    grid=Grid.of(make_dataset(nt=2, ny=16, nx=16)),
)


@pytest.fixture(scope="module")
def logged(tracking: Tracking, model: torch.nn.Module):
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    return run_id, log_model(tracking, run_id, model, example=batch(2), card=CARD)

"""MLflow mechanics against a real SQLite backend: URIs, retries, logged models that load
without pickle and predict identically, the promotion rule and the aliases it sets."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from stpipe.app.config import Config, config_from_dict, load_config
from stpipe.app.jobs import tracking_for
from stpipe.core.card import Grid, ModelCard
from stpipe.core.errors import TrackingError
from stpipe.models import build_model
from stpipe.models.settings import ConvLstmSettings
from stpipe.testing import make_dataset
from stpipe.tracking import registry
from stpipe.tracking.client import Tracking, fluent_scope, tracking_uri
from stpipe.tracking.model import BATCH_INPUTS, EXAMPLE_FILE, load_model, log_model

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


# --- connecting -----------------------------------------------------------------------------


def test_default_backend_is_sqlite_in_the_workdir_with_artifacts_beside_it(
    tracking: Tracking, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    assert tracking_uri(config.mlflow, config.workdir) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    remote = make_config(tmp_path, mlflow={"tracking_uri": "http://127.0.0.1:5000"})
    assert tracking_uri(remote.mlflow, remote.workdir) == "http://127.0.0.1:5000"
    experiment = tracking.client.get_experiment(tracking.experiment_id)
    assert experiment.name == "unit"
    assert experiment.artifact_location.endswith("/mlartifacts/unit")


def test_fluent_scope_leaves_the_process_wide_uris_as_they_were(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with fluent_scope(tracking.uri):
        assert mlflow.get_tracking_uri() == tracking.uri
        assert mlflow.get_registry_uri() == tracking.uri
    assert mlflow.get_tracking_uri() == elsewhere
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_fails_after_retries_and_writes_nothing(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = make_config(
        tmp_path / "work", mlflow={"tracking_uri": url, "retries": 3, "retry_backoff_s": 0.01}
    )
    with pytest.raises(
        TrackingError, match=rf"cannot reach the MLflow server {url} after 3 attempts"
    ):
        tracking_for(config)
    assert not (tmp_path / "work").exists()


# --- logged models ---------------------------------------------------------------------------


def test_the_logged_model_loads_without_pickle_and_predicts_identically(
    tracking: Tracking, model: torch.nn.Module, logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow's default (true) lets it unpickle; loading must not depend on the environment
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    _, info = logged
    loaded = load_model(tracking, info.uri)

    for n in (1, 5):  # other batch sizes than the export example's
        other = batch(n, seed=n)
        with torch.no_grad():
            torch.testing.assert_close(loaded(other), model(other), rtol=0, atol=0)
    assert loaded.card == CARD
    assert loaded.leads == (1, 3) and loaded.target_variables == ("t2m",)
    assert loaded.to("cpu").eval() is loaded


def test_the_logged_model_is_a_pt2_archive_with_signature_and_input_example(
    tracking: Tracking, logged, tmp_path: Path
) -> None:
    _, info = logged
    with fluent_scope(tracking.uri):
        local = Path(mlflow.artifacts.download_artifacts(info.uri, dst_path=str(tmp_path)))
    assert (local / "data" / "model.pt2").is_file()
    assert not list(local.rglob("*.pth")) and not list(local.rglob("*.pkl"))
    mlmodel = mlflow.models.Model.load(str(local))
    assert [s.name for s in mlmodel.signature.inputs.inputs] == list(BATCH_INPUTS)
    assert mlmodel.signature.inputs.inputs[0].shape == (-1, 4, 2, 8, 8)
    assert mlmodel.signature.outputs.inputs[0].shape == (-1, 2, 1, 8, 8)
    with np.load(local / "extra_files" / EXAMPLE_FILE, allow_pickle=False) as example:
        assert sorted(example.files) == sorted(BATCH_INPUTS)
        assert example["x"].shape == (2, 4, 2, 8, 8)


def test_a_model_not_logged_by_stpipe_is_refused(tracking: Tracking, tmp_path: Path) -> None:
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    with fluent_scope(tracking.uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            torch.nn.Linear(2, 1),
            name="plain",
            input_example=np.zeros((2, 2), np.float32),
            pip_requirements=["torch"],
        )
    with pytest.raises(TrackingError, match="has no 'stpipe' metadata"):
        load_model(tracking, info.model_uri)


# --- promotion -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "champion", "alias", "reason"),
    [
        (2.0, None, "champion", "no champion yet"),
        (1.0, 2.0, "champion", "better than v1"),
        (3.0, 2.0, "challenger", "not better than v1"),
        (2.0, 2.0, "challenger", "tie with v1, which stays champion"),
        (float("nan"), None, "challenger", "not finite"),
        (1.0, float("nan"), "champion", "better than v1"),
    ],
)
def test_promotion_rule(candidate, champion, alias, reason) -> None:
    decision = registry.decide(
        metric="rmse_wmean",
        candidate_score=candidate,
        champion_version=None if champion is None else "1",
        champion_score=champion,
    )
    assert decision.alias == alias
    assert reason in decision.reason


def test_aliases_follow_the_decisions_and_versions_carry_them(tracking: Tracking, logged) -> None:
    run_id, info = logged
    with pytest.raises(TrackingError, match="has no champion yet; run `stpipe train CONFIG`"):
        registry.require_champion(tracking)

    def register(score: float) -> str:
        current = registry.champion(tracking)
        decision = registry.decide(
            metric="rmse_wmean",
            candidate_score=score,
            champion_version=None if current is None else str(current.version),
            champion_score=None
            if current is None
            else float(current.tags["stpipe.candidate_score"]),
        )
        version = registry.register(
            tracking,
            model_id=info.model_id,
            run_id=run_id,
            promotion=decision,
            tags={"stpipe.note": f"{score}"},
        )
        return str(version.version)

    first = register(2.0)
    assert registry.aliases(tracking) == {"champion": first}
    worse = register(3.0)
    assert registry.aliases(tracking) == {"champion": first, "challenger": worse}
    tie = register(2.0)
    assert registry.aliases(tracking) == {"champion": first, "challenger": tie}
    better = register(1.5)
    assert registry.aliases(tracking) == {"champion": better, "challenger": tie}

    tags = tracking.client.get_model_version(tracking.model_name, better).tags
    assert tags["stpipe.decision"] == "champion"
    assert float(tags["stpipe.candidate_score"]) == 1.5
    assert float(tags["stpipe.champion_score"]) == 2.0
    assert tags["stpipe.champion_version"] == first
    assert tags["stpipe.note"] == "1.5"
    assert [str(v.version) for v in registry.versions(tracking)] == [better, tie, worse, first]


# --- the config as params and artifact -----------------------------------------------------


def test_the_config_artifact_loads_back_to_the_same_config(tmp_path: Path) -> None:
    config = make_config(tmp_path, train={"epochs": 3}, forecast={"overlap": [2, 2]})
    path = tmp_path / "logged.toml"
    path.write_text(config.to_toml())
    again = load_config(path)
    assert again.model_dump() == config.model_dump()
    assert tomllib.loads(config.to_toml())["pipeline"]["workdir"] == str(tmp_path)

    params = config.flat_params()
    assert params["train.epochs"] == "3"
    assert params["patches.leads"] == "[1, 3]"
    assert params["source.synthetic.days"] == "30"
    assert params["pipeline.name"] == "unit"

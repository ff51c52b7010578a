"""The registered model through MLflow's own interfaces: ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` forecast what stpipe's loader forecasts, from the logged input
example, without unpickling anything; stpipe still loads models of the older pytorch layout."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from torch import nn

from stpipe.app import jobs
from stpipe.app.config import Config
from stpipe.app.jobs import data_context, model_card, tracking_for
from stpipe.core.card import ModelCard
from stpipe.learn.context import build_forecaster, make_split_loader
from stpipe.tracking import registry
from stpipe.tracking.client import Tracking, fluent_scope
from stpipe.tracking.model import (
    BATCH_INPUTS,
    CARD_KEY,
    LEGACY_PROGRAM_FILE,
    PROGRAM_FILE,
    PYFUNC_CODE,
    _TensorInputs,
    export_inputs,
    load_model,
    log_model,
)
from tests.app.test_jobs import pipeline
from tests.tracking.conftest import CARD, batch
from tests.tracking.test_tampered_artifacts import pickle_into_archive

CHAMPION = "models:/tiny-t2m@champion"
Arrays = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Tracking]:
    """A trained convlstm registered as champion v1 of ``tiny-t2m`` by the training job."""
    config = pipeline(tmp_path_factory.mktemp("pyfunc"))
    jobs.run_training(config, progress=False)
    tracking = tracking_for(config)
    assert registry.aliases(tracking) == {"champion": "1"}
    return config, tracking


@pytest.fixture(scope="module")
def persistence(trained) -> tuple[nn.Module, dict[str, torch.Tensor], ModelCard]:
    """An untrained forecaster of the pipeline, a validation batch of 2 and the card."""
    config, _ = trained
    data = data_context(config)
    loader = make_split_loader(
        data, split="val", batch_size=2, shuffle=False, drop_last=False, max_batches=1
    )
    model = build_forecaster(config.model, data, name="persistence").eval()
    return model, next(iter(loader)), model_card(config, data.ds)


def stpipe_forecast(tracking: Tracking, uri: str, inputs: Arrays) -> np.ndarray:
    """What stpipe's own loader (forecast, evaluate, promotion) forecasts from ``inputs``
    (``static`` with no field where ``inputs`` has none)."""
    model = load_model(tracking, uri)
    batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
    h, w = model.card.patch_shape
    batch.setdefault("static", torch.zeros(len(inputs["x"]), 0, h, w))
    with torch.no_grad():
        return model(batch).numpy()


def download(tracking: Tracking, uri: str, dst: Path) -> Path:
    with fluent_scope(tracking.uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def test_the_champion_loads_as_pyfunc_without_pickle_and_forecasts_like_stpipe(
    trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tracking = trained
    # MLflow refuses every pickle then: the pyfunc model must need none
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with fluent_scope(tracking.uri):
        model = mlflow.pyfunc.load_model(CHAMPION)
    example = model.input_example
    # the pipeline has no static fields: JSON cannot carry ``static`` [B, 0, H, W]
    assert list(example) == [k for k in BATCH_INPUTS if k != "static"]
    assert example["x"].shape == (2, 4, 2, 8, 8) and example["x"].dtype == np.float32
    assert example["x_times"].dtype == np.int64
    config = model.metadata.flavors["python_function"]["config"]
    assert config["empty_inputs"] == {"static": {"shape": [0, 8, 8], "dtype": "float32"}}

    forecast = model.predict(example)

    assert isinstance(forecast, np.ndarray)
    assert forecast.shape == (2, 2, 1, 8, 8) and forecast.dtype == np.float32
    np.testing.assert_array_equal(forecast, stpipe_forecast(tracking, CHAMPION, example))
    # a batch of another size than the example's
    one = {k: v[:1] for k, v in example.items()}
    np.testing.assert_array_equal(model.predict(one), forecast[:1])
    assert model.metadata.metadata[CARD_KEY]["leads"] == [1, 3]


def test_a_model_with_static_fields_takes_every_input_through_pyfunc(
    trained, model: torch.nn.Module
) -> None:
    _, tracking = trained  # ``model``: tests/tracking/conftest.py's, with one static field
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logged = log_model(tracking, run_id, model, example=batch(2), card=CARD)
        with fluent_scope(tracking.uri):
            pyfunc = mlflow.pyfunc.load_model(logged.uri)
    assert list(pyfunc.input_example) == list(BATCH_INPUTS)
    assert not [w for w in caught if "type hints" in str(w.message)], "MLflow's advice shown"
    inputs = {k: v.numpy() for k, v in batch(3, seed=3).items()}

    forecast = pyfunc.predict(inputs)

    assert forecast.shape == (3, 2, 1, 8, 8)
    np.testing.assert_array_equal(forecast, stpipe_forecast(tracking, logged.uri, inputs))


def test_the_model_directory_holds_code_and_the_program_and_no_pickle(
    trained, tmp_path: Path
) -> None:
    _, tracking = trained
    local = download(tracking, CHAMPION, tmp_path)
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert {PROGRAM_FILE, PYFUNC_CODE.name, "MLmodel", "serving_input_example.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pth", ".pickle"))], files
    pyfunc = mlflow.models.Model.load(str(local)).flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(pyfunc["model_code_path"]).name == PYFUNC_CODE.name
    assert "python_model" not in pyfunc  # the key of a cloudpickled python_model.pkl
    assert pyfunc["artifacts"]["program"]["path"] == PROGRAM_FILE
    assert (local / PYFUNC_CODE.name).read_bytes() == PYFUNC_CODE.read_bytes()


def test_the_pyfunc_code_imports_only_torch_numpy_and_mlflow() -> None:
    tree = ast.parse(PYFUNC_CODE.read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} == {"__future__", "numpy", "torch", "mlflow"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(server: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited {server.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer within {timeout_s} s:\n{log.read_text()}")


@pytest.mark.slow
@pytest.mark.integration
def test_mlflow_models_serve_answers_invocations_with_the_forecast(trained, tmp_path: Path) -> None:
    _, tracking = trained
    request = download(tracking, CHAMPION, tmp_path / "model") / "serving_input_example.json"
    body = json.loads(request.read_text())
    assert sorted(body["inputs"]) == sorted(set(BATCH_INPUTS) - {"static"})
    port, log = free_port(), tmp_path / "serve.log"
    env = os.environ | {
        "MLFLOW_TRACKING_URI": tracking.uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        # MLflow starts `uvicorn` by name: the one beside this interpreter
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION]
    command += ["--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
    with log.open("w") as out:
        server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(server, url, log, timeout_s=180)
        answer = requests.post(f"{url}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        served = np.asarray(answer.json()["predictions"], dtype=np.float32)
    finally:
        # the CLI and the uvicorn it starts share the session started here
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    with fluent_scope(tracking.uri):
        example = mlflow.pyfunc.load_model(CHAMPION).input_example
    expected = stpipe_forecast(tracking, CHAMPION, example)
    assert served.shape == expected.shape == (2, 2, 1, 8, 8)
    np.testing.assert_allclose(served, expected, rtol=1e-6, atol=0)


def test_a_pickled_record_in_the_program_is_refused_by_pyfunc_too(
    trained, persistence, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tracking = trained
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    model, example, card = persistence
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    logged = log_model(tracking, run_id, model, example=example, card=card)
    location = tracking.client.get_logged_model(logged.model_id).artifact_location
    marker = tmp_path / "payload-ran"
    pickle_into_archive(Path(location.removeprefix("file://")), marker)

    with fluent_scope(tracking.uri), pytest.raises(MlflowException, match="not a pickle-free"):
        mlflow.pyfunc.load_model(logged.uri)
    assert not marker.exists(), "the payload ran while MLflow loaded the pyfunc model"


def test_a_model_of_the_pytorch_layout_still_loads(trained, persistence, tmp_path: Path) -> None:
    """Versions registered before the pyfunc model keep their archive in data/model.pt2 of
    a pytorch-flavour model; stpipe's loader still forecasts with them."""
    _, tracking = trained
    model, example, card = persistence
    inputs = export_inputs(example)
    signature = ModelSignature(
        inputs=Schema(
            [
                TensorSpec(t.numpy().dtype, (-1, *t.shape[1:]), name)
                for name, t in zip(BATCH_INPUTS, inputs, strict=True)
            ]
        )
    )
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    with fluent_scope(tracking.uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            _TensorInputs(model).eval(),
            name="model",
            signature=signature,
            input_example=inputs,
            serialization_format="pt2",
            metadata={CARD_KEY: card.to_json()},
            pip_requirements=["torch"],
        )
    local = download(tracking, info.model_uri, tmp_path)
    assert (local / LEGACY_PROGRAM_FILE).is_file()
    assert set(mlflow.models.Model.load(str(local)).flavors) == {"pytorch"}

    loaded = load_model(tracking, info.model_uri)

    assert loaded.card == card
    with torch.no_grad():
        torch.testing.assert_close(loaded(example), model(example), rtol=0, atol=0)

"""Logged models (stpipe.tracking.model): they load without pickle and predict identically,
are pt2 archives with a signature and an input example, a model loaded again is a copy of
its own (not deserialised twice, and not another model's), it moves between devices with
its current weights, and a model stpipe did not log is refused."""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from stpipe.core.errors import TrackingError
from stpipe.tracking.client import Tracking, fluent_scope
from stpipe.tracking.model import BATCH_INPUTS, PROGRAM_FILE, load_model, log_model, program_on
from tests.tracking.conftest import CARD, batch


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
    assert (local / PROGRAM_FILE).is_file()
    assert not list(local.rglob("*.pth")) and not list(local.rglob("*.pkl"))
    mlmodel = mlflow.models.Model.load(str(local))
    assert [s.name for s in mlmodel.signature.inputs.inputs] == list(BATCH_INPUTS)
    assert mlmodel.signature.inputs.inputs[0].shape == (-1, 4, 2, 8, 8)
    assert mlmodel.signature.outputs.inputs[0].shape == (-1, 2, 1, 8, 8)
    example = mlmodel.load_input_example(str(local))
    assert sorted(example) == sorted(BATCH_INPUTS)
    assert example["x"].shape == (2, 4, 2, 8, 8)


def test_a_model_loaded_again_is_an_independent_copy_not_a_second_deserialisation(
    tracking: Tracking, model: torch.nn.Module, logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, info = logged
    first = load_model(tracking, info.uri)
    real_load = torch.export.load
    deserialised: list[str] = []
    monkeypatch.setattr(
        torch.export, "load", lambda path: deserialised.append(path) or real_load(path)
    )
    with torch.no_grad():
        for weight in first.program.state_dict().values():
            if weight.is_floating_point():
                weight.add_(1.0)  # as fine-tuning from the loaded weights would
        second = load_model(tracking, info.uri)
        other = batch(3, seed=7)
        torch.testing.assert_close(second(other), model(other), rtol=0, atol=0)
        assert not torch.equal(first(other), model(other))
    assert deserialised == []


def test_a_model_with_other_weights_loads_as_itself(
    tracking: Tracking, model: torch.nn.Module, logged
) -> None:
    _, info = logged
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for weight in changed.parameters():
            weight.mul_(1.5)
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    changed_info = log_model(tracking, run_id, changed, example=batch(2), card=CARD)
    other = batch(3, seed=8)
    with torch.no_grad():
        for uri, expected in ((info.uri, model), (changed_info.uri, changed), (info.uri, model)):
            torch.testing.assert_close(
                load_model(tracking, uri)(other), expected(other), rtol=0, atol=0
            )
        assert not torch.equal(changed(other), model(other))


def test_a_loaded_model_moves_to_a_device_with_its_current_weights(
    tracking: Tracking, model: torch.nn.Module, logged
) -> None:
    _, info = logged
    loaded = load_model(tracking, info.uri)
    other = batch(3, seed=9)
    with torch.no_grad():
        for weight in loaded.program.state_dict().values():
            if weight.is_floating_point():
                weight.mul_(0.5)  # as fine-tuning from the loaded weights would
        changed = loaded(other)
        moved = program_on(loaded.exported, loaded.program, torch.device("cpu"))
        torch.testing.assert_close(
            moved(*(other[k] for k in BATCH_INPUTS)), changed, rtol=0, atol=0
        )
        assert not torch.equal(changed, model(other))
        # the graph itself moves: a program left on the CPU cannot take a batch on "meta"
        assert loaded.to("meta").half() is loaded
        forecast = loaded({k: v.to("meta") for k, v in other.items()})
    assert forecast.device == torch.device("meta") and forecast.shape == changed.shape
    assert loaded.program_device == torch.device("meta"), "a dtype cast does not move it back"
    kept = [*loaded.exported.state_dict.values(), *loaded.exported.constants.values()]
    assert {t.device.type for t in kept} == {"cpu"}, "the loaded program is never changed"


class _WithConstants(torch.nn.Module):
    """A network with a non-persistent buffer and a tensor constant in its graph."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)
        self.offset = torch.tensor([1.0, -1.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale + self.offset


def test_a_program_with_constants_and_buffers_moves_with_its_current_weights() -> None:
    x = torch.randn(4, 3)
    exported = torch.export.export(_WithConstants(), (x,))
    program = copy.deepcopy(exported.module())  # as load_model hands it out
    with torch.no_grad():
        program.linear.weight.mul_(0.5)
        moved = program_on(exported, program, torch.device("cpu"))
        torch.testing.assert_close(moved(x), program(x), rtol=0, atol=0)
        assert not torch.equal(moved(x), exported.module()(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_loaded_model_forecasts_on_cuda_as_on_the_cpu(
    tracking: Tracking, model: torch.nn.Module, logged
) -> None:
    _, info = logged
    loaded = load_model(tracking, info.uri).to("cuda")
    other = batch(5, seed=10)
    with torch.no_grad():
        forecast = loaded({k: v.cuda() for k, v in other.items()})
        expected = model(other)
    assert forecast.is_cuda
    assert {w.device.type for w in loaded.program.state_dict().values()} == {"cuda"}
    torch.testing.assert_close(forecast.cpu(), expected, rtol=1e-3, atol=1e-3)


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

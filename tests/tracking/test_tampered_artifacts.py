"""A model artifact replaced in the artifact store never runs code when stpipe loads it.

MLflow 3 unpickles models unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is false, and that
variable defaults to true; every test here sets it to true, so what refuses the payload is
stpipe, not the environment. Each payload would create a marker file when unpickled.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch

from stpipe.app import jobs
from stpipe.app.cli import main
from stpipe.app.config import Config
from stpipe.app.jobs import tracking_for
from stpipe.core.errors import TrackingError
from stpipe.tracking import registry
from stpipe.tracking.model import PROGRAM_FILE
from tests.app.test_jobs import pipeline, register_baseline


class Payload:
    """Unpickling this writes ``marker``: what a hostile artifact would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Config, Path]:
    """A pipeline whose champion v1 is persistence; returns the config and the local
    directory of v1's model artifacts. Pickles are allowed by the environment."""
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    config = pipeline(tmp_path / "pipe")
    assert register_baseline(config, offset=2.0).promoted
    tracking = tracking_for(config)
    version = registry.require_champion(tracking)
    model_id = version.source.removeprefix("models:/")
    location = tracking.client.get_logged_model(model_id).artifact_location
    return config, Path(location.removeprefix("file://"))


def replace_with_pickle(artifacts: Path, marker: Path) -> None:
    """What ``mlflow.pytorch.log_model(serialization_format="pickle")`` writes, holding a
    payload: ``data/model.pth`` and ``data/pickle_module_info.txt``."""
    (artifacts / PROGRAM_FILE).unlink()
    data = artifacts / "data"
    data.mkdir()
    (data / "model.pth").write_bytes(pickle.dumps(Payload(marker)))
    (data / "pickle_module_info.txt").write_text("pickle")


def pickle_into_archive(artifacts: Path, marker: Path) -> None:
    """Keep the program archive but make its sample-inputs record a pickled payload (the
    archive's records are unpickled by ``torch.export.load`` unless checked first)."""
    archive = artifacts / PROGRAM_FILE
    records = {}
    with zipfile.ZipFile(archive) as old:
        for name in old.namelist():
            records[name] = old.read(name)
    (inputs,) = [n for n in records if n.endswith("sample_inputs/model.pt")]
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    records[inputs] = buffer.getvalue()
    with zipfile.ZipFile(archive, "w") as new:
        for name, content in records.items():
            new.writestr(name, content)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tamper", "refused"),
    [(replace_with_pickle, "data/model.pth"), (pickle_into_archive, PROGRAM_FILE)],
)
def test_a_tampered_champion_is_refused_by_forecast_evaluate_and_promotion(
    champion, tamper, refused, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, artifacts = champion
    marker = tmp_path / "payload-ran"
    tamper(artifacts, marker)

    # stpipe forecast: exit code 2 and one line naming the model and the refused file
    assert main(["-q", "forecast", str(config.path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "models:/tiny-t2m/1" in lines[0] and f"refusing to load {refused}" in lines[0]
    assert not marker.exists(), "the payload ran during `stpipe forecast`"

    refusal = rf"models:/tiny-t2m/1.*refusing to load {re.escape(refused)}"
    with pytest.raises(TrackingError, match=refusal):
        jobs.run_evaluation(config)
    assert not marker.exists(), "the payload ran during `stpipe evaluate`"

    # promotion during training scores the champion: refused too, nothing registered
    with pytest.raises(TrackingError, match=refusal):
        register_baseline(config)
    assert not marker.exists(), "the payload ran while scoring the champion for promotion"
    assert [v.version for v in registry.versions(tracking_for(config))] == [1]

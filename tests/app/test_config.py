"""Config loading: valid files load with resolved paths; every mistake names file and key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stpipe.app.config import load_config
from stpipe.core.errors import ConfigError
from stpipe.models import MODELS
from stpipe.models.settings import ConvLstmSettings, ScnnSettings
from tests.tracking.conftest import make_config

from ..models.test_registry import TOY, ToySettings

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
[pipeline]
name = "t"
workdir = "work"

[source]
kind = "netcdf"
paths = "feed/*.nc"
variables = ["t2m", "u10"]

[patches]
input_steps = 6
leads = [1, 3]
size = [8, 8]

[split]
val_start = 2024-01-10
test_start = 2024-01-12
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipe.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["weather.toml", "traffic.toml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(REPO / "data" / "configs" / name)
    assert config.workdir.is_absolute()
    assert config.workdir.parent == REPO / "runs"
    assert set(config.target_variables) <= set(config.input_variables)


def test_loading_a_config_imports_no_torch(tmp_path: Path) -> None:
    """``stpipe ingest`` reads the config; torch (1.1 s to import) is for training."""
    path = write(tmp_path, MINIMAL + '\n[model]\nname = "convlstm"\n')
    code = (
        "import sys; from stpipe.app.config import load_config; "
        f"config = load_config({str(path)!r}); assert config.model.name == 'convlstm'; "
        "print(sorted(m for m in ('torch', 'mlflow', 'prefect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.workdir == tmp_path / "work"
    assert config.source.path_globs == [str(tmp_path / "feed/*.nc")]
    assert config.store_path == tmp_path / "work" / "store.zarr"
    assert config.experiment_name == "t" and config.model_name == "t"
    assert config.input_variables == ["t2m", "u10"] == config.target_variables


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), overrides={"train.epochs": 2})
    assert config.train.epochs == 2
    with pytest.raises(ConfigError, match=r"\[train\] epochs: Input should be greater than 0"):
        load_config(write(tmp_path, MINIMAL), overrides={"train.epochs": 0})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("leads = [1, 3]", "leads = [3, 1]"),
            r"\[patches\] leads: leads must be strictly increasing, got \[3, 1\]",
        ),
        (
            ("input_steps = 6", "input_steps = 'six'"),
            r"\[patches\] input_steps: Input should be a valid integer",
        ),
        (("input_steps = 6\n", ""), r"\[patches\] input_steps: Field required"),
        (('kind = "netcdf"', 'kind = "csv"'), r"\[source\] kind: Input should be 'netcdf', 'grib'"),
        (("[split]", "[split]\nvalidation = 1"), r"\[split\] validation: unknown key"),
        (("test_start = 2024-01-12", "test_start = 2024-01-09"), r"split dates must increase"),
        (('paths = "feed/*.nc"\n', ""), r"source kind 'netcdf' needs 'paths'"),
        (
            ("size = [8, 8]", 'size = [8, 8]\ntarget_variables = ["msl"]'),
            r"target_variables \['msl'\] names variables not in",
        ),
        (
            ("[split]", '[model]\nname = "convlstn"\n\n[split]'),
            r"\[model\] name: 'convlstn' is not a model; known names: scnn_lstm, scnn_gru, "
            r"convlstm, persistence, climatology, persistence_clim_change, advection$",
        ),
        (
            ("[split]", '[model]\nname = "convlstm"\nhiden = [4]\n\n[split]'),
            r"\[model\] convlstm\.hiden: unknown key \(did you mean `hidden`\?\)$",
        ),
        (
            ("[split]", '[model]\nname = "convlstm"\nfilter = 3\nconvlstm_filter = 3\n[split]'),
            r"\[model\]: convlstm_filter is the old spelling of filter; give only filter$",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = MINIMAL.replace(*edit)
    assert text != MINIMAL
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))


def test_model_defaults_to_scnn_lstm(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).model == ScnnSettings()


def test_a_convlstm_config_with_the_old_keys_loads_as_the_new_spelling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = '[model]\nname = "convlstm"\nconvlstm_hidden = [4, 4]\nconvlstm_patch = 1\n'
    new = '[model]\nname = "convlstm"\nhidden = [4, 4]\npatch = 1\n'
    with caplog.at_level("WARNING", logger="stpipe"):
        config = load_config(write(tmp_path, MINIMAL + old))
    assert config.model == ConvLstmSettings(hidden=(4, 4), patch=1)
    assert config == load_config(write(tmp_path, MINIMAL + new))
    assert [m.split(";")[0] for m in caplog.messages] == [
        "[model] convlstm_hidden is now spelt hidden",
        "[model] convlstm_patch is now spelt patch",
    ]
    resolved = config.to_toml()
    assert tomllib.loads(resolved)["model"] == {
        "name": "convlstm",
        "climatology_period": "auto",
        "hidden": [4, 4],
        "filter": 5,
        "patch": 1,
    }
    assert load_config(write(tmp_path, resolved)) == config
    assert {k: v for k, v in config.flat_params().items() if k.startswith("model.")} == {
        "model.name": "convlstm",
        "model.climatology_period": "auto",
        "model.hidden": "[4, 4]",
        "model.filter": "5",
        "model.patch": "1",
    }


def test_a_model_added_to_the_model_table_loads_from_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL + '[model]\nname = "toy"\nscale = 3.0\n')
    with pytest.raises(ConfigError, match=r"\[model\] name: 'toy' is not a model"):
        load_config(path)
    monkeypatch.setitem(MODELS, "toy", TOY)
    config = load_config(path)
    assert config.model == ToySettings(scale=3.0)
    assert config.model_dump(mode="json")["model"] == {
        "name": "toy",
        "climatology_period": "auto",
        "scale": 3.0,
    }


def test_glob_matching_nothing_is_an_error_when_paths_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    load_config(path)  # not checked by default
    with pytest.raises(ConfigError, match=r"\[source\] paths: no file matches"):
        load_config(path, check_paths=True)
    (tmp_path / "feed").mkdir()
    (tmp_path / "feed" / "a.nc").write_bytes(b"")
    assert load_config(path, check_paths=True).source_files() == [tmp_path / "feed" / "a.nc"]


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[pipeline\nname="))


# --- the config as MLflow params and artifact ----------------------------------------------


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

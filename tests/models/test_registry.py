"""The model table: every name validates to its family's settings; unknown names and keys
are refused naming them; old ``convlstm_*`` keys are translated; a model added to the table
alone is validated, built and run."""

from __future__ import annotations

import logging
from typing import Literal

import pytest
import torch
from pydantic import Field, ValidationError
from torch import Tensor, nn

from stpipe.core.errors import ConfigError
from stpipe.models import (
    MODELS,
    Forecaster,
    ModelEntry,
    ModelInputs,
    build_model,
    model_settings,
    registry,
)
from stpipe.models.common import Batch
from stpipe.models.registry import model_entry
from stpipe.models.settings import (
    BaselineSettings,
    ConvLstmSettings,
    ModelSection,
    ScnnSettings,
)

from . import make_batch

KNOWN = (
    "scnn_lstm, scnn_gru, convlstm, persistence, climatology, persistence_clim_change, advection"
)


class ToySettings(ModelSection):
    """A toy family: persistence times ``scale``."""

    name: Literal["toy"] = "toy"
    scale: float = Field(default=1.0, gt=0.0)


class Toy(Forecaster):
    """scale · last input of the targets, at every lead; one (unused) trainable weight."""

    def __init__(self, *, scale: float, **forecaster_args) -> None:
        super().__init__(**forecaster_args)
        self.scale = scale
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch) -> Tensor:
        last = batch["x"][:, -1:, self.target_index]
        return (self.scale * last + self.bias).expand(-1, len(self.leads), -1, -1, -1)


def build_toy(cfg: ToySettings, inputs: ModelInputs) -> Forecaster:
    return Toy(scale=cfg.scale, **inputs.forecaster_args())


TOY = ModelEntry(ToySettings, build_toy)


def small_inputs() -> dict:
    return dict(
        input_variables=["a", "b"],
        target_variables=["b"],
        input_steps=3,
        leads=[1, 2],
        patch_shape=(8, 8),
        n_time_features=4,
        n_static=0,
        norm_mean=[10.0, 10.0],
        norm_std=[1.0, 1.0],
        climatology=None,
        step_s=3600,
    )


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("scnn_lstm", ScnnSettings),
        ("scnn_gru", ScnnSettings),
        ("convlstm", ConvLstmSettings),
        ("persistence", BaselineSettings),
        ("climatology", BaselineSettings),
        ("persistence_clim_change", BaselineSettings),
    ],
)
def test_each_name_validates_to_its_family_and_round_trips(name: str, family: type) -> None:
    cfg = model_settings({"name": name, "climatology_period": "week"})
    assert type(cfg) is family and MODELS[name].settings is family
    assert cfg.name == name and cfg.climatology_period == "week"
    assert model_settings(cfg.model_dump(mode="json")) == cfg


def test_the_table_holds_exactly_the_documented_names() -> None:
    assert ", ".join(MODELS) == KNOWN


def test_no_name_is_scnn_lstm_with_its_defaults() -> None:
    assert model_settings() == model_settings({}) == ScnnSettings()
    assert model_settings({"hidden": 8}) == ScnnSettings(name="scnn_lstm", hidden=8)


def test_each_family_has_only_its_own_keys() -> None:
    assert set(ScnnSettings.model_fields) == {
        "name",
        "climatology_period",
        "hidden",
        "encoder_layers",
        "temporal_kernel",
        "rnn_layers",
        "dropout",
        "residual",
        "baseline",
    }
    assert set(ConvLstmSettings.model_fields) == {
        "name",
        "climatology_period",
        "hidden",
        "filter",
        "patch",
    }
    assert set(BaselineSettings.model_fields) == {"name", "climatology_period"}


def test_unknown_name_is_one_line_listing_the_known_names() -> None:
    with pytest.raises(ValidationError) as info:
        model_settings({"name": "convlstn"})
    (error,) = info.value.errors()
    assert error["loc"] == ("name",)
    assert error["msg"] == f"'convlstn' is not a model; known names: {KNOWN}"
    with pytest.raises(
        ConfigError, match=rf"^\[model\] name 'x' is not a model; known names: {KNOWN}$"
    ):
        model_entry("x")


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        ({"name": "convlstm", "hiden": [4]}, ("convlstm", "hiden")),
        ({"name": "scnn_gru", "droput": 0.2}, ("scnn_gru", "droput")),
        ({"name": "persistence", "hidden": 8}, ("persistence", "hidden")),  # another family's
    ],
)
def test_a_misspelt_key_fails_naming_it(raw: dict, loc: tuple[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        model_settings(raw)
    (error,) = info.value.errors()
    assert (error["loc"], error["type"]) == (loc, "extra_forbidden")


def test_convlstm_keys_are_checked() -> None:
    with pytest.raises(ValidationError, match="filter must be odd, got 4"):
        model_settings({"name": "convlstm", "filter": 4})
    with pytest.raises(ValidationError, match="at least 1 item"):
        model_settings({"name": "convlstm", "hidden": []})


def test_old_convlstm_keys_are_read_in_the_new_spelling_with_a_warning(caplog) -> None:
    old = {"name": "convlstm", "convlstm_hidden": [4, 8], "convlstm_filter": 3, "convlstm_patch": 1}
    with caplog.at_level(logging.WARNING, logger="stpipe.models.settings"):
        cfg = model_settings(old)
    assert cfg == ConvLstmSettings(hidden=(4, 8), filter=3, patch=1)
    assert caplog.messages == [
        "[model] convlstm_hidden is now spelt hidden; read as hidden = [4, 8]",
        "[model] convlstm_filter is now spelt filter; read as filter = 3",
        "[model] convlstm_patch is now spelt patch; read as patch = 1",
    ]


def test_an_old_flat_table_keeps_its_meaning_under_every_model(caplog) -> None:
    old = {"hidden": 8, "dropout": 0.0, "convlstm_hidden": [4], "convlstm_patch": 1}
    with caplog.at_level(logging.WARNING, logger="stpipe.models.settings"):
        scnn = model_settings({"name": "scnn_gru", **old})
        convlstm = model_settings({"name": "convlstm", **old})
        baseline = model_settings({"name": "persistence", **old})
    assert scnn == ScnnSettings(name="scnn_gru", hidden=8, dropout=0.0)
    assert convlstm == ConvLstmSettings(hidden=(4,), patch=1)
    assert baseline == BaselineSettings(name="persistence")
    scnn_only, convlstm_only = "only name = 'scnn_lstm' or 'scnn_gru'", "only name = 'convlstm'"
    assert caplog.messages == [
        f"[model] convlstm_hidden ignored: {convlstm_only} reads it",
        f"[model] convlstm_patch ignored: {convlstm_only} reads it",
        f"[model] hidden ignored: {scnn_only} reads it",
        f"[model] dropout ignored: {scnn_only} reads it",
        "[model] convlstm_hidden is now spelt hidden; read as hidden = [4]",
        "[model] convlstm_patch is now spelt patch; read as patch = 1",
        f"[model] convlstm_hidden ignored: {convlstm_only} reads it",
        f"[model] convlstm_patch ignored: {convlstm_only} reads it",
        f"[model] hidden ignored: {scnn_only} reads it",
        f"[model] dropout ignored: {scnn_only} reads it",
    ]


def test_a_table_in_the_new_spelling_is_strict(caplog) -> None:
    with pytest.raises(ValidationError) as info:
        model_settings({"name": "convlstm", "hidden": [4], "dropout": 0.0})
    assert [e["loc"] for e in info.value.errors()] == [("convlstm", "dropout")]
    assert caplog.messages == []


def test_both_spellings_of_one_key_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^convlstm_filter is the old spelling of filter; give"):
        model_settings({"name": "convlstm", "filter": 3, "convlstm_filter": 5})


def test_a_model_added_to_the_table_alone_is_validated_built_and_run(monkeypatch) -> None:
    monkeypatch.setitem(MODELS, "toy", TOY)
    cfg = model_settings({"name": "toy", "scale": 2.0, "climatology_period": "day"})
    assert cfg == ToySettings(scale=2.0, climatology_period="day")
    with pytest.raises(ValidationError) as info:
        model_settings({"name": "toy", "scael": 2.0})
    assert info.value.errors()[0]["loc"] == ("toy", "scael")

    model = build_model(cfg, **small_inputs())
    batch = make_batch(batch=2, steps=3, leads=(1, 2), n_vars=2, target_index=[1])
    out = model(batch)
    assert isinstance(model, Toy) and out.shape == (2, 2, 1, 8, 8)
    expected = 2.0 * batch["x"][:, -1:, 1:2].expand(-1, 2, -1, -1, -1)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()
    assert model.bias.grad == out.numel()


def test_a_name_removed_from_the_table_is_refused(monkeypatch) -> None:
    without = {name: entry for name, entry in MODELS.items() if name != "convlstm"}
    monkeypatch.setattr(registry, "MODELS", without)  # a copy: the table keeps its order
    known = "scnn_lstm, scnn_gru, persistence, climatology, persistence_clim_change, advection"
    with pytest.raises(ValidationError, match=f"'convlstm' is not a model; known names: {known} "):
        model_settings({"name": "convlstm"})
    with pytest.raises(ConfigError, match="name 'convlstm' is not a model"):
        build_model(ConvLstmSettings(), **small_inputs())

"""The model table: ``[model] name`` → (settings class, builder), the one extension point.

Adding a model is one :data:`MODELS` entry and its module: a settings class deriving from
:class:`~stpipe.models.settings.ModelSection` whose ``name`` is a ``Literal`` of the names it
serves, and a builder ``(settings, ModelInputs) -> Forecaster``.

``[model]`` is the pydantic discriminated union (on ``name``) of the table's settings
classes. :data:`ModelUnion` is that union as a field type: it is assembled from the table
when a section is validated, so a model added to the table is accepted by ``Config`` too.

The table and the settings import no torch (the builders import their networks when they
run): reading a config, as ``stpipe ingest`` does, stays free of torch's 1.1 s import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BeforeValidator, Field, SerializeAsAny, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from stpipe.core.errors import ConfigError
from stpipe.models.settings import (
    BASELINES,
    DEFAULT_MODEL,
    BaselineSettings,
    ConvLstmSettings,
    ModelSection,
    ScnnSettings,
    translate_old_keys,
)

if TYPE_CHECKING:
    from stpipe.models.climatology import Climatology
    from stpipe.models.common import ArrayLike, Forecaster


@dataclass(frozen=True)
class ModelInputs:
    """What a builder gets besides its settings: the data the forecaster is built for.

    ``norm_mean``/``norm_std`` [V_in] are train-split statistics in physical units;
    ``patch_shape`` is (H, W) in cells; ``step_s`` the time step in seconds;
    ``climatology`` (fitted on the train split) is None when there is none.
    """

    input_variables: Sequence[str]
    target_variables: Sequence[str]
    input_steps: int
    leads: Sequence[int]
    patch_shape: tuple[int, int]
    n_time_features: int
    n_static: int
    norm_mean: ArrayLike
    norm_std: ArrayLike
    climatology: Climatology | None
    step_s: int

    def forecaster_args(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~stpipe.models.common.Forecaster`."""
        return dict(
            input_variables=self.input_variables,
            target_variables=self.target_variables,
            input_steps=self.input_steps,
            leads=self.leads,
            step_s=self.step_s,
            norm_mean=self.norm_mean,
            norm_std=self.norm_std,
        )


@dataclass(frozen=True)
class ModelEntry:
    """One table row: the settings class of ``[model]`` and the function that builds it."""

    settings: type[ModelSection]
    build: Callable[[Any, ModelInputs], Forecaster]


def _keeps_level(cfg: ScnnSettings, inputs: ModelInputs) -> bool:
    """Whether the fitted blend keeps the recent level (:mod:`stpipe.models.scnn`): for
    ``baseline = "auto"`` about a climatology of a few weeks
    (:func:`~stpipe.models.climatology.is_the_climate`), when the patch covers the whole
    grid, so that its mean anomaly is the field's (a cold spell, a new air mass). A smaller
    patch's mean anomaly is mostly local weather, which moves on and decays: kept, it lost
    to the blend that reverts (``benchmarks/bench_references.py``).

    Where it keeps the level, the blend starts at the ``advection`` baseline, which keeps
    the whole anomaly and moves it: on the ``regional`` and ``regime`` fields
    (``benchmarks/bench_references.py``, 80 cases) the fitted blend damped about the
    recent level fell more than 2 % behind the best baseline in 59, the same with
    persistence moved as advection moves it in 33, advection itself in 4."""
    from stpipe.models.climatology import is_the_climate

    clim = inputs.climatology
    if cfg.baseline != "auto" or clim is None or is_the_climate(clim.period):
        return False
    height, width = inputs.patch_shape
    return height >= clim.table.shape[2] and width >= clim.table.shape[3]


def _build_scnn(cfg: ScnnSettings, inputs: ModelInputs) -> Forecaster:
    from stpipe.models.baselines import baseline_weights
    from stpipe.models.scnn import ScnnRnn

    keeps_level = _keeps_level(cfg, inputs)
    blend = baseline_weights(
        "advection" if keeps_level else cfg.baseline,
        leads=inputs.leads,
        variables=inputs.target_variables,
        climatology=inputs.climatology,
    )
    return ScnnRnn(
        cell="lstm" if cfg.name == "scnn_lstm" else "gru",
        hidden=cfg.hidden,
        encoder_layers=cfg.encoder_layers,
        temporal_kernel=cfg.temporal_kernel,
        rnn_layers=cfg.rnn_layers,
        dropout=cfg.dropout,
        residual=cfg.residual,
        blend=blend,
        keeps_level=keeps_level,
        climatology=inputs.climatology,
        n_time_features=inputs.n_time_features,
        n_static=inputs.n_static,
        **inputs.forecaster_args(),
    )


def _build_convlstm(cfg: ConvLstmSettings, inputs: ModelInputs) -> Forecaster:
    from stpipe.models.convlstm import ConvLSTM

    height, width = inputs.patch_shape
    if height % cfg.patch or width % cfg.patch:
        raise ConfigError(
            f"[model] patch {cfg.patch} must divide the patch size [patches] size "
            f"{list(inputs.patch_shape)}"
        )
    return ConvLSTM(
        hidden=cfg.hidden, filter_size=cfg.filter, patch=cfg.patch, **inputs.forecaster_args()
    )


def _build_baseline(cfg: BaselineSettings, inputs: ModelInputs) -> Forecaster:
    from stpipe.models.baselines import Baseline

    return Baseline(cfg.name, climatology=inputs.climatology, **inputs.forecaster_args())


MODELS: dict[str, ModelEntry] = {
    "scnn_lstm": ModelEntry(ScnnSettings, _build_scnn),
    "scnn_gru": ModelEntry(ScnnSettings, _build_scnn),
    "convlstm": ModelEntry(ConvLstmSettings, _build_convlstm),
    **{name: ModelEntry(BaselineSettings, _build_baseline) for name in BASELINES},
}


def _not_a_model(name: object) -> str:
    return f"{name!r} is not a model; known names: {', '.join(MODELS)}"


def model_entry(name: str) -> ModelEntry:
    """The table row of ``name``; ConfigError listing the known names if there is none."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"[model] name {_not_a_model(name)}") from None


@functools.cache
def _union(classes: tuple[type[ModelSection], ...]) -> TypeAdapter[Any]:
    return TypeAdapter(Annotated[Union[classes], Field(discriminator="name")])  # noqa: UP007


def model_settings(raw: Mapping[str, Any] | ModelSection | None = None) -> ModelSection:
    """A ``[model]`` table validated as the settings class its ``name`` picks.

    No ``name``: ``scnn_lstm``; None: its defaults. An old flat table (with ``convlstm_*``
    keys) is read with the meaning it had (:func:`~stpipe.models.settings.translate_old_keys`,
    ValueError if it mixes in a new spelling). A name not in the table, a bad or unknown key:
    pydantic's ValidationError naming the key (``name`` for the first; ``<name>.<key>``).
    """
    if isinstance(raw, ModelSection):
        return raw
    table = translate_old_keys(raw or {})
    name = table.setdefault("name", DEFAULT_MODEL)
    if not isinstance(name, str) or name not in MODELS:
        problem = PydanticCustomError("unknown_model", "{problem}", {"problem": _not_a_model(name)})
        raise ValidationError.from_exception_data(
            "ModelSection", [InitErrorDetails(type=problem, loc=("name",), input=name)]
        )
    classes = tuple(dict.fromkeys(entry.settings for entry in MODELS.values()))
    return _union(classes).validate_python(table)


def _validate_section(value: Any) -> Any:
    return model_settings(value) if isinstance(value, Mapping) else value


ModelUnion = Annotated[SerializeAsAny[ModelSection], BeforeValidator(_validate_section)]
"""``Config.model``'s type: a ``[model]`` table → its family's settings (dumped whole)."""


def build_model(
    model_cfg: ModelSection,
    *,
    input_variables: Sequence[str],
    target_variables: Sequence[str],
    input_steps: int,
    leads: Sequence[int],
    patch_shape: tuple[int, int],
    n_time_features: int,
    n_static: int,
    norm_mean: ArrayLike,
    norm_std: ArrayLike,
    climatology: Climatology | None,
    step_s: int,
) -> Forecaster:
    """The forecaster ``model_cfg.name`` for these variables, steps and patch shape.

    ``norm_mean``/``norm_std`` [V_in] are train-split statistics in physical units;
    ``climatology`` (fitted on the train split) is required by the climatology baselines and
    used, when given, by ``scnn_*`` (inputs, baseline maps and the ``auto`` baseline).
    """
    inputs = ModelInputs(
        input_variables=input_variables,
        target_variables=target_variables,
        input_steps=input_steps,
        leads=leads,
        patch_shape=patch_shape,
        n_time_features=n_time_features,
        n_static=n_static,
        norm_mean=norm_mean,
        norm_std=norm_std,
        climatology=climatology,
        step_s=step_s,
    )
    return model_entry(model_cfg.name).build(model_cfg, inputs)

"""The ``[model]`` section: which network (or baseline) and its shape, one class per family.

``name`` picks the family (:data:`stpipe.models.registry.MODELS` maps each name to its
settings class and builder); each family's class has only its own keys, so a key of another
family is an unknown key. Shared by all: ``name`` and ``climatology_period``.

- ``scnn_lstm``, ``scnn_gru``: :class:`ScnnSettings`;
- ``convlstm``: :class:`ConvLstmSettings`;
- ``persistence``, ``climatology``, ``persistence_clim_change``, ``advection``:
  :class:`BaselineSettings`.

Files written before the families had their own classes have one flat ``[model]`` table,
where every model read its own keys and ignored the others', and the ConvLSTM keys were
spelt ``convlstm_hidden``, ``convlstm_filter``, ``convlstm_patch``. Such a table (it has a
``convlstm_*`` key) keeps its meaning: :func:`translate_old_keys` reads those keys as
``hidden``, ``filter``, ``patch`` and drops the keys the chosen model never read, with a
warning for each.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import Field, PositiveInt, field_validator

from stpipe.core.settings import Settings

BaselineName = Literal["persistence", "climatology", "persistence_clim_change", "advection"]
BASELINES: tuple[BaselineName, ...] = get_args(BaselineName)
"""The baselines' names (:mod:`stpipe.models.baselines` computes them), here so that the
configuration's schema validates them without importing torch."""

log = logging.getLogger(__name__)

DEFAULT_MODEL = "scnn_lstm"

SCNN_NAMES = ("scnn_lstm", "scnn_gru")
# The keys of the old flat [model] table that moved to one family: old key -> (the model
# names that read it, its key in their settings). A table with a convlstm_* key is old.
OLD_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "convlstm_hidden": (("convlstm",), "hidden"),
    "convlstm_filter": (("convlstm",), "filter"),
    "convlstm_patch": (("convlstm",), "patch"),
    **{
        key: (SCNN_NAMES, key)
        for key in (
            "hidden",
            "encoder_layers",
            "temporal_kernel",
            "rnn_layers",
            "dropout",
            "residual",
            "baseline",
        )
    },
}


class ModelSection(Settings):
    """What every ``[model]`` family has; the families below add their own keys."""

    name: str = Field(description="Learned model, or a baseline (evaluation).")
    climatology_period: Literal["auto", "day", "week", "doy"] = Field(
        default="auto",
        description="Climatology slots: hour of day ('day'), time of day × day of week "
        "('week') or time of day × day of year smoothed over ±30 days ('doy'); 'auto': "
        "'doy' when the train split spans 365 days or more, else 'day' on lat/lon grids "
        "and 'week' on cell grids (traffic).",
    )


class ScnnSettings(ModelSection):
    """``scnn_lstm`` / ``scnn_gru``: :class:`~stpipe.models.scnn.ScnnRnn`."""

    name: Literal["scnn_lstm", "scnn_gru"] = DEFAULT_MODEL
    hidden: PositiveInt = Field(default=64, description="Width of the latent maps / RNN state.")
    encoder_layers: PositiveInt = Field(default=2, description="Down-sampling conv stages.")
    temporal_kernel: PositiveInt = Field(default=3, description="SCNN kernel along time.")
    rnn_layers: PositiveInt = 1
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    residual: bool = Field(default=True, description="Predict the change over a baseline.")
    baseline: Literal["auto"] | BaselineName = Field(
        default="auto",
        description="What a residual model adds its output to (and predicts when untrained): "
        "'auto' is the per-lead least-squares blend of persistence, climatology and "
        "persistence + climatological change fitted on the train split with the climatology "
        "held out (persistence when there is no climatology); where the patch is the whole "
        "grid and the climatology of a few weeks it is the 'advection' baseline instead, "
        "which keeps the whole anomaly, so a shift of the whole field (a cold spell) is kept "
        "rather than damped towards the train days' mean.",
    )


class ConvLstmSettings(ModelSection):
    """``convlstm``: :class:`~stpipe.models.convlstm.ConvLSTM`, the reference."""

    name: Literal["convlstm"] = "convlstm"
    hidden: tuple[PositiveInt, ...] = Field(
        default=(128, 128, 128, 128), min_length=1, description="Hidden size per ConvLSTM layer."
    )
    filter: PositiveInt = Field(default=5, description="Kernel size (odd).")
    patch: PositiveInt = Field(
        default=2, description="Space-to-depth factor ([patches] size must divide by it)."
    )

    @field_validator("filter")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"filter must be odd, got {v}")
        return v


class BaselineSettings(ModelSection):
    """A reference forecast (evaluation): :class:`~stpipe.models.baselines.Baseline`."""

    name: BaselineName


def translate_old_keys(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` (a ``[model]`` table) in today's spelling; unchanged unless it is old.

    An old (flat) table has a ``convlstm_*`` key. Its keys that the chosen model never read
    are dropped, then those it read are renamed to today's spelling, each with a warning; an
    old table that also gives a key in the new spelling is refused (ValueError).
    """
    out = dict(raw)
    if not any(old in out and old != new for old, (_, new) in OLD_KEYS.items()):
        return out
    name = out.get("name", DEFAULT_MODEL)
    for old, (readers, _) in OLD_KEYS.items():
        if old in out and name not in readers:
            del out[old]
            log.warning(
                "[model] %s ignored: only name = %s reads it", old, " or ".join(map(repr, readers))
            )
    for old, (_, new) in OLD_KEYS.items():
        if old not in out or old == new:
            continue
        if new in out:
            raise ValueError(f"{old} is the old spelling of {new}; give only {new}")
        out[new] = out.pop(old)
        log.warning("[model] %s is now spelt %s; read as %s = %r", old, new, new, out[new])
    return out

"""The ``[model]`` section: which network (or baseline) and its shape."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from stpipe.core.settings import Settings


class ModelSection(Settings):
    name: Literal[
        "scnn_lstm",
        "scnn_gru",
        "convlstm",
        "persistence",
        "climatology",
        "persistence_clim_change",
    ] = Field(default="scnn_lstm", description="Learned model, or a baseline (evaluation).")
    hidden: PositiveInt = Field(default=64, description="Width of the latent maps / RNN state.")
    encoder_layers: PositiveInt = Field(default=2, description="Down-sampling conv stages.")
    temporal_kernel: PositiveInt = Field(default=3, description="SCNN kernel along time.")
    rnn_layers: PositiveInt = 1
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    residual: bool = Field(default=True, description="Predict the change over a baseline.")
    baseline: Literal["auto", "persistence", "climatology", "persistence_clim_change"] = Field(
        default="auto",
        description="What a residual model adds its output to (and predicts when untrained): "
        "'auto' is the per-lead least-squares blend of persistence, climatology and "
        "persistence + climatological change fitted on the train split with the climatology "
        "held out (persistence when there is no climatology).",
    )
    climatology_period: Literal["auto", "day", "week"] = Field(
        default="auto",
        description="Climatology slots: hour of day ('day') or time of day × day of week "
        "('week'); 'auto': 'day' on lat/lon grids, 'week' on cell grids (traffic).",
    )
    convlstm_hidden: tuple[PositiveInt, ...] = Field(
        default=(128, 128, 128, 128), min_length=1, description="ConvLSTM hidden size per layer."
    )
    convlstm_filter: PositiveInt = Field(default=5, description="ConvLSTM kernel size (odd).")
    convlstm_patch: PositiveInt = Field(
        default=2, description="ConvLSTM space-to-depth factor (patch size must divide by it)."
    )

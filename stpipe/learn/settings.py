"""The ``[train]`` section: optimisation, precision, devices, calibration, fine-tuning.

``init_from`` picks where training starts: ``"none"`` (the seeded initialisation, a full
training of ``epochs`` at ``lr``), ``"champion"`` (the registered champion's weights) or a
version number of ``[mlflow] model_name``. A run that starts from registered weights trains
``finetune_epochs`` at ``finetune_lr`` instead (:meth:`TrainSection.finetuning`); with
``"champion"`` and no champion yet (a pipeline's first night) it trains in full.

``refit`` trains each of them once more on train + validation for the epochs early
stopping chose (:func:`stpipe.learn.train.run.train_model`).

``members`` trains that many models, with seeds ``seed``, ``seed + 1``, …, and forecasts
their mean (:mod:`stpipe.learn.train.members`); a fine-tune starts each member from the
registered version's member of the same index.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, PositiveInt, field_validator

from stpipe.core.settings import Settings

# The default [train] members: the measurement behind it is in benchmarks/QUALITY.md.
MEMBERS = 3


class TrainSection(Settings):
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    patience: PositiveInt = Field(default=5, description="Early stopping, in epochs.")
    seed: int = 0
    members: PositiveInt = Field(
        default=MEMBERS,
        description="Models trained with seeds seed, seed+1, …, each calibrated on its own; "
        "the forecast is their mean (a lead where every member falls back to the reference "
        "is that reference's forecast, bit for bit). Training costs this many times one model.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    cuda_graph: bool = Field(
        default=True,
        description="On one GPU without compile or fp16: replay each step as a CUDA graph.",
    )
    num_workers: int = Field(default=0, ge=0)
    max_batches_per_epoch: PositiveInt | None = None
    max_val_batches: PositiveInt | None = Field(
        default=None, description="Cap on validation batches per epoch; default: the whole split."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="Autocast dtype; 'auto': bf16 on GPUs that have it (else fp16), fp32 on CPU.",
    )
    schedule: Literal["cosine", "onecycle", "constant"] = Field(
        default="cosine", description="Per-step learning-rate schedule after the warm-up."
    )
    warmup_frac: float = Field(
        default=0.05, ge=0, lt=1, description="Share of all steps spent warming up the lr."
    )
    calibrate: bool = Field(
        default=True,
        description="After training, blend each lead with the baseline least wrong on the "
        "train split, the model's weight fitted on the validation split and shrunk where it "
        "holds few independent forecasts (scnn models).",
    )
    refit: bool = Field(
        default=False,
        description="After the run early-stopped and calibrated on the validation split, "
        "train again from the same start on train + validation for the epochs it chose "
        "(the same schedule), keeping the calibration: the model learns the newest days "
        "before the test window. Promotion then scores on the test window. Measured in "
        "benchmarks/QUALITY.md: better on a few weeks of data, worse on a year.",
    )
    lead_weighting: Literal["baseline", "uniform"] = Field(
        default="baseline",
        description="Loss weight per lead: 1/MSE of the best baseline at that lead, or equal.",
    )
    init_from: Literal["none", "champion"] | PositiveInt = Field(
        default="none",
        description="Start from: 'none' (seeded initialisation, full training), 'champion' "
        "(the registered champion's weights; full training while there is none) or a "
        "registered version number. A version whose model card differs from this config's "
        "(model, patch shape, variables, leads, grid) is refused.",
    )
    finetune_epochs: PositiveInt = Field(
        default=3, description="Epochs of a run that starts from registered weights."
    )
    finetune_lr: float = Field(
        default=5e-4, gt=0, description="Peak learning rate of a run that starts from weights."
    )

    @field_validator("init_from", mode="before")
    @classmethod
    def _start(cls, v: object) -> object:
        version = isinstance(v, int) and not isinstance(v, bool) and v > 0
        if v not in ("none", "champion") and not version:
            raise ValueError(
                f"must be 'none', 'champion' or a registered version number (an integer > 0), "
                f"got {v!r}"
            )
        return v

    def member(self, index: int) -> Self:
        """This section as member ``index`` of ``members`` trains: one model, seed
        ``seed + index`` (member 0 is the run a single model of this section would be)."""
        return self.model_copy(update={"seed": self.seed + index, "members": 1})

    def finetuning(self) -> Self:
        """This section as a fine-tuning run trains: ``finetune_epochs`` and ``finetune_lr``
        in place of ``epochs`` and ``lr``."""
        return self.model_copy(update={"epochs": self.finetune_epochs, "lr": self.finetune_lr})

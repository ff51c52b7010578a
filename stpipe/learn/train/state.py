"""What a run records: per-epoch logs, pass results, the resumable run state, the result."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stpipe.io.checkpoint import capture_rng
from stpipe.learn.settings import TrainSection
from stpipe.models import Climatology, Forecaster


@dataclass(frozen=True)
class EpochLog:
    """One epoch, as the log and ``on_epoch_end`` see it.

    ``train_loss`` is the lead-weighted MSE in normalised units and ``val_loss`` the
    early-stopping score, mean_l min(MSE(l)/MSE_ref(l), 1) (package docstring). ``val_rmse``
    and ``val_ref_rmse`` (the best baseline) are per lead in the targets' physical units,
    pooled over target variables. ``data_wait_frac`` is the share of the epoch the device
    waited for the loader (:func:`stpipe.learn.context.iterate_on_device`).
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_rmse: tuple[float, ...]
    val_ref_rmse: tuple[float, ...]
    lr: float
    samples_per_s: float
    data_wait_frac: float
    seconds: float
    improved: bool
    member: int | None = None  # which of several members (``[train] members``) it trained


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A finished run. ``model`` (CPU, eval mode) and ``state`` are the best epoch's, or
    with ``refit_epochs`` > 0 the refit's (``[train] refit``: that many epochs on train +
    validation); ``best_epoch`` 0 means no epoch beat the starting weights
    (``initial_score``). The history and scores are the held-out run's.

    Of several members (:mod:`~stpipe.learn.train.members`): ``model`` is their mean,
    ``members`` each member's result, and the scores and early stopping member 0's."""

    model: Forecaster
    state: dict[str, Tensor]
    history: tuple[EpochLog, ...]
    best_epoch: int
    best_score: float
    initial_score: float
    stopped_early: bool
    run_key: str
    checkpoint_dir: Path
    device: str
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    climatology: Climatology
    seconds: float
    n_parameters: int
    members: tuple[TrainResult, ...] = ()
    refit_epochs: int = 0

    @property
    def refit(self) -> bool:
        """Whether it (one member at least) trained on the validation days too."""
        return any(run.refit_epochs for run in self.members or (self,))


@dataclass(frozen=True)
class EpochStats:
    """One training pass, reduced across ranks. ``seconds`` is this rank's wall time."""

    loss: float
    samples: int
    seconds: float
    wait_seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_frac(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Validation:
    """A validation pass: the score mean_l min(MSE(l)/MSE_ref(l), 1); per lead the model's and
    the best baseline's MSE (normalised units, pooled over variables) and RMSE (physical)."""

    score: float
    mse: tuple[float, ...]
    ref_mse: tuple[float, ...]
    rmse: tuple[float, ...]
    ref_rmse: tuple[float, ...]


@dataclass
class RunState:
    """What a checkpoint carries besides the module/optimizer states."""

    lead_weights: Tensor
    epoch: int = 0
    initial_score: float = math.inf
    best_epoch: int = 0
    best_score: float = math.inf
    best_state: dict[str, Tensor] | None = None
    bad_epochs: int = 0
    history: list[EpochLog] = field(default_factory=list)

    def start(self, val: Validation, *, model: nn.Module) -> None:
        """Epoch 0: the starting weights are the best so far (a residual model's starting
        point is its baseline; a fine-tuned one's the weights it was given)."""
        self.initial_score = val.score
        if math.isfinite(val.score):
            self.best_score, self.best_state = val.score, cpu_state(model)

    def finished(self, cfg: TrainSection) -> bool:
        return self.epoch >= cfg.epochs or self.bad_epochs >= cfg.patience

    def stopped_early(self, cfg: TrainSection) -> bool:
        return self.bad_epochs >= cfg.patience

    def record(
        self,
        epoch: int,
        *,
        stats: EpochStats,
        val: Validation,
        lr: float,
        model: nn.Module,
    ) -> EpochLog:
        improved = math.isfinite(val.score) and val.score < self.best_score
        if improved:
            self.best_epoch, self.best_score, self.bad_epochs = epoch, val.score, 0
            self.best_state = cpu_state(model)
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        entry = EpochLog(
            epoch=epoch,
            train_loss=stats.loss,
            val_loss=val.score,
            val_rmse=val.rmse,
            val_ref_rmse=val.ref_rmse,
            lr=lr,
            samples_per_s=stats.samples_per_s,
            data_wait_frac=stats.data_wait_frac,
            seconds=stats.seconds,
            improved=improved,
        )
        self.history.append(entry)
        return entry

    def payload(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
    ) -> dict[str, Any]:
        return {
            "model": cpu_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": capture_rng(),
            "loader_epoch": self.epoch,
            "lead_weights": self.lead_weights,
            "epoch": self.epoch,
            "initial_score": self.initial_score,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "best_model": self.best_state,
            "bad_epochs": self.bad_epochs,
            "history": [asdict(entry) for entry in self.history],
        }

    @classmethod
    def from_payload(cls, saved: Mapping[str, Any]) -> RunState:
        history = [
            EpochLog(
                **{**h, "val_rmse": tuple(h["val_rmse"]), "val_ref_rmse": tuple(h["val_ref_rmse"])}
            )
            for h in saved["history"]
        ]
        return cls(
            lead_weights=saved["lead_weights"],
            epoch=saved["epoch"],
            initial_score=saved["initial_score"],
            best_epoch=saved["best_epoch"],
            best_score=saved["best_score"],
            best_state=saved["best_model"],
            bad_epochs=saved["bad_epochs"],
            history=history,
        )


def describe_epoch(entry: EpochLog, cfg: TrainSection) -> str:
    """The log line of an epoch."""
    rmse = " ".join(
        f"{m:.3g}/{r:.3g}" for m, r in zip(entry.val_rmse, entry.val_ref_rmse, strict=True)
    )
    return (
        f"epoch {entry.epoch}/{cfg.epochs}: train {entry.train_loss:.4f} val {entry.val_loss:.4f}"
        f"{' *' if entry.improved else ''}  rmse/best-baseline per lead {rmse}  "
        f"{entry.samples_per_s:.0f} samples/s, data wait {entry.data_wait_frac:.0%}"
    )


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A copy of ``model``'s state dict on the CPU (detached from the live tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

"""A training run in three pieces, :meth:`Trainer.setup`, :meth:`Trainer.run_epochs` and
:meth:`Trainer.finish` (:mod:`stpipe.learn.train.run` composes them with the run key and
checkpoints), and the loaders and starting model they use."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stpipe.core.errors import ConfigError, StoreError
from stpipe.io.checkpoint import (
    restore_rng,
    save_checkpoint,
)
from stpipe.learn.context import (
    DataContext,
    Distributed,
    build_baselines,
    build_forecaster,
    grid_coordinates,
    make_split_loader,
)
from stpipe.learn.loader import PatchLoader
from stpipe.learn.settings import TrainSection
from stpipe.learn.train.calibration import calibrate, independent_forecasts
from stpipe.learn.train.distributed import barrier, wrap_model
from stpipe.learn.train.loss import loss_lead_weights
from stpipe.learn.train.optim import make_optimizer, make_scheduler
from stpipe.learn.train.passes import VALIDATION_SCORE, train_epoch, validate
from stpipe.learn.train.progress import ProgressBar
from stpipe.learn.train.runtime import determinism, resolve_precision, use_channels_last
from stpipe.learn.train.state import (
    EpochLog,
    RunState,
    Validation,
    cpu_state,
    describe_epoch,
)
from stpipe.learn.train.step import TrainStep
from stpipe.models import Forecaster, count_parameters
from stpipe.models.climatology import ClimatologyLookup
from stpipe.models.settings import ModelSection

# One logger for the package, under the name it had as a single module.
log = logging.getLogger(__package__)


# Keys that do not change the weights a run ends with: how fast or how visibly it goes, and
# whether a refit (a run of its own, with its own key) follows it.
_NOT_WEIGHTS = {"num_workers", "device", "refit"}


def run_identity(data: DataContext, model: ModelSection, train: TrainSection) -> dict[str, Any]:
    """What decides a run's weights besides the data and the device (for its run key)."""
    # train_end is set only for a refit: the keys of every other run stay what they were
    splits = {
        k: str(v) for k, v in asdict(data.splits).items() if k != "train_end" or v is not None
    }
    train_values = train.model_dump(mode="json")
    return {
        "patches": asdict(data.spec),
        "split": splits,
        "model": model.model_dump(mode="json"),
        "train": {k: v for k, v in train_values.items() if k not in _NOT_WEIGHTS},
        "validation_score": VALIDATION_SCORE,
    }


@dataclass(eq=False)
class Trainer:
    """One run's pieces, built by :meth:`setup`: the model (on ``device``, trained in place),
    the loaders of the train and validation splits, the optimizer, schedule and grad scaler,
    the baselines it is scored against, the step and the run state (:class:`RunState`)."""

    data: DataContext
    model_cfg: ModelSection
    cfg: TrainSection
    dist: Distributed
    device: torch.device
    precision: torch.dtype
    model: Forecaster
    n_parameters: int
    train_loader: PatchLoader
    val_loader: PatchLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    baselines: list[Forecaster]
    state: RunState
    step: TrainStep

    @classmethod
    def setup(
        cls,
        data: DataContext,
        *,
        model: ModelSection,
        train: TrainSection,
        device: torch.device,
        dist: Distributed | None = None,
        init_from: Mapping[str, Tensor] | None = None,
        saved: Mapping[str, Any] | None = None,
        steps_per_epoch: int | None = None,
    ) -> Trainer:
        """A run of ``model`` (``[model]``) with ``train`` (``[train]``) on ``data``.

        Call it inside ``determinism(device, seed=train.seed)``: the initial weights and the
        first validation draw on the seeded generators. ``init_from``: starting weights
        instead of the seeded ones. ``saved``: a checkpoint payload
        (:meth:`RunState.payload`) to resume from: its module, optimizer, scheduler, scaler
        and RNG states are restored. Without it the starting weights are validated (epoch 0)
        and the loss's lead weights come from that validation's best baselines.
        ``steps_per_epoch``: the schedule's steps per epoch (default: the train loader's
        batches), for a caller that runs its own number of steps.
        """
        dist = dist or Distributed()
        net, n_parameters = _starting_model(model, data, device=device, init_from=init_from)
        train_loader, val_loader = split_loaders(data, train, dist=dist, device=device)
        precision = resolve_precision(train.precision, device)
        optimizer = make_optimizer(net, train, device=device)
        scheduler = make_scheduler(
            optimizer, train, steps_per_epoch=steps_per_epoch or len(train_loader)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
        baselines = [b.to(device) for b in build_baselines(data).values()]
        if saved is None:
            initial = validate(
                net, val_loader, baselines=baselines, precision=precision, device=device, dist=dist
            )
            state = RunState(
                lead_weights=loss_lead_weights(initial.ref_mse, mode=train.lead_weighting)
            )
            state.start(initial, model=net)
        else:
            net.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            state = RunState.from_payload(saved)
            restore_rng(saved["rng"])
        step = TrainStep(
            wrap_model(net, compile_model=train.compile, dist=dist, device=device),
            net,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            lead_weights=state.lead_weights,
            grad_clip=train.grad_clip,
            precision=precision,
            device=device,
            cuda_graph=train.cuda_graph,
        )
        return cls(
            data=data,
            model_cfg=model,
            cfg=train,
            dist=dist,
            device=device,
            precision=precision,
            model=net,
            n_parameters=n_parameters,
            train_loader=train_loader,
            val_loader=val_loader,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            baselines=baselines,
            state=state,
            step=step,
        )

    def validate(self) -> Validation:
        """Score the model as it is now against the best baseline on the validation split."""
        return validate(
            self.model,
            self.val_loader,
            baselines=self.baselines,
            precision=self.precision,
            device=self.device,
            dist=self.dist,
        )

    def run_epoch(
        self,
        epoch: int,
        *,
        on_step: Callable[[int, Callable[[], float], float], None] | None = None,
    ) -> EpochLog:
        """Train epoch ``epoch`` (its shuffle: ``(seed, epoch)``), validate, record it."""
        self.train_loader.set_epoch(epoch)
        stats = train_epoch(self.step, self.train_loader, dist=self.dist, on_step=on_step)
        val = self.validate()
        lr = self.optimizer.param_groups[0]["lr"]
        return self.state.record(epoch, stats=stats, val=val, lr=lr, model=self.model)

    def run_epochs(
        self,
        *,
        checkpoint: Path | None = None,
        on_epoch_end: Callable[[EpochLog], None] | None = None,
        progress: bool = False,
        stop_after: int | None = None,
    ) -> None:
        """Epoch after epoch until ``[train] epochs``, early stopping (``patience``) or
        epoch ``stop_after``.

        After each epoch rank 0 writes ``checkpoint`` (when given) and logs the epoch, every
        rank waits for the others, then rank 0 calls ``on_epoch_end``.
        """
        with ProgressBar(enabled=progress and self.dist.is_main) as bar:
            last = min(self.cfg.epochs, stop_after or self.cfg.epochs)
            while not self.state.finished(self.cfg) and self.state.epoch < last:
                epoch = self.state.epoch + 1
                steps = len(self.train_loader)
                entry = self.run_epoch(epoch, on_step=bar.epoch(epoch, last, steps))
                if self.dist.is_main:
                    if checkpoint is not None:
                        save_checkpoint(checkpoint, self.checkpoint_payload())
                    log.info(describe_epoch(entry, self.cfg))
                barrier(self.dist)
                if on_epoch_end is not None and self.dist.is_main:
                    on_epoch_end(entry)

    def checkpoint_payload(self) -> dict[str, Any]:
        """What ``last.pt`` holds: the states of the run so far (``saved`` of :meth:`setup`)."""
        return self.state.payload(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler
        )

    def finish(self, *, calibration_from: Forecaster | None = None) -> Forecaster:
        """The best epoch's model (the starting weights if no epoch beat them), on the CPU in
        eval mode; calibrated on the validation split (:func:`calibrate`) when ``[train]
        calibrate`` is on and the model is ``calibratable``. With ``calibration_from`` (a
        refit): the last epoch's weights with that model's calibration."""
        final = build_forecaster(self.model_cfg, self.data)
        if calibration_from is not None:
            _load_weights(final, cpu_state(self.model), origin="last epoch")
            final.load_calibration(calibration_from)
            return final.eval()
        _load_weights(final, self.state.best_state or cpu_state(self.model), origin="best epoch")
        final.eval()
        if self.cfg.calibrate and final.calibratable:
            with determinism(self.device, seed=self.cfg.seed):
                calibration = calibrate(
                    final.to(self.device),
                    self.val_loader,
                    independent=_independent_validation_forecasts(self.data, final),
                    history=reference_loader(
                        self.data, self.cfg, dist=self.dist, device=self.device
                    ),
                    precision=self.precision,
                    device=self.device,
                    dist=self.dist,
                )
            final.cpu()
            if self.dist.is_main:
                log.info("calibration on the validation split: %s", calibration)
        return final


def _independent_validation_forecasts(data: DataContext, model: Forecaster) -> Tensor:
    """:func:`independent_forecasts` of the validation split, per lead of ``model``."""
    _, _, rows, cols = grid_coordinates(data)
    return independent_forecasts(
        (data.splits.test_start - data.splits.val_start) / np.timedelta64(1, "s"),
        step_s=data.step_s,
        leads=model.leads,
        grid=(len(rows), len(cols)),
        patch=data.spec.size,
    )


REFERENCE_SAMPLE_SEED = 0


def reference_loader(
    data: DataContext,
    cfg: TrainSection,
    *,
    dist: Distributed | None = None,
    device: torch.device | None = None,
) -> PatchLoader:
    """The train split's patches that calibration chooses the reference on (its rule 1):
    all of them, or where ``max_batches_per_epoch`` caps an epoch, one shuffled sample of
    that many batches drawn with :data:`REFERENCE_SAMPLE_SEED`. The same sample for every
    member whatever its seed, and for a fresh run and its resumption alike: the train
    loader's own sample changes with the seed and with the epoch training ended at, and
    where two baselines are close (climatology and advection at 24 h on a year of data)
    that flipped the reference between the two."""
    return make_split_loader(
        data,
        split="train",
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=False,
        max_batches=cfg.max_batches_per_epoch,
        seed=REFERENCE_SAMPLE_SEED,
        num_workers=0,  # one pass without the model: not worth a second worker pool
        dist=dist,
        device=device,
    )


def split_loaders(
    data: DataContext, cfg: TrainSection, *, dist: Distributed, device: torch.device
) -> tuple[PatchLoader, PatchLoader]:
    """The train loader (shuffled, full batches, ``max_batches_per_epoch``) and the
    validation loader (in order, ``max_val_batches``) of this rank's shard."""
    loader_args = dict(
        batch_size=cfg.batch_size,
        dist=dist,
        device=device,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
    )
    train_loader = make_split_loader(
        data,
        split="train",
        shuffle=True,
        drop_last=True,
        max_batches=cfg.max_batches_per_epoch,
        **loader_args,
    )
    val_loader = make_split_loader(
        data,
        split="val",
        shuffle=False,
        drop_last=False,
        max_batches=cfg.max_val_batches,
        **loader_args,
    )
    if len(train_loader) == 0:
        raise StoreError(
            f"{data.store_path}: the train split has fewer patches than one batch "
            f"([train] batch_size {cfg.batch_size}); lower it or ingest more data"
        )
    return train_loader, val_loader


def _starting_model(
    model_cfg: ModelSection,
    data: DataContext,
    *,
    device: torch.device,
    init_from: Mapping[str, Tensor] | None,
) -> tuple[Forecaster, int]:
    """The model to train, on ``device``, and its number of trainable parameters."""
    model = build_forecaster(model_cfg, data)
    if init_from is not None:
        # The climatology is this data's (its train split's), not the starting weights':
        # the references, and a lead's fallback to a baseline, are then the baselines that
        # evaluation and promotion compute, bit for bit.
        _load_weights(model, {**init_from, **_climatology_state(model)}, origin="init_from")
    model.reset_calibration()  # trained uncalibrated, calibrated on this validation split
    n_parameters = count_parameters(model)
    model.to(device)
    if device.type == "cuda":
        use_channels_last(model)
    return model, n_parameters


def _climatology_state(model: nn.Module) -> dict[str, Tensor]:
    """The buffers of ``model``'s climatology lookups, by their names in its state."""
    return {
        f"{name}.{buffer}": value
        for name, module in model.named_modules()
        if isinstance(module, ClimatologyLookup)
        for buffer, value in module.named_buffers(recurse=False)
    }


def _load_weights(model: nn.Module, state: Mapping[str, Tensor], *, origin: str) -> None:
    try:
        model.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise ConfigError(
            f"{origin}: the weights do not fit the {type(model).__name__} that [model] "
            f"describes (was the model's config changed?): {str(exc).splitlines()[0]}"
        ) from exc

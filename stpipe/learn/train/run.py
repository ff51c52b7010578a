"""A run from its key to its result: :func:`train_model` sets up or resumes a
:class:`~stpipe.learn.train.trainer.Trainer` under its run key (:class:`RunPlace`), runs its
epochs with a checkpoint after each, finishes it, and with ``[train] refit`` trains the same
start again on train + validation (:func:`refit`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stpipe.io.checkpoint import LAST, load_checkpoint, run_key, state_digest
from stpipe.learn.context import DataContext, Distributed, resolve_device
from stpipe.learn.settings import TrainSection
from stpipe.learn.train.distributed import init_process_group
from stpipe.learn.train.runtime import determinism
from stpipe.learn.train.state import EpochLog, TrainResult, cpu_state
from stpipe.learn.train.trainer import Trainer, run_identity
from stpipe.models import Forecaster
from stpipe.models.settings import ModelSection

# One logger for the package, under the name it had as a single module.
log = logging.getLogger(__package__)


def train_model(
    data: DataContext,
    *,
    model: ModelSection,
    train: TrainSection,
    checkpoint_root: Path,
    resume: bool = True,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    progress: bool = True,
    init_from: Mapping[str, Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` (``[model]``) with ``train`` (``[train]``) on ``data`` (see the package
    docstring); checkpoints go to ``checkpoint_root/<run key>/``.

    ``init_from``: a state dict (e.g. the champion's) to start from instead of the seeded
    initialisation, for nightly fine-tuning; it is part of the run key. ``on_epoch_end`` runs
    on rank 0 after each epoch's checkpoint is on disk: a job layer logs metrics there, and
    an exception it raises stops training with that checkpoint kept (a re-run resumes).
    With ``[train] refit``, where an epoch beat the start, the model returned is
    :func:`refit`'s; the scores and epochs of the result stay this run's.
    """
    started = time.perf_counter()
    dist = Distributed.from_env()
    init_process_group(dist)
    device = resolve_device(train.device, dist)
    run = RunPlace(checkpoint_root, device, dist, resume=resume, progress=progress)
    trainer, key = run.train(data, model, train, init_from=init_from, on_epoch_end=on_epoch_end)
    final = trainer.finish()
    state, n_parameters = trainer.state, trainer.n_parameters
    del trainer  # its model, optimizer and loaders: a refit builds its own
    refit_epochs = state.best_epoch if train.refit else 0
    if refit_epochs:
        final = refit(
            run, data, model, train, init_from=init_from, calibrated=final, epochs=refit_epochs
        )
    return TrainResult(
        model=final,
        state=cpu_state(final),
        history=tuple(state.history),
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        initial_score=state.initial_score,
        stopped_early=state.stopped_early(train),
        run_key=key,
        checkpoint_dir=checkpoint_root / key,
        device=str(device),
        norm_mean=data.norm_mean,
        norm_std=data.norm_std,
        climatology=data.climatology,
        seconds=time.perf_counter() - started,
        n_parameters=n_parameters,
        refit_epochs=refit_epochs,
    )


@dataclass(frozen=True)
class RunPlace:
    """Where and how a run trains: its checkpoints' root, device, ranks, and whether it
    resumes a checkpoint and draws progress."""

    checkpoint_root: Path
    device: torch.device
    dist: Distributed
    resume: bool = True
    progress: bool = True

    def train(
        self,
        data: DataContext,
        model: ModelSection,
        train: TrainSection,
        *,
        init_from: Mapping[str, Tensor] | None,
        on_epoch_end: Callable[[EpochLog], None] | None = None,
        extra_identity: Mapping[str, Any] | None = None,
        stop_after: int | None = None,
    ) -> tuple[Trainer, str]:
        """Set up (or resume) and run the epochs of one run; the trainer and its run key
        (of :func:`run_identity` and ``extra_identity``). ``stop_after``: the last epoch."""
        key = run_key(
            run_identity(data, model, train) | dict(extra_identity or {}),
            store_digest=data.store_digest,
            device=self.device.type,
            init_digest=state_digest(init_from) if init_from is not None else "",
        )
        checkpoint = self.checkpoint_root / key / LAST
        saved = load_checkpoint(checkpoint) if self.resume else None
        with determinism(self.device, seed=train.seed):
            trainer = Trainer.setup(
                data,
                model=model,
                train=train,
                device=self.device,
                dist=self.dist,
                init_from=init_from,
                saved=saved,
            )
            if saved is not None:
                log.info("run %s: resuming after epoch %d", key, trainer.state.epoch)
            trainer.run_epochs(
                checkpoint=checkpoint,
                on_epoch_end=on_epoch_end,
                progress=self.progress,
                stop_after=stop_after,
            )
        return trainer, key


def refit(
    run: RunPlace,
    data: DataContext,
    model: ModelSection,
    train: TrainSection,
    *,
    init_from: Mapping[str, Tensor] | None,
    calibrated: Forecaster,
    epochs: int,
) -> Forecaster:
    """``[train] refit``: the run of ``calibrated`` again, from the same start and seed, on
    train + validation (:meth:`~stpipe.core.splits.Splits.through_validation`), stopped
    after ``epochs`` epochs of the same schedule (over ``[train] epochs``); its last
    weights with ``calibrated``'s calibration, which the validation days chose while held
    out. Those days are in its train split now: its validation scores are logged but choose
    nothing (no early stopping, no best epoch). The climatology and normalisation stay the
    train split's, as the baselines that evaluation and promotion compute.

    Measured on a few weeks of data, ``benchmarks/bench_quality.py`` with ``--set
    train.refit=true``: benchmarks/QUALITY.md.
    """
    log.info("refit on train + validation: %d epoch(s)", epochs)
    fitted = replace(data, splits=data.splits.through_validation())
    unstopped = train.model_copy(update={"patience": train.epochs})
    trainer, key = run.train(
        fitted,
        model,
        unstopped,
        init_from=init_from,
        extra_identity={"refit_epochs": epochs},
        stop_after=epochs,
    )
    log.info("refit run %s done", key)
    return trainer.finish(calibration_from=calibrated)

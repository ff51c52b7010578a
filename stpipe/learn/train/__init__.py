"""Training: ``train_model(data, model=..., train=...) -> TrainResult``, resumable, seeded,
DDP-ready; ``train_members`` trains ``[train] members`` such runs and averages them.

One epoch: the train split's patches (shuffled by ``(seed, epoch)``, at most
``[train] max_batches_per_epoch`` batches) through AdamW with a warm-up + cosine (or
OneCycle) schedule and gradient clipping; then the validation split (at most
``max_val_batches`` batches) for the early-stopping score. The model returned has the
weights of the best validation epoch; with ``[train] refit``, those of a second run from the
same start on train + validation for that many epochs, with the first run's calibration
(:func:`~stpipe.learn.train.run.refit`).

Loss (normalised units, NaN-safe): the model predicts physical units; prediction and target
are normalised with the model's target statistics and the squared error over real target
cells (``mask`` = 1; padding, halo and missing values contribute nothing, whatever their
values) is averaged per lead, then combined with per-lead weights. With
``[train] lead_weighting = "baseline"`` (default) lead l weighs 1 / (L · MSE_ref(l)),
MSE_ref(l) the validation MSE of the best of persistence, climatology and persistence +
climatological change at that lead (computed once, before training): each lead then counts
by how far it is from the reference it must beat, not by its raw error, which grows with the
lead and would let short leads fall behind persistence. The early-stopping score is the same
quantity on the validation split with the validation split's own reference, each lead's
ratio capped at 1, mean_l min(MSE_model(l) / MSE_ref(l), 1): below 1 the model beats the
best baseline at some lead, and a lead where it trails counts as that baseline, which the
calibration falls back to there anyway (:func:`stpipe.learn.train.passes.validate`). The
starting weights are scored too (epoch 0) and kept if no epoch beats them: a residual model
starts as its baseline, a fine-tuned one as the weights it was given (e.g. the champion's),
so training never returns something worse by that score than where it started.

Checkpoints (:mod:`stpipe.io.checkpoint`): after every epoch ``last.pt`` holds the model,
optimizer, scheduler and grad-scaler states, the RNG states, the epoch, the best score and
weights, the early-stopping counter, the lead weights and the history; a re-run with
``resume=True`` and the same run key continues from it and ends with the same weights as an
uninterrupted run (bit-identical on CPU, where deterministic algorithms are switched on for
the run; the loader's order depends only on ``(seed, epoch)``).

Distributed: under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) the model is
wrapped in DistributedDataParallel, each rank reads its shard, sums are all-reduced, and only
rank 0 writes checkpoints, logs and draws the progress bar.

Modules: :mod:`~stpipe.learn.train.trainer` (:class:`Trainer`: ``setup``, ``run_epochs``,
``finish``), ``run`` (:func:`train_model` composes them under a run key; ``refit``),
``members`` (:func:`train_members`: ``[train]
members`` runs and their mean), ``loss``, ``step`` (:class:`TrainStep`),
``passes`` (:func:`train_epoch`, :func:`validate`), ``calibration``, ``state``, ``optim``,
``runtime`` (precision, determinism), ``distributed``, ``progress``.
"""

from stpipe.learn.train.calibration import REFERENCES, calibrate, reference_names
from stpipe.learn.train.loss import loss_lead_weights, masked_errors, weighted_loss
from stpipe.learn.train.members import train_members
from stpipe.learn.train.optim import make_optimizer, make_scheduler
from stpipe.learn.train.passes import train_epoch, validate
from stpipe.learn.train.run import train_model
from stpipe.learn.train.runtime import determinism, resolve_precision, use_channels_last
from stpipe.learn.train.state import EpochLog, EpochStats, TrainResult, Validation
from stpipe.learn.train.step import TrainStep
from stpipe.learn.train.trainer import Trainer, reference_loader, run_identity, split_loaders

__all__ = [
    "REFERENCES",
    "EpochLog",
    "EpochStats",
    "TrainResult",
    "TrainStep",
    "Trainer",
    "Validation",
    "calibrate",
    "determinism",
    "loss_lead_weights",
    "make_optimizer",
    "make_scheduler",
    "masked_errors",
    "reference_loader",
    "reference_names",
    "resolve_precision",
    "run_identity",
    "split_loaders",
    "train_epoch",
    "train_members",
    "train_model",
    "use_channels_last",
    "validate",
    "weighted_loss",
]

"""Training: ``train_model(data, model=..., train=...) -> TrainResult``, resumable, seeded, DDP-ready.

One epoch: the train split's patches (shuffled by ``(seed, epoch)``, at most
``[train] max_batches_per_epoch`` batches) through AdamW with a warm-up + cosine (or
OneCycle) schedule and gradient clipping; then the validation split (at most
``max_val_batches`` batches) for the early-stopping score. The model returned has the
weights of the best validation epoch.

Loss (normalised units, NaN-safe): the model predicts physical units; prediction and target
are normalised with the model's target statistics and the squared error over real target
cells (``mask`` = 1; padding, halo and missing values contribute nothing, whatever their
values) is averaged per lead, then combined with per-lead weights. With
``[train] lead_weighting = "baseline"`` (default) lead l weighs 1 / (L · MSE_ref(l)),
MSE_ref(l) the validation MSE of the best of persistence, climatology and persistence +
climatological change at that lead (computed once, before training): each lead then counts by how far it is from the reference it must beat,
not by its raw error, which grows with the lead and would let short leads fall behind
persistence. The early-stopping score is the same quantity on the validation split with the
validation split's own reference, mean_l MSE_model(l) / MSE_ref(l): below 1 the model beats
the best baseline on average. The starting weights are scored too (epoch 0) and kept if no
epoch beats them: a residual model starts as its baseline, a fine-tuned one as the weights it
was given (e.g. the champion's), so training never returns something worse on validation
than where it started.

Checkpoints (:mod:`stpipe.io.checkpoint`): after every epoch ``last.pt`` holds the model,
optimizer, scheduler and grad-scaler states, the RNG states, the epoch, the best score and
weights, the early-stopping counter, the lead weights and the history; a re-run with
``resume=True`` and the same run key continues from it and ends with the same weights as an
uninterrupted run (bit-identical on CPU, where deterministic algorithms are switched on for
the run; the loader's order depends only on ``(seed, epoch)``).

Distributed: under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) the model is
wrapped in DistributedDataParallel, each rank reads its shard, sums are all-reduced, and only
rank 0 writes checkpoints, logs and draws the progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stpipe.core.errors import ConfigError, StoreError
from stpipe.io.checkpoint import (
    LAST,
    capture_rng,
    load_checkpoint,
    restore_rng,
    run_key,
    save_checkpoint,
    state_digest,
)
from stpipe.learn.context import (
    Batch,
    DataContext,
    Distributed,
    build_baselines,
    build_forecaster,
    iterate_on_device,
    make_split_loader,
    resolve_device,
)
from stpipe.learn.settings import TrainSection
from stpipe.models import Climatology, Forecaster, count_parameters
from stpipe.models.scnn import ScnnRnn
from stpipe.models.settings import ModelSection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochLog:
    """One epoch, as the log and ``on_epoch_end`` see it.

    ``train_loss`` and ``val_loss`` are lead-weighted MSEs in normalised units (module
    docstring; ``val_loss`` is the early-stopping score). ``val_rmse`` and ``val_ref_rmse``
    (the best baseline) are per lead in the targets' physical units, pooled over target
    variables. ``data_wait_frac`` is the share of the epoch the device waited for the loader
    (:func:`stpipe.learn.context.iterate_on_device`).
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


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A finished run. ``model`` (CPU, eval mode) and ``state`` are the best epoch's;
    ``best_epoch`` 0 means no epoch beat the starting weights (``initial_score``)."""

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
    """A validation pass: the score mean_l MSE(l)/MSE_ref(l); per lead the model's and the
    best baseline's MSE (normalised units, pooled over variables) and RMSE (physical)."""

    score: float
    mse: tuple[float, ...]
    ref_mse: tuple[float, ...]
    rmse: tuple[float, ...]
    ref_rmse: tuple[float, ...]


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
    """Train ``model`` (``[model]``) with ``train`` (``[train]``) on ``data`` (see the module
    docstring); checkpoints go to ``checkpoint_root/<run key>/``.

    ``init_from``: a state dict (e.g. the champion's) to start from instead of the seeded
    initialisation, for nightly fine-tuning; it is part of the run key. ``on_epoch_end`` runs
    on rank 0 after each epoch's checkpoint is on disk: a job layer logs metrics there, and
    an exception it raises stops training with that checkpoint kept (a re-run resumes).
    """
    started = time.perf_counter()
    dist = Distributed.from_env()
    _init_process_group(dist)
    device = resolve_device(train.device, dist)
    key = run_key(
        run_identity(data, model, train),
        store_digest=data.store_digest,
        device=device.type,
        init_digest=state_digest(init_from) if init_from is not None else "",
    )
    checkpoint_dir = checkpoint_root / key
    cfg = train
    settings = model
    with determinism(device, seed=cfg.seed):
        model = build_forecaster(settings, data)
        if init_from is not None:
            _load_weights(model, init_from, origin="init_from")
        if isinstance(model, ScnnRnn):
            model.reset_calibration()  # trained uncalibrated, calibrated on this validation
        n_parameters = count_parameters(model)
        model.to(device)
        if device.type == "cuda":
            use_channels_last(model)
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
        precision = resolve_precision(cfg.precision, device)
        optimizer = make_optimizer(model, cfg, device=device)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=len(train_loader))
        scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
        baselines = [b.to(device) for b in build_baselines(data).values()]

        saved = load_checkpoint(checkpoint_dir / LAST) if resume else None
        if saved is None:
            initial = validate(
                model,
                val_loader,
                baselines=baselines,
                precision=precision,
                device=device,
                dist=dist,
            )
            state = _RunState(
                lead_weights=loss_lead_weights(initial.ref_mse, mode=cfg.lead_weighting)
            )
            state.start(initial, model=model)
        else:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            state = _RunState.from_payload(saved)
            restore_rng(saved["rng"])
            log.info("run %s: resuming after epoch %d", key, state.epoch)
        step = TrainStep(
            _wrap(model, compile_model=cfg.compile, dist=dist, device=device),
            model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            lead_weights=state.lead_weights,
            grad_clip=cfg.grad_clip,
            precision=precision,
            device=device,
            cuda_graph=cfg.cuda_graph,
        )

        with _Progress(enabled=progress and dist.is_main) as bar:
            while not state.finished(cfg):
                epoch = state.epoch + 1
                train_loader.set_epoch(epoch)
                stats = train_epoch(
                    step,
                    train_loader,
                    dist=dist,
                    on_step=bar.epoch(epoch, cfg.epochs, len(train_loader)),
                )
                val = validate(
                    model,
                    val_loader,
                    baselines=baselines,
                    precision=precision,
                    device=device,
                    dist=dist,
                )
                entry = state.record(
                    epoch,
                    stats=stats,
                    val=val,
                    lr=optimizer.param_groups[0]["lr"],
                    model=model,
                    cfg=cfg,
                )
                if dist.is_main:
                    save_checkpoint(
                        checkpoint_dir / LAST,
                        state.payload(
                            model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
                        ),
                    )
                    log.info(_describe(entry, cfg))
                _barrier(dist)
                if on_epoch_end is not None and dist.is_main:
                    on_epoch_end(entry)

    final = build_forecaster(settings, data)
    _load_weights(final, state.best_state or _cpu_state(model), origin="best epoch")
    final.eval()
    if cfg.calibrate and isinstance(final, ScnnRnn):
        with determinism(device, seed=cfg.seed):
            calibration = calibrate(
                final.to(device), val_loader, precision=precision, device=device, dist=dist
            )
        final.cpu()
        if dist.is_main:
            log.info("calibration on the validation split: %s", calibration)
    return TrainResult(
        model=final,
        state=_cpu_state(final),
        history=tuple(state.history),
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        initial_score=state.initial_score,
        stopped_early=state.bad_epochs >= cfg.patience,
        run_key=key,
        checkpoint_dir=checkpoint_dir,
        device=str(device),
        norm_mean=data.norm_mean,
        norm_std=data.norm_std,
        climatology=data.climatology,
        seconds=time.perf_counter() - started,
        n_parameters=n_parameters,
    )


# Keys that change how fast or how visibly a run goes, not the weights it ends with.
_SPEED_ONLY = {"num_workers", "device"}


def run_identity(data: DataContext, model: ModelSection, train: TrainSection) -> dict[str, Any]:
    """What decides a run's weights besides the data and the device (for its run key)."""
    splits = {k: str(v) for k, v in asdict(data.splits).items()}
    train_values = train.model_dump(mode="json")
    return {
        "patches": asdict(data.spec),
        "split": splits,
        "model": model.model_dump(mode="json"),
        "train": {k: v for k, v in train_values.items() if k not in _SPEED_ONLY},
    }


# --- loss and the passes --------------------------------------------------------------------


def masked_errors(model: Forecaster, pred: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Squared normalised errors over real target cells, summed per lead and variable.

    ``pred`` and ``batch["y"]`` [B, L, V, H, W] in physical units; cells where ``mask`` is
    0 are excluded whatever their values (NaN included). Returns (sse, count), float32
    [L, V] each.
    """
    mask = batch["mask"] > 0
    error = model.normalise_targets(pred.float()) - model.normalise_targets(batch["y"])
    error = torch.where(mask, error, 0.0)
    dims = (0, 3, 4)
    return error.square().sum(dims), mask.sum(dims, dtype=torch.float32)


def weighted_loss(sse: Tensor, count: Tensor, lead_weights: Tensor) -> Tensor:
    """Σ_l w_l · MSE_l, MSE_l pooled over variables (sse, count [L, V]; weights [L])."""
    mse = sse.sum(1) / count.sum(1).clamp_min(1.0)
    return (lead_weights * mse).sum()


class TrainStep:
    """One optimisation step: forward, masked loss, backward, clip, AdamW, schedule.

    ``step_model`` runs the forward pass (``model`` itself, compiled, or DDP-wrapped);
    ``model`` is the plain module, for its normalisation constants and parameters.

    ``cuda_graph``: on a single GPU without ``torch.compile`` or fp16 loss scaling, the
    forward, loss, backward and clipping of a step are captured once as a CUDA graph (after
    ``WARMUP`` eager steps on a side stream, which let cuDNN pick its kernels and allocate
    the optimizer state) and replayed for every batch of the same shapes. A step of these
    small models is hundreds of kernel launches that the CPU issues slower than the GPU runs
    them; a replay is one launch. The batch is copied into the graph's static inputs, the
    gradients stay the graph's own tensors (never set to None after the capture), and the
    fused AdamW step and the scheduler run eagerly after the replay, so the learning rate
    stays a plain float. A batch of other shapes runs eagerly.
    """

    WARMUP = 3

    def __init__(
        self,
        step_model: nn.Module,
        model: Forecaster,
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        lead_weights: Tensor,
        grad_clip: float,
        precision: torch.dtype,
        device: torch.device,
        cuda_graph: bool = False,
    ) -> None:
        self.step_model = step_model
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.lead_weights = lead_weights.to(device)
        self.grad_clip = grad_clip
        self.precision = precision
        self.device = device
        self.graphed = (
            cuda_graph and device.type == "cuda" and step_model is model and not scaler.is_enabled()
        )
        self._eager_steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: Batch = {}
        self._static_loss = torch.zeros((), device=device)

    @property
    def captured(self) -> bool:
        """Whether the step is a CUDA graph by now (after the warm-up steps)."""
        return self._graph is not None

    def __call__(self, batch: Batch) -> Tensor:
        """Train on ``batch`` (on the device); returns its loss, detached, on the device."""
        if self._graph is not None and self._fits(batch):
            for key, value in batch.items():
                self._static[key].copy_(value, non_blocking=True)
            self._graph.replay()
            loss = self._static_loss.clone()
        elif self.graphed and self._graph is None and self._eager_steps >= self.WARMUP:
            loss = self._capture(batch)
        elif self.graphed and self._graph is None:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                loss = self._gradients(batch, caching=True)
                self._update()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
            return loss
        else:
            loss = self._gradients(batch, caching=True)
        self._update()
        return loss

    def _gradients(self, batch: Batch, *, caching: bool) -> Tensor:
        # After a capture the gradients are the graph's tensors: zero them in place.
        self.optimizer.zero_grad(set_to_none=self._graph is None)
        with torch.autocast(
            self.device.type,
            dtype=self.precision,
            enabled=self.precision != torch.float32,
            cache_enabled=caching,
        ):
            pred = self.step_model(batch)
        loss = weighted_loss(*masked_errors(self.model, pred, batch), self.lead_weights)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        return loss.detach()

    def _update(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _capture(self, batch: Batch) -> Tensor:
        self._static = {key: value.clone() for key, value in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # Autocast's cast cache would hold casts made during the capture: off inside it.
        # thread_local: the loader's threads keep pinning host memory meanwhile, and under the
        # default (global) mode such a CUDA call from another thread invalidates the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._static_loss = self._gradients(self._static, caching=False)
        self._graph = graph
        graph.replay()  # capturing records the work without running it
        return self._static_loss.clone()

    def _fits(self, batch: Batch) -> bool:
        return batch.keys() == self._static.keys() and all(
            value.shape == self._static[key].shape and value.dtype == self._static[key].dtype
            for key, value in batch.items()
        )


def train_epoch(
    step: TrainStep,
    loader: Any,
    *,
    dist: Distributed | None = None,
    on_step: Callable[[int, Callable[[], float], float], None] | None = None,
) -> EpochStats:
    """One pass of ``step`` over ``loader``. The loss stays on the device:
    ``on_step(i, mean_loss, samples_per_s)`` gets a callable, and only calling it
    synchronises."""
    device = step.device
    step.step_model.train()
    total = torch.zeros((), device=device)
    samples = 0
    wait = 0.0
    started = time.perf_counter()
    for i, (batch, waited) in enumerate(iterate_on_device(loader, device)):
        wait += waited
        loss = step(batch)
        n = batch["x"].shape[0]
        total += loss * n
        samples += n
        if on_step is not None:
            count = samples
            on_step(
                i + 1,
                lambda t=total, c=count: float(t) / c,
                samples / (time.perf_counter() - started),
            )
    _average_batch_norm_statistics(step.model, dist)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    loss_sum, n_all = _all_reduce(
        torch.stack([total, torch.tensor(float(samples), device=device)]), dist
    ).tolist()
    return EpochStats(
        loss=loss_sum / max(n_all, 1.0), samples=int(n_all), seconds=seconds, wait_seconds=wait
    )


@torch.no_grad()
def validate(
    model: Forecaster,
    loader: Any,
    *,
    baselines: list[Forecaster],
    precision: torch.dtype,
    device: torch.device,
    dist: Distributed | None = None,
) -> Validation:
    """Score the model against the best baseline per lead on the split of ``loader``."""
    model.eval()
    sse = torch.zeros(1 + len(baselines), *_lead_var_shape(model), device=device)
    count = torch.zeros(_lead_var_shape(model), device=device)
    for batch, _ in iterate_on_device(loader, device):
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            pred = model(batch)
        errors, n = masked_errors(model, pred, batch)
        sse[0] += errors
        count += n
        for k, baseline in enumerate(baselines, start=1):
            sse[k] += masked_errors(model, baseline(batch), batch)[0]
    sse = _all_reduce(sse, dist)
    count = _all_reduce(count, dist)
    # A baseline without a value somewhere (a climatology slot the train split never saw)
    # has a NaN error: it does not count as the reference.
    sse[1:] = sse[1:].nan_to_num(nan=math.inf)
    mse = sse.sum(2) / count.sum(1).clamp_min(1.0)  # [1 + n_baselines, L], normalised
    ref = mse[1:].min(0).values
    score = (mse[0] / ref.clamp_min(1e-12)).mean()
    var = model.target_std.to(device).square()
    phys = ((sse * var).sum(2) / count.sum(1).clamp_min(1.0)).sqrt()  # physical RMSE
    return Validation(
        score=float(score),
        mse=_floats(mse[0]),
        ref_mse=_floats(ref),
        rmse=_floats(phys[0]),
        ref_rmse=_floats(phys[1:].min(0).values),
    )


# References a calibration may lean on, as weights of p, C(t), C(t0): the baselines and the
# means of two (averaging two forecasts of similar skill is the robust combination).
REFERENCES = {
    "persistence": (1.0, 0.0, 0.0),
    "climatology": (0.0, 1.0, 0.0),
    "persistence_clim_change": (1.0, 1.0, -1.0),
    "mean(persistence, climatology)": (0.5, 0.5, 0.0),
    "mean(climatology, persistence_clim_change)": (0.5, 1.0, -0.5),
}


@torch.no_grad()
def calibrate(
    model: ScnnRnn,
    loader: Any,
    *,
    precision: torch.dtype,
    device: torch.device,
    dist: Distributed | None = None,
) -> str:
    """Fit ``model``'s calibration (:mod:`stpipe.models.scnn`) on the split of ``loader``.

    Per lead and variable and for each reference a (:data:`REFERENCES`; persistence alone
    without a climatology): s = Σ(ŷ−a)(y−a) / Σ(ŷ−a)² clipped to [0, 1] over the real target
    cells (normalised units); the reference whose blend has the least squared error is
    kept. s = 1 is the model and s = 0 the reference, so on this split the result is never
    worse than the model or any baseline. Returns the choice per lead, for the log.
    """
    model.eval()
    model.reset_calibration()
    names = list(REFERENCES) if model.climatology is not None else ["persistence"]
    candidates = torch.tensor([REFERENCES[n] for n in names], device=device)  # [K, 3]
    sums = torch.zeros(3, len(candidates), *_lead_var_shape(model), device=device)
    for batch, _ in iterate_on_device(loader, device):
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            z, terms = model.normalised_forecast(batch)
        mask = batch["mask"] > 0
        y = model.normalise_targets(batch["y"])
        for k, weights in enumerate(candidates):
            anchor = (terms * weights).sum(-1)
            dy = torch.where(mask, y - anchor, 0.0)
            dz = torch.where(mask, z.float() - anchor, 0.0)
            sums[0, k] += dy.square().sum((0, 3, 4))
            sums[1, k] += (dz * dy).sum((0, 3, 4))
            sums[2, k] += dz.square().sum((0, 3, 4))
    yy, zy, zz = _all_reduce(sums, dist)
    shrink = (zy / zz.clamp_min(1e-12)).clamp(0.0, 1.0)
    best = (yy - 2 * shrink * zy + shrink.square() * zz).argmin(0)  # [L, V]
    model.anchor.copy_(candidates[best])
    model.shrink.copy_(shrink.gather(0, best[None])[0])
    return "; ".join(
        f"lead {lead} {var}: {float(model.shrink[i, j]):.2f}·model + "
        f"{1 - float(model.shrink[i, j]):.2f}·{names[int(best[i, j])]}"
        for i, lead in enumerate(model.leads)
        for j, var in enumerate(model.target_variables)
    )


def loss_lead_weights(ref_mse: tuple[float, ...], *, mode: str) -> Tensor:
    """Per-lead loss weights [L]: 1/(L·MSE_ref(l)) (``"baseline"``) or 1/L (``"uniform"``).

    ``ref_mse`` is the best baseline's normalised MSE per lead on the validation split (the
    train split would flatter the climatology, fitted on it: with few weeks of data a slot
    mean is close to the values it was computed from).
    """
    n_leads = len(ref_mse)
    if mode == "uniform":
        return torch.full((n_leads,), 1.0 / n_leads)
    ref = torch.tensor(ref_mse, dtype=torch.float32)
    if not bool((ref > 0).all()):
        raise StoreError(
            f"a baseline forecasts the validation split perfectly at some lead (per-lead MSE "
            f"{list(ref_mse)}); set [train] lead_weighting = 'uniform'"
        )
    return 1.0 / (n_leads * ref)


def _lead_var_shape(model: Forecaster) -> tuple[int, int]:
    return len(model.leads), len(model.target_variables)


# --- optimisation -----------------------------------------------------------------------------


def use_channels_last(model: nn.Module) -> None:
    """Store the 4-D (Conv2d) weights channels-last, the layout cuDNN's fastest 2-D kernels
    use; ``Module.to(memory_format=...)`` refuses the 5-D weights of the temporal convs."""
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)


def resolve_precision(setting: str, device: torch.device) -> torch.dtype:
    """``[train] precision``: 'auto' is bf16 autocast on GPUs that have it (fp16 with loss
    scaling on older ones), fp32 on the CPU."""
    if setting == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def make_optimizer(
    model: nn.Module, cfg: TrainSection, *, device: torch.device
) -> torch.optim.AdamW:
    """AdamW; weight decay on tensors of two or more dims (kernels, embeddings, the baseline
    blend offsets, which it pulls back to the baseline), not on biases and norm scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainSection, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule over ``epochs × steps_per_epoch`` steps.

    ``cosine``: linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 1 %
    of ``lr``; ``onecycle``: torch's OneCycleLR (its own warm-up of ``warmup_frac``);
    ``constant``: warm-up, then ``lr``.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_frac * total)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=max(cfg.warmup_frac, 1e-3)
        )
    cosine = cfg.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- run state ----------------------------------------------------------------------------


@dataclass
class _RunState:
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
            self.best_score, self.best_state = val.score, _cpu_state(model)

    def finished(self, cfg: TrainSection) -> bool:
        return self.epoch >= cfg.epochs or self.bad_epochs >= cfg.patience

    def record(
        self,
        epoch: int,
        *,
        stats: EpochStats,
        val: Validation,
        lr: float,
        model: nn.Module,
        cfg: TrainSection,
    ) -> EpochLog:
        improved = math.isfinite(val.score) and val.score < self.best_score
        if improved:
            self.best_epoch, self.best_score, self.bad_epochs = epoch, val.score, 0
            self.best_state = _cpu_state(model)
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
            "model": _cpu_state(model),
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
    def from_payload(cls, saved: Mapping[str, Any]) -> _RunState:
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


def _describe(entry: EpochLog, cfg: TrainSection) -> str:
    rmse = " ".join(
        f"{m:.3g}/{r:.3g}" for m, r in zip(entry.val_rmse, entry.val_ref_rmse, strict=True)
    )
    return (
        f"epoch {entry.epoch}/{cfg.epochs}: train {entry.train_loss:.4f} val {entry.val_loss:.4f}"
        f"{' *' if entry.improved else ''}  rmse/best-baseline per lead {rmse}  "
        f"{entry.samples_per_s:.0f} samples/s, data wait {entry.data_wait_frac:.0%}"
    )


# --- plumbing ---------------------------------------------------------------------------------


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _load_weights(model: nn.Module, state: Mapping[str, Tensor], *, origin: str) -> None:
    try:
        model.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise ConfigError(
            f"{origin}: the weights do not fit the {type(model).__name__} that [model] "
            f"describes (was the model's config changed?): {str(exc).splitlines()[0]}"
        ) from exc


def _floats(t: Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in t.detach().cpu())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def determinism(device: torch.device, *, seed: int) -> Iterator[None]:
    """Seed python, numpy and torch; on the CPU use deterministic algorithms for the
    duration (exact resume); on CUDA let cuDNN pick the fastest kernels (not bit-exact)."""
    _seed_everything(seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark


def _wrap(
    model: nn.Module, *, compile_model: bool, dist: Distributed, device: torch.device
) -> nn.Module:
    step_model = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            # Batch statistics over the global batch, as one process would see them
            # (SyncBatchNorm needs a GPU; on the CPU each rank normalises its own batch).
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile_model:
        step_model = torch.compile(step_model, dynamic=False)
    return step_model


def _init_process_group(dist: Distributed) -> None:
    if dist.world_size == 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)


def _barrier(dist: Distributed) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def _average_batch_norm_statistics(model: nn.Module, dist: Distributed | None) -> None:
    """DDP syncs gradients, not BatchNorm running statistics: each rank's follow its own
    batches. Averaging them after the epoch keeps the replicas identical (validation,
    checkpoints and the returned model are the same on every rank) and uses every rank's
    data for the estimate."""
    if dist is None or dist.world_size == 1:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for stats in (module.running_mean, module.running_var):
                torch.distributed.all_reduce(stats)
                stats /= dist.world_size


def _all_reduce(t: Tensor, dist: Distributed | None) -> Tensor:
    """Sum of ``t`` over ranks (``t`` itself in a single process)."""
    if dist is None or dist.world_size == 1:
        return t
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t


class _Progress:
    """A rich progress bar per epoch with the running loss and samples/s (or nothing)."""

    REFRESH_S = 0.5

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._last = 0.0

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[rate]:.0f} samples/s"),
                TimeElapsedColumn(),
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def epoch(
        self, epoch: int, epochs: int, steps: int
    ) -> Callable[[int, Callable[[], float], float], None] | None:
        if self._progress is None:
            return None
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(
            f"epoch {epoch}/{epochs}", total=steps, loss=0.0, rate=0.0
        )

        def update(step: int, loss: Callable[[], float], rate: float) -> None:
            now = time.perf_counter()
            if step < steps and now - self._last < self.REFRESH_S:
                return
            self._last = now
            self._progress.update(self._task, completed=step, loss=loss(), rate=rate)

        return update

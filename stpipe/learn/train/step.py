"""The optimisation step, eager or replayed as a CUDA graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stpipe.learn.context import Batch
from stpipe.learn.train.loss import masked_errors, weighted_loss
from stpipe.models import Forecaster


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

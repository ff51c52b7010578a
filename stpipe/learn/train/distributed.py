"""Training under ``torchrun``: the process group, the DDP wrap, sums across ranks.

Every function is a no-op (or the identity) in a single process.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from stpipe.learn.context import Distributed


def init_process_group(dist: Distributed) -> None:
    """Join the torchrun job (NCCL with GPUs, gloo without), once per process."""
    if dist.world_size == 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)


def barrier(dist: Distributed) -> None:
    """Wait for every rank."""
    if dist.world_size > 1:
        torch.distributed.barrier()


def wrap_model(
    model: nn.Module, *, compile_model: bool, dist: Distributed, device: torch.device
) -> nn.Module:
    """The module a training step runs: ``model`` itself, DDP-wrapped over several ranks,
    and compiled (``[train] compile``)."""
    step_model = model
    if dist.world_size > 1:
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


def average_batch_norm_statistics(model: nn.Module, dist: Distributed | None) -> None:
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


def all_reduce(t: Tensor, dist: Distributed | None) -> Tensor:
    """Sum of ``t`` over ranks (``t`` itself in a single process)."""
    if dist is None or dist.world_size == 1:
        return t
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t

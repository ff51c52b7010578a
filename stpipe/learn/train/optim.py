"""The optimizer and the per-step learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from stpipe.learn.settings import TrainSection


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

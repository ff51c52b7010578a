"""How a run uses its device: autocast precision, weight layout, seeding and determinism."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


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

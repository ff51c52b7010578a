"""Tests of stpipe.models; ``make_batch`` builds batches that follow the loader contract."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

Tensor = torch.Tensor


def time_features(times_ns: np.ndarray) -> np.ndarray:
    """sin/cos of hour of day and day of week, [..., 4] float32 (the loader's F = 4)."""
    t = pd.to_datetime(times_ns.ravel())
    hour = (t.hour + t.minute / 60).to_numpy() / 24 * 2 * np.pi
    day = t.day_of_week.to_numpy() / 7 * 2 * np.pi
    feats = np.stack([np.sin(hour), np.cos(hour), np.sin(day), np.cos(day)], axis=-1)
    return feats.reshape(*times_ns.shape, 4).astype(np.float32)


def make_batch(
    *,
    batch: int = 2,
    steps: int = 4,
    leads: Sequence[int] = (1, 2),
    n_vars: int = 2,
    target_index: Sequence[int] = (0,),
    shape: tuple[int, int] = (8, 8),
    n_time_features: int = 4,
    n_static: int = 0,
    step_s: int = 3600,
    start: str = "2024-01-01T00:00",
    row0: Sequence[int] | None = None,
    col0: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A random batch in the loader's layout; sample i starts i·5 steps after ``start``."""
    rng = np.random.default_rng(seed)
    h, w = shape
    step_ns = step_s * 10**9
    t0 = pd.Timestamp(start).value + np.arange(batch)[:, None] * 5 * step_ns
    x_times = t0 + np.arange(steps)[None] * step_ns
    y_times = x_times[:, -1:] + np.asarray(leads)[None] * step_ns
    x = rng.standard_normal((batch, steps, n_vars, h, w)).astype(np.float32) + 10.0
    y = rng.standard_normal((batch, len(leads), len(target_index), h, w)).astype(np.float32)
    zeros = np.zeros(batch, dtype=np.int64)
    return {
        "x": torch.from_numpy(x),
        "y": torch.from_numpy(y + 10.0),
        "mask": torch.ones(y.shape),
        "x_time": torch.from_numpy(time_features(x_times)[..., :n_time_features]),
        "y_time": torch.from_numpy(time_features(y_times)[..., :n_time_features]),
        "x_times": torch.from_numpy(x_times),
        "y_times": torch.from_numpy(y_times),
        "static": torch.from_numpy(rng.standard_normal((batch, n_static, h, w)).astype(np.float32)),
        "t0": torch.zeros(batch, dtype=torch.int64),
        "row0": torch.as_tensor(zeros if row0 is None else np.asarray(row0, dtype=np.int64)),
        "col0": torch.as_tensor(zeros if col0 is None else np.asarray(col0, dtype=np.int64)),
    }

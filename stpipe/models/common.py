"""What every forecaster shares: the batch contract, normalisation buffers, and small blocks.

A batch is ``dict[str, Tensor]`` as the loader yields it (dims: B batch, T input steps,
L leads, V variables, F time features, S static fields, H × W patch):

- ``x`` float32 [B, T, V_in, H, W] inputs in physical units, NaN where missing;
- ``x_time`` [B, T, F], ``y_time`` [B, L, F] float32 time features (F = 4 or 0);
- ``x_times`` [B, T], ``y_times`` [B, L] int64 valid times, ns since 1970-01-01 UTC;
- ``static`` float32 [B, S, H, W]; ``row0``, ``col0`` int64 [B] grid index of cell (0, 0).

Every forecaster is a :class:`Forecaster`: ``forward(batch)`` returns [B, L, V_out, H, W] in
physical units. Normalisation constants, leads and variable names travel with the module
(buffers and plain attributes), so a saved model predicts without the training config.
Forward passes have no data-dependent Python control flow (``torch.export``-able).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from stpipe.core.errors import ConfigError

Batch = dict[str, Tensor]
ArrayLike = Sequence[float] | np.ndarray | Tensor


class Forecaster(nn.Module):
    """Base of all forecasters: variables, leads and per-variable normalisation.

    Buffers: ``norm_mean``, ``norm_std`` [V_in] (train-split statistics, physical units),
    ``target_index`` [V_out] (positions of the targets among the inputs), ``target_mean``,
    ``target_std`` [V_out]. The training loss works in normalised units:
    ``normalise_targets(batch["y"])`` against ``normalise_targets(forward(batch))``.

    Calibration (:func:`stpipe.learn.train.calibrate`, after training): a forecaster with
    ``calibratable`` true has ``uncalibrated_forecast(batch)`` and the ``anchor`` [L, V_out, 4]
    and ``shrink`` [L, V_out] buffers the calibration fits (:class:`stpipe.models.scnn.ScnnRnn`);
    ``reset_calibration()`` returns it to its uncalibrated forecast before training,
    ``load_calibration(other)`` takes another's (a refit's), and
    ``forecast_and_reference(batch)`` gives the forecast with that reference.
    """

    calibratable: ClassVar[bool] = False

    def __init__(
        self,
        *,
        input_variables: Sequence[str],
        target_variables: Sequence[str],
        input_steps: int,
        leads: Sequence[int],
        step_s: int,
        norm_mean: ArrayLike,
        norm_std: ArrayLike,
    ) -> None:
        super().__init__()
        check_forecaster_args(
            input_variables=input_variables,
            target_variables=target_variables,
            input_steps=input_steps,
            leads=leads,
            step_s=step_s,
            norm_mean=norm_mean,
            norm_std=norm_std,
        )
        self.input_variables = tuple(input_variables)
        self.target_variables = tuple(target_variables)
        self.input_steps = int(input_steps)
        self.leads = tuple(int(lead) for lead in leads)
        self.step_s = int(step_s)
        mean = torch.as_tensor(np.asarray(norm_mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(norm_std, dtype=np.float32))
        index = torch.tensor([self.input_variables.index(v) for v in self.target_variables])
        self.register_buffer("norm_mean", mean)
        self.register_buffer("norm_std", std)
        self.register_buffer("target_index", index)
        self.register_buffer("target_mean", mean[index].clone())
        self.register_buffer("target_std", std[index].clone())

    def reset_calibration(self) -> None:
        """Back to the uncalibrated forecast; nothing to do without a calibration."""

    def load_calibration(self, calibrated: Forecaster) -> None:
        """Take the calibration of ``calibrated``, the same network trained otherwise (a
        refit, ``[train] refit``); nothing to do without a calibration."""

    def forecast_and_reference(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """``forward(batch)`` and the reference its calibration blends with, [B, L, V_out,
        H, W] each (None without a calibration): :class:`~stpipe.models.ensemble.MemberMean`
        averages members about the reference so that a lead where every member forecasts it
        stays it bit for bit."""
        return self(batch), None

    def normalise_inputs(self, x: Tensor) -> Tensor:
        """[..., V_in, H, W] physical → normalised; NaN becomes 0 (the train mean)."""
        z = (x - self.norm_mean[:, None, None]) / self.norm_std[:, None, None]
        return torch.nan_to_num(z, nan=0.0)

    def normalise_targets(self, y: Tensor) -> Tensor:
        """[..., V_out, H, W] physical → normalised; NaN stays NaN (the caller masks)."""
        return (y - self.target_mean[:, None, None]) / self.target_std[:, None, None]

    def denormalise_targets(self, z: Tensor) -> Tensor:
        """[..., V_out, H, W] normalised → physical units."""
        return z * self.target_std[:, None, None] + self.target_mean[:, None, None]


def check_forecaster_args(
    *,
    input_variables: Sequence[str],
    target_variables: Sequence[str],
    input_steps: int,
    leads: Sequence[int],
    step_s: int,
    norm_mean: ArrayLike,
    norm_std: ArrayLike,
) -> None:
    """Raise ConfigError naming the argument unless the forecaster arguments are consistent."""
    missing = [v for v in target_variables if v not in input_variables]
    if missing or not target_variables:
        raise ConfigError(
            f"[model] target variables {list(target_variables)} must be a non-empty subset of "
            f"the input variables {list(input_variables)}"
        )
    if input_steps < 1:
        raise ConfigError(f"[patches] input_steps must be >= 1, got {input_steps}")
    if not leads or min(leads) < 1 or any(b <= a for a, b in itertools.pairwise(leads)):
        raise ConfigError(f"[patches] leads must be positive and increasing, got {list(leads)}")
    if step_s < 1:
        raise ConfigError(f"time step must be >= 1 s, got step_s={step_s}")
    mean = np.asarray(norm_mean, dtype=np.float64)
    std = np.asarray(norm_std, dtype=np.float64)
    n = len(input_variables)
    if mean.shape != (n,) or std.shape != (n,):
        raise ConfigError(
            f"normalisation needs one mean and std per input variable ({n}), got "
            f"norm_mean {mean.shape} and norm_std {std.shape}"
        )
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ConfigError(
            f"normalisation statistics must be finite with std > 0, got mean {mean.tolist()} "
            f"std {std.tolist()} for {list(input_variables)}"
        )


def last_valid(x: Tensor) -> Tensor:
    """Persistence field: per cell, the last finite value along time.

    ``x`` [B, T, V, H, W] → [B, V, H, W]; NaN only where no input step is finite (outside
    the grid). Without missing values this is exactly ``x[:, -1]``.
    """
    out = x[:, 0]
    for t in range(1, x.shape[1]):
        out = torch.where(torch.isfinite(x[:, t]), x[:, t], out)
    return out


def conv_block(c_in: int, c_out: int, *, stride: int = 1) -> nn.Sequential:
    """3×3 conv (stride 1 or 2), batch norm, GELU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as the climatology table excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_sample(model: nn.Module, batch: Batch) -> int:
    """Forward FLOPs per sample (a multiply-add counts 2), eval mode, no grad.

    Convolutions and matmuls are counted by ``torch.utils.flop_counter.FlopCounterMode``.
    It sees RNNs only when they decompose into matmuls (GRU on CPU, not LSTM, not cuDNN),
    so each LSTM/GRU layer's count is replaced by 2·gates·(n_in + n_hidden)·n_hidden per
    sequence element and layer (gates: 4 LSTM, 3 GRU). Elementwise work (activations,
    norms, gate non-linearities) is not counted, as in FlopCounterMode.
    """
    counter = FlopCounterMode(display=False)
    correction: list[int] = []

    def before_rnn(_module: nn.Module, _inputs: tuple[Tensor, ...]) -> None:
        correction.append(counter.get_total_flops())

    def after_rnn(module: nn.RNNBase, inputs: tuple[Tensor, ...], _output: object) -> None:
        shape = inputs[0].shape
        n_seq, n_steps = (shape[0], shape[1]) if module.batch_first else (shape[1], shape[0])
        gates = 4 if isinstance(module, nn.LSTM) else 3
        sizes = [module.input_size] + [module.hidden_size] * (module.num_layers - 1)
        per_step = sum(
            2 * gates * (n_in + module.hidden_size) * module.hidden_size for n_in in sizes
        )
        correction[-1] += n_seq * n_steps * per_step - counter.get_total_flops()

    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    hooks = [m.register_forward_pre_hook(before_rnn) for m in rnns]
    hooks += [m.register_forward_hook(after_rnn) for m in rnns]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(batch)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return (counter.get_total_flops() + sum(correction)) // batch["x"].shape[0]

"""The training loss: masked squared errors in normalised units, weighted per lead."""

from __future__ import annotations

import torch
from torch import Tensor

from stpipe.core.errors import StoreError
from stpipe.learn.context import Batch
from stpipe.models import Forecaster


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


def lead_var_shape(model: Forecaster) -> tuple[int, int]:
    """(L, V_out): the shape of per-lead, per-variable sums."""
    return len(model.leads), len(model.target_variables)

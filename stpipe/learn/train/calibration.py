"""Per-lead calibration after training: blend the model with its best reference.

A forecaster takes part when its ``calibratable`` is true
(:class:`stpipe.models.common.Forecaster`): it then has ``normalised_forecast(batch)`` and the
``anchor`` [L, V, 3] and ``shrink`` [L, V] buffers that :func:`calibrate` sets (as
:class:`stpipe.models.scnn.ScnnRnn` does).
"""

from __future__ import annotations

from typing import Any

import torch

from stpipe.learn.context import Distributed, iterate_on_device
from stpipe.learn.train.distributed import all_reduce
from stpipe.learn.train.loss import lead_var_shape
from stpipe.models import Forecaster

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
    model: Forecaster,
    loader: Any,
    *,
    precision: torch.dtype,
    device: torch.device,
    dist: Distributed | None = None,
) -> str:
    """Fit a calibratable ``model``'s calibration (:mod:`stpipe.models.scnn`) on the split of
    ``loader``.

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
    sums = torch.zeros(3, len(candidates), *lead_var_shape(model), device=device)
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
    yy, zy, zz = all_reduce(sums, dist)
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

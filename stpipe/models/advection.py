"""The motion of a field estimated from its input steps, and the field moved with it.

The ``advection`` baseline (:mod:`stpipe.models.baselines`) moves the anomaly of the last
input step (its departure from the climatology) with the motion the input steps show, and
adds the climatology of the valid time: weather carried by the wind, in whichever
direction and at whichever speed the inputs show it moving, the days of the train split
not consulted. Persistence + climatological change is the same
forecast with the anomaly standing still.

Motion: one velocity (rows, columns per step) per sample and variable, the least-squares
solution of the advection equation ∂a/∂t + v·∇a = 0 over every pair of consecutive input
steps and every cell (global Lucas–Kanade): a 2×2 linear system per sample. Consecutive
steps keep the displacement small against the features' size, where the linearisation
holds; one velocity over the patch keeps it from following the noise.
Measured on the ``regional`` and ``regime`` cases' fields (``benchmarks/bench_references.py``:
3 weeks of hourly t2m on 24×32, 5 seeds × 2 split positions × leads 1/3/6/12 h), against the
best of persistence, climatology and persistence + climatological change on the test days:
the moved anomaly's margin averaged +3.9 % where persistence + climatological change's
averaged −1.4 %; it was ahead of that in 79 of the 80, 39 of the 40 after the regime change
(the flow turns there, and the motion estimated from the inputs turns with it); it fell
more than 2 % behind in the same 4 as that (at 12 h, where climatology wins). With pairs
2, 3 or 6 steps apart instead of consecutive ones, a throwaway script measured +3.9, +3.8
and +3.3 % (+4.0 % consecutive).

Moving: bilinear, each cell taking the value from where the motion says it came from;
from outside the patch, the nearest edge cell's value (what flows in is unknown; the edge
is the best guess at short leads). A cell whose source touches a missing value keeps its
own value (the anomaly standing still), and a missing cell (outside the grid) stays
missing, as in persistence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Speeds above a cell per step cannot be seen by comparing consecutive steps (the features
# would jump past the stencil), so the estimate is clipped there.
MAX_CELLS_PER_STEP = 1.0
# Ridge on the 2×2 system's diagonal, relative to its trace: a field without gradients (or
# with gradients in one direction only) gets no motion across them instead of a wild one.
RIDGE = 1e-2


def motion(anomaly: Tensor) -> Tensor:
    """Velocity [B, V, 2] (rows, columns per step) of ``anomaly`` [B, T, V, H, W] over its T
    steps; 0 where T < 2 or the patch has no gradients. NaN cells count for nothing."""
    b, t, v, height, width = anomaly.shape
    if t < 2 or height < 3 or width < 3:
        return anomaly.new_zeros(b, v, 2)
    a = anomaly.float()
    finite = torch.isfinite(a)
    a = torch.where(finite, a, 0.0)
    pair = finite[:, 1:] & finite[:, :-1]
    mid = 0.5 * (a[:, 1:] + a[:, :-1])
    change = a[:, 1:] - a[:, :-1]
    inner = (slice(None),) * 3 + (slice(1, -1), slice(1, -1))
    counted = (
        pair[inner]
        & pair[..., 2:, 1:-1]
        & pair[..., :-2, 1:-1]
        & pair[..., 1:-1, 2:]
        & pair[..., 1:-1, :-2]
    )
    zero = mid.new_zeros(())
    gy = torch.where(counted, 0.5 * (mid[..., 2:, 1:-1] - mid[..., :-2, 1:-1]), zero)
    gx = torch.where(counted, 0.5 * (mid[..., 1:-1, 2:] - mid[..., 1:-1, :-2]), zero)
    dt = torch.where(counted, change[inner], zero)
    dims = (1, 3, 4)
    syy, sxx, sxy = (gy * gy).sum(dims), (gx * gx).sum(dims), (gx * gy).sum(dims)
    by, bx = (gy * dt).sum(dims), (gx * dt).sum(dims)
    ridge = RIDGE * (syy + sxx) + torch.finfo(torch.float32).tiny
    syy, sxx = syy + ridge, sxx + ridge
    det = syy * sxx - sxy * sxy
    vy = (-by * sxx + bx * sxy) / det
    vx = (-bx * syy + by * sxy) / det
    velocity = torch.stack([vy, vx], dim=-1)
    velocity = torch.where(torch.isfinite(velocity), velocity, 0.0)
    return velocity.clamp(-MAX_CELLS_PER_STEP, MAX_CELLS_PER_STEP)


def advect(field: Tensor, velocity: Tensor, leads: Sequence[int]) -> Tensor:
    """``field`` [B, V, H, W] moved by ``velocity`` [B, V, 2] for each of ``leads`` steps:
    [B, L, V, H, W] (module docstring: bilinear, the edge beyond the patch, a cell whose
    source touches a missing value keeps its own; a missing cell stays missing). A shift of
    whole cells moves the values exactly; no shift returns ``field`` as it is."""
    # filled on the device, not copied from the host: a copy cannot be captured in a CUDA graph
    steps = torch.stack([field.new_full((), float(lead), dtype=torch.float32) for lead in leads])
    shift = velocity.float()[:, :, None, :] * steps[None, None, :, None]  # [B, V, L, 2]
    finite = torch.isfinite(field)
    values = torch.where(finite, field, 0.0)[:, :, None].expand(-1, -1, len(leads), -1, -1)
    weight = finite.to(values.dtype)[:, :, None].expand_as(values)
    for axis, dim in ((0, 3), (1, 4)):
        values, weight = (_shifted(t, shift[..., axis], dim) for t in (values, weight))
    out = torch.where((weight >= 1.0) & finite[:, :, None], values, field[:, :, None])
    return out.transpose(1, 2)


def _shifted(values: Tensor, shift: Tensor, dim: int) -> Tensor:
    """``values`` [B, V, L, H, W] moved by ``shift`` [B, V, L] cells along ``dim`` (3: rows,
    4: columns), each cell interpolating linearly between the two cells its source lies
    between, the edge cell's value beyond the edge."""
    size = values.shape[dim]
    back = -shift
    whole = torch.floor(back)
    frac = (back - whole)[..., None, None]
    cells = torch.arange(size, device=values.device)
    source = cells + whole[..., None].long()  # [B, V, L, size]
    index, after = source.clamp(0, size - 1), (source + 1).clamp(0, size - 1)
    view = [*index.shape[:3], 1, 1]
    view[dim] = size
    expand = list(values.shape)
    first = values.gather(dim, index.reshape(view).expand(expand))
    second = values.gather(dim, after.reshape(view).expand(expand))
    return torch.where(frac > 0, (1 - frac) * first + frac * second, first)


def advected_persistence(
    inputs: Tensor, persistence: Tensor, clim_inputs: Tensor | None, leads: Sequence[int]
) -> Tensor:
    """C(t0) + the anomaly p − C(t0) moved with the motion of the inputs' anomalies
    x − C over the input steps: [B, L, V, H, W]. ``inputs`` [B, T, V, H, W] are the
    targets' input steps, ``persistence`` p [B, 1, V, H, W], ``clim_inputs`` C at the
    input times [B, T, V, H, W] (None: no climatology, the anomaly is the field itself)."""
    if clim_inputs is None:
        return advect(persistence[:, 0], motion(inputs), leads)
    c0 = clim_inputs[:, -1:]
    return c0 + advect((persistence - c0)[:, 0], motion(inputs - clim_inputs), leads)

"""``[train] augment``: extra training samples made from the ones there are.

``"mirror"``: each training sample is mirrored north-south and east-west, each with
probability ½ (drawn on the seeded generators): its inputs, targets, target mask and static
fields, the climatology it reads (through ``mirror_rows``/``mirror_cols``, which
:class:`stpipe.models.climatology.ClimatologyLookup` honours) and the vector components whose
axis the mirror reverses (the northward component of a ``u…``/``v…`` pair north-south, the
eastward one east-west). A few weeks of data hold a few flow regimes, and a model that never
saw the wind from the north fails when it turns there: the validation week of ``regional``
seed 4 a week earlier in ``benchmarks/bench_quality.py`` has a northerly mean flow that its
train days never had, and its model, on those days, trailed the best baseline by 50 % at
12 h. Advection, what the network learns on top of, is the same physics in every direction;
a mirrored world keeps its geography consistent (static fields, climatology) and shows the
network every direction of the flow it carries. Validation, calibration and forecasts see
the data as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stpipe.learn.context import Batch

Augment = Callable[[Batch], Batch]


def vector_signs(variables: Sequence[str], *, among: Sequence[str]) -> Tensor:
    """Per variable of ``variables``, the factor [2, V] a mirror of the rows (north-south,
    row 0) and of the columns (east-west, row 1) multiplies it by: −1 for the northward
    component ``v…`` and the eastward ``u…`` of a pair whose other half is in ``among``
    (``u10``/``v10``, ``u``/``v``, ``u100``/``v100``), 1 for everything else."""
    names = set(among) | set(variables)
    north = [v.startswith("v") and "u" + v[1:] in names for v in variables]
    east = [v.startswith("u") and "v" + v[1:] in names for v in variables]
    return torch.tensor([north, east]).float().mul(-2.0).add(1.0)


class Mirror:
    """The ``"mirror"`` augmentation (module docstring) of batches whose inputs hold
    ``input_variables`` and whose targets ``target_variables``."""

    def __init__(self, input_variables: Sequence[str], target_variables: Sequence[str]) -> None:
        every = [*input_variables, *target_variables]
        self.input_signs = vector_signs(input_variables, among=every)
        self.target_signs = vector_signs(target_variables, among=every)

    def __call__(self, batch: Batch) -> Batch:
        x = batch["x"]
        rows, cols = torch.rand(2, x.shape[0], device=x.device) < 0.5
        out = dict(batch)
        out["x"] = _mirrored(x, rows, cols, signs=self.input_signs.to(x.device))
        out["y"] = _mirrored(batch["y"], rows, cols, signs=self.target_signs.to(x.device))
        out["mask"] = _mirrored(batch["mask"], rows, cols)
        if "static" in batch:
            out["static"] = _mirrored(batch["static"], rows, cols)
        out["mirror_rows"], out["mirror_cols"] = rows, cols
        return out


def _mirrored(t: Tensor, rows: Tensor, cols: Tensor, *, signs: Tensor | None = None) -> Tensor:
    """``t`` [B, ..., H, W] with the samples of ``rows`` [B] flipped along H and those of
    ``cols`` along W; ``signs`` [2, V]: t is [B, N, V, H, W] and a flip multiplies each
    variable by its factor."""
    shape = (-1,) + (1,) * (t.dim() - 1)
    r, c = rows.view(shape), cols.view(shape)
    t = torch.where(r, t.flip(-2), t)
    t = torch.where(c, t.flip(-1), t)
    if signs is not None:
        factor = torch.where(r, signs[0][:, None, None], 1.0)
        t = t * torch.where(c, signs[1][:, None, None], 1.0) * factor
    return t


AUGMENTATIONS: dict[str, Callable[[Sequence[str], Sequence[str]], Augment] | None] = {
    "none": None,
    "mirror": Mirror,
}


def augmentation(name: str, *, inputs: Sequence[str], targets: Sequence[str]) -> Augment | None:
    """The ``[train] augment`` of that ``name`` for a model with these variables (None:
    the batches as they are)."""
    make = AUGMENTATIONS[name]
    return None if make is None else make(inputs, targets)

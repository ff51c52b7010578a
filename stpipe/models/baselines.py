"""Reference forecasts behind the forecaster interface, and the terms residual models reuse.

With p the persistence field (last finite input, :func:`stpipe.models.common.last_valid`),
C(t) the train-split climatology at valid time t (:mod:`stpipe.models.climatology`),
t0 the last input time, t the valid time of a lead and A the advected persistence
C(t0) + (p − C(t0)) moved with the motion the input steps show
(:func:`stpipe.models.advection.advected_persistence`):

- ``persistence``:              p
- ``climatology``:              C(t)
- ``persistence_clim_change``:  p + C(t) − C(t0)
- ``advection``:                A + C(t) − C(t0), the anomaly moved, on the climatology of t

Each is a linear combination w_p·p + w_c·C(t) + w_0·C(t0) + w_a·A of the terms
(:func:`reference_terms`) with the weights of :data:`BASELINE_WEIGHTS`, computed by
:func:`reference_forecast`: a calibrated model (:mod:`stpipe.models.scnn`) that falls back to
a baseline computes it with the same function from the same terms, so it forecasts exactly
what the baseline does. :func:`baseline_weights` gives the weights per lead that residual
models start from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from stpipe.core.errors import ConfigError
from stpipe.models.advection import advected_persistence
from stpipe.models.climatology import Climatology, ClimatologyLookup
from stpipe.models.common import Batch, Forecaster, last_valid
from stpipe.models.settings import BaselineName

Terms = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]  # p, C(t), C(t0), A
N_TERMS = 4
BASELINE_WEIGHTS: dict[BaselineName, tuple[float, float, float, float]] = {
    "persistence": (1.0, 0.0, 0.0, 0.0),
    "climatology": (0.0, 1.0, 0.0, 0.0),
    "persistence_clim_change": (1.0, 1.0, -1.0, 0.0),
    "advection": (0.0, 1.0, -1.0, 1.0),
}


def baseline_terms(
    batch: Batch, *, target_index: Tensor, climatology: ClimatologyLookup | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Physical-unit terms of the baselines for the target variables.

    Returns persistence [B, 1, V, H, W] and, with a climatology, C at the input times
    [B, T, V, H, W] and at the valid times [B, L, V, H, W] (else None, None).
    """
    x = batch["x"]
    persistence = last_valid(x[:, :, target_index])[:, None]
    if climatology is None:
        return persistence, None, None
    steps, height, width = x.shape[1], x.shape[-2], x.shape[-1]
    times = torch.cat([batch["x_times"], batch["y_times"]], dim=1)
    clim = climatology(times, batch["row0"], batch["col0"], height=height, width=width)
    return persistence, clim[:, :steps], clim[:, steps:]


def reference_terms(
    persistence: Tensor,
    clim_inputs: Tensor | None,
    clim_valid: Tensor | None,
    *,
    inputs: Tensor,
    leads: Sequence[int] | None,
) -> Terms:
    """The terms the references weigh, from those of :func:`baseline_terms` and the
    targets' input steps ``inputs`` [B, T, V, H, W]: p [B, 1, V, H, W], C(t) [B, L, V, H, W],
    C(t0) [B, 1, V, H, W] and A [B, L, V, H, W] at ``leads`` in physical units (C None
    without a climatology, A None without leads: a forecaster that never weighs A does not
    compute it; NaN where a term has no value: p outside the grid, C where its slot had no
    train data)."""
    advected = (
        None if leads is None else advected_persistence(inputs, persistence, clim_inputs, leads)
    )
    if clim_inputs is None or clim_valid is None:
        return persistence, None, None, advected
    return persistence, clim_valid, clim_inputs[:, -1:], advected


def reference_forecast(terms: Terms, weights: Tensor) -> Tensor:
    """Σ_k w_k·term_k of :func:`reference_terms` with ``weights`` [L, V, 4] (p, C(t), C(t0),
    A) → [B, L, V, H, W].

    Added in the order p, C(t), C(t0), A, a term of weight 0 skipped (its NaN too) and a
    missing one (None) left out: the weights of :data:`BASELINE_WEIGHTS` give each baseline
    bit for bit, e.g. (p + C(t)) − C(t0) for persistence plus the climatological change.
    """
    persistence, *others = terms
    out = _weighted(persistence, weights, 0)
    for k, term in enumerate(others, start=1):
        if term is not None:
            out = out + _weighted(term, weights, k)
    return out


def _weighted(term: Tensor, weights: Tensor, k: int) -> Tensor:
    """w_k·term [B, L, V, H, W] with w_k the k-th weights [L, V]; 0 where w_k is 0."""
    w = weights[None, :, :, None, None, k]
    return torch.where(w != 0, w * term, 0.0)


def baseline_weights(
    name: Literal["auto"] | BaselineName,
    *,
    leads: Sequence[int],
    variables: Sequence[str],
    climatology: Climatology | None,
) -> np.ndarray:
    """Weights (w_p, w_c, w_0, w_a) of p, C(t), C(t0), A per lead and variable: float32
    [L, V, 4].

    ``"auto"`` is the least-squares blend of p, C(t) and C(t0) fitted on the train split
    with the climatology held out (:class:`~stpipe.models.climatology.Climatology`): at
    least as good there as the best of them, and it leans on the climatology only as far
    as that generalises (w_a = 0: the fit has no A). Without a climatology it is
    persistence.
    """
    weights = np.zeros((len(leads), len(variables), N_TERMS), dtype=np.float32)
    if name == "persistence" or (name == "auto" and climatology is None):
        weights[..., 0] = 1.0
        return weights
    if climatology is None:
        raise ConfigError(f"[model] baseline {name!r} needs a climatology, none was given")
    if name != "auto":
        weights[...] = BASELINE_WEIGHTS[name]
    else:
        for i, lead in enumerate(leads):
            for j, var in enumerate(variables):
                weights[i, j, :3] = climatology.blend(var, lead)
    return weights


class Baseline(Forecaster):
    """Persistence, climatology, persistence plus climatological change or advection (see
    the module docstring)."""

    def __init__(self, kind: BaselineName, *, climatology: Climatology | None, **forecaster_args):
        super().__init__(**forecaster_args)
        if kind != "persistence" and climatology is None:
            raise ConfigError(f"[model] name {kind!r} needs a climatology, none was given")
        self.kind = kind
        self.climatology = (
            None
            if kind == "persistence"
            else ClimatologyLookup(climatology, variables=self.target_variables, step_s=self.step_s)
        )
        weights = torch.tensor(BASELINE_WEIGHTS[kind])
        self.moves = bool(weights[3])  # weighs A, the advected persistence
        shape = (len(self.leads), len(self.target_variables), N_TERMS)
        self.register_buffer("weights", weights.expand(shape).clone())  # [L, V, 4]

    def forward(self, batch: Batch) -> Tensor:
        terms = baseline_terms(batch, target_index=self.target_index, climatology=self.climatology)
        inputs = batch["x"][:, :, self.target_index]
        leads = self.leads if self.moves else None
        return reference_forecast(reference_terms(*terms, inputs=inputs, leads=leads), self.weights)

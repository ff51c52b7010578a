"""Verification metrics: small classes in one table, scored batch by batch (torch, float64).

A metric (:class:`Metric`) states what it is (``name``, ``long_name`` in words, ``units``
relative to the variable scored, whether ``lower`` or ``higher`` is ``better``), which
forecasters it scores in an evaluation, the sums it takes over one batch, and how those
sums, added over every batch, become one value per lead and variable [L, V] and one per
lead pooled over the variables [L]. :class:`MetricSums` keeps the running sums, so a whole
split is scored without holding it. :data:`METRICS` is the table an evaluation scores:
adding a metric is one class and one entry there.

A batch (:class:`ScoredBatch`) is every forecaster's prediction, the target and the mask
[B, L, V, H, W] in physical units (B samples, L leads, V variables, H × W patch). A cell
counts where ``mask > 0`` and the target is finite; a NaN prediction at such a cell makes
the metric NaN (it is not dropped), so forecasters are always scored on the same cells.

Conventions, and how they relate to WeatherBench (WB1: Rasp et al. 2020,
doi:10.1029/2020MS002203; WB2: Rasp et al. 2024, doi:10.1029/2023MS004019):

- latitude weights w = cos(lat) / mean(cos(lat)) over the grid's rows
  (:func:`stpipe.core.grid.latitude_weights`; WB1's weights), cropped to patches by
  :func:`patch_weights`. WB2 weights by cell area instead (sin of the upper minus sin of the
  lower cell edge, edges halfway between rows and at ±90° beyond the first and last row):
  on a global equiangular grid without rows at the poles the two agree after normalising,
  on grids with pole rows (weight 0 here) or regional grids they differ;
- RMSE = sqrt(Σ w·m·e² / Σ w·m) over all samples (times) and cells, e = ŷ − y, m the
  counted cells: one mean square over times and cells, root taken last. It equals WB2's
  reported RMSE (the root of the time-averaged area-weighted MSE) when every time counts
  the same cells with the same weights; WB2's ``RMSESqrtBeforeTimeAvg`` (root per time,
  then averaged) is another, never larger, number. With w = 1 it is the plain RMSE;
- skill = 1 − MSE_model / MSE_reference (:func:`skill`; MSE-based);
- ACC against a climatology C: one correlation pooled over all samples and cells (see
  :class:`AnomalyCorrelation`); WB2's ACC is a correlation per init time, averaged over
  init times, which stpipe does not compute.

The headline metric, which tables and plots lead with and the default promotion metric
averages over leads, is :func:`headline_metric`. Cells of overlapping patches count once
per patch: score on non-overlapping patches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor

Units = Literal["variable", "variable²", "1"]  # the variable's units, their square, none
Better = Literal["lower", "higher"]


def headline_metric(*, latlon: bool) -> str:
    """The metric that leads: latitude-weighted RMSE on lat/lon grids, else RMSE."""
    return LatitudeWeightedRMSE.name if latlon else RMSE.name


def metric_units(units: Units, variable_units: str) -> str:
    """The units of a metric whose values are in ``units`` of a variable in ``variable_units``."""
    if units == "1":
        return "1"
    if not variable_units:
        return ""
    if units == "variable²":
        return f"({variable_units})²" if " " in variable_units else f"{variable_units}²"
    return variable_units


def patch_weights(grid_weights: Tensor, row0: Tensor, height: int) -> Tensor:
    """Per-row weights of patches: [B, 1, 1, H, 1], 0 for rows outside the grid.

    ``grid_weights`` [H_grid] are the weights of the grid's rows (e.g. latitude weights);
    ``row0`` [B] the grid row of each patch's first row (negative for padded edges).
    """
    rows = row0[:, None].to(grid_weights.device) + torch.arange(height, device=grid_weights.device)
    inside = (rows >= 0) & (rows < grid_weights.shape[0])
    w = torch.where(inside, grid_weights[rows.clamp(0, grid_weights.shape[0] - 1)], 0.0)
    return w[:, None, None, :, None]


def skill(mse: Tensor, mse_reference: Tensor) -> Tensor:
    """Skill score 1 − MSE/MSE_ref (per lead and variable): 1 perfect, 0 no better than ref."""
    return 1.0 - mse / mse_reference


@dataclass(frozen=True)
class GridPlacement:
    """Where a batch's patches lie: grid row and column of each first cell [B], grid shape."""

    row0: Tensor
    col0: Tensor
    shape: tuple[int, int]


@dataclass(frozen=True)
class ScoringSetup:
    """What an evaluation scores: on a lat/lon grid or not, and which forecasters."""

    latlon: bool
    forecasters: tuple[str, ...]


class ScoredBatch:
    """One batch of every forecaster's prediction and the truth, as the metrics read it.

    ``preds``: forecaster → prediction, ``target``, ``mask`` [B, L, V, H, W] (physical units);
    ``weights`` broadcast to that shape (latitude weights, :func:`patch_weights`; None: 1);
    ``climatology`` C at each valid time [B, L, V, H, W]; ``placement`` where the patches lie
    on the grid; ``value_range`` (low, high) of the targets on the train split.
    """

    def __init__(
        self,
        preds: Mapping[str, Tensor],
        target: Tensor,
        mask: Tensor,
        *,
        weights: Tensor | None = None,
        climatology: Tensor | None = None,
        placement: GridPlacement | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        if value_range is not None and not value_range[1] > value_range[0]:
            raise ValueError(f"value_range needs high > low, got {value_range}")
        self.preds = preds
        self.target = target
        self.mask = mask
        self.weights = weights
        self.climatology = climatology
        self.placement = placement
        self.value_range = value_range
        self._errors: dict[str, Tensor] = {}

    @cached_property
    def valid(self) -> Tensor:
        """The cells that count (bool)."""
        return (self.mask > 0) & torch.isfinite(self.target)

    @cached_property
    def counted(self) -> Tensor:
        """1.0 where a cell counts, else 0 (float64)."""
        return self.valid.to(torch.float64)

    @cached_property
    def cell_weights(self) -> Tensor:
        """``weights`` where a cell counts, else 0 (float64; 1 without weights)."""
        if self.weights is None:
            return self.counted
        w = self.weights.to(torch.float64).expand_as(self.counted)
        return torch.where(self.valid, w, 0.0)

    @cached_property
    def grid_counted(self) -> Tensor:
        """How often each grid cell counts in this batch, per lead and variable [L, V, ny, nx]."""
        return self.on_grid(self.counted).sum(0)

    def error(self, forecaster: str) -> Tensor:
        """ŷ − y of ``forecaster`` where a cell counts, else 0 (float64)."""
        if forecaster not in self._errors:
            diff = self.preds[forecaster].to(torch.float64) - self.target.to(torch.float64)
            self._errors[forecaster] = torch.where(self.valid, diff, 0.0)
        return self._errors[forecaster]

    def on_grid(self, field: Tensor) -> Tensor:
        """``field`` [B, L, V, H, W] placed on the whole grid [B, L, V, ny, nx], 0 elsewhere."""
        if self.placement is None:
            raise ValueError("this metric needs the patches' placement on the grid")
        ny, nx = self.placement.shape
        height, width = field.shape[-2:]
        out = field.new_zeros((*field.shape[:-2], ny, nx))
        corners = zip(self.placement.row0.tolist(), self.placement.col0.tolist(), strict=True)
        for b, (r0, c0) in enumerate(corners):
            r_lo, r_hi = max(r0, 0), min(r0 + height, ny)
            c_lo, c_hi = max(c0, 0), min(c0 + width, nx)
            out[b, ..., r_lo:r_hi, c_lo:c_hi] = field[
                b, ..., r_lo - r0 : r_hi - r0, c_lo - c0 : c_hi - c0
            ]
        return out


def _cells(*fields: Tensor) -> Tensor:
    """[K] fields [B, L, V, H, W] → [K, L, V], each summed over samples and cells."""
    return torch.stack([f.sum(dim=(0, 3, 4)) for f in fields])


class Metric(ABC):
    """A verification metric (see the module docstring).

    Subclasses set ``name`` (the key in results, JSON and MLflow), ``long_name`` (words),
    ``units`` and ``better``, and implement :meth:`batch_sums` and :meth:`per_variable`.
    """

    name: str
    long_name: str
    units: Units
    better: Better

    def forecasters(self, setup: ScoringSetup) -> tuple[str, ...]:
        """The forecasters scored in an evaluation (none: the metric is not reported)."""
        return setup.forecasters

    @abstractmethod
    def batch_sums(self, batch: ScoredBatch, forecaster: str) -> Tensor:
        """Sums over one batch's samples and cells, [K, L, V, …] float64, added over batches."""

    @abstractmethod
    def per_variable(self, sums: Tensor) -> Tensor:
        """[L, V] from the sums over every batch."""

    def pooled(self, sums: Tensor) -> Tensor:
        """[L], pooled over the variables: by default their mean."""
        return self.per_variable(sums).mean(-1)


class RMSE(Metric):
    """sqrt(Σ m·e² / Σ m); pooled: the root of the mean MSE over variables."""

    name = "rmse"
    long_name = "RMSE"
    units: Units = "variable"
    better: Better = "lower"

    def batch_sums(self, batch: ScoredBatch, forecaster: str) -> Tensor:
        e = batch.error(forecaster)
        return _cells(batch.counted, e * e)

    def per_variable(self, sums: Tensor) -> Tensor:
        return (sums[1] / sums[0]).sqrt()

    def pooled(self, sums: Tensor) -> Tensor:
        return (sums[1] / sums[0]).mean(-1).sqrt()


class LatitudeWeightedRMSE(RMSE):
    """sqrt(Σ w·m·e² / Σ w·m) with latitude weights w = cos(lat)/mean(cos(lat)) (lat/lon
    grids only; WB1's weights, see the module docstring for WB2's)."""

    name = "rmse_lat_weighted"
    long_name = "latitude-weighted RMSE"

    def forecasters(self, setup: ScoringSetup) -> tuple[str, ...]:
        return setup.forecasters if setup.latlon else ()

    def batch_sums(self, batch: ScoredBatch, forecaster: str) -> Tensor:
        e, w = batch.error(forecaster), batch.cell_weights
        return _cells(w, w * e * e)


class MAE(Metric):
    """Σ m·|e| / Σ m; pooled: the mean over variables."""

    name = "mae"
    long_name = "MAE"
    units: Units = "variable"
    better: Better = "lower"

    def batch_sums(self, batch: ScoredBatch, forecaster: str) -> Tensor:
        return _cells(batch.counted, batch.error(forecaster).abs())

    def per_variable(self, sums: Tensor) -> Tensor:
        return sums[1] / sums[0]


class MSESkill(Metric):
    """1 − MSE / MSE_reference on the same cells; pooled from the MSEs' means over
    variables. Reported when the reference is among the forecasters (it scores 0 itself)."""

    units: Units = "1"
    better: Better = "higher"

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self.name = f"skill_vs_{reference}"
        self.long_name = f"MSE skill against {reference.replace('_', ' ')}"

    def forecasters(self, setup: ScoringSetup) -> tuple[str, ...]:
        return setup.forecasters if self.reference in setup.forecasters else ()

    def batch_sums(self, batch: ScoredBatch, forecaster: str) -> Tensor:
        e, ref = batch.error(forecaster), batch.error(self.reference)
        return _cells(batch.counted, e * e, ref * ref)

    def per_variable(self, sums: Tensor) -> Tensor:
        return skill(sums[1] / sums[0], sums[2] / sums[0])

    def pooled(self, sums: Tensor) -> Tensor:
        return skill((sums[1] / sums[0]).mean(-1), (sums[2] / sums[0]).mean(-1))


class AnomalyCorrelation(Metric):
    """Anomaly correlation coefficient (ACC) against the climatology C (lat/lon grids).

    With f' = ŷ − C, o' = y − C and weights w over the counted cells of all samples,
    pooled over samples (times) and cells together:

    - uncentred (default): ACC = Σ w f' o' / sqrt(Σ w f'² · Σ w o'²). This is WB2's ACC
      formula, but WB2 takes it over the cells of each init time and averages the
      per-time values; pooled, times with large anomalies weigh more;
    - centred (``centred=True``): the weighted means of f' and o' are removed first, as
      WB1's ``compute_weighted_acc`` with ``mean_dims`` all dims.

    Cells where C is NaN (slot without data, outside the grid) are left out. The
    climatology itself is not scored (0/0). Pooled over variables: their mean.
    """

    name = "acc"
    long_name = "anomaly correlation"
    units: Units = "1"
    better: Better = "higher"

    def __init__(self, *, centred: bool = False) -> None:
        self.centred = centred

    def forecasters(self, setup: ScoringSetup) -> tuple[str, ...]:
        return tuple(f for f in setup.forecasters if f != "climatology") if setup.latlon else ()

    def batch_sums(self, batch: ScoredBatch, forecaster: str) -> Tensor:
        if batch.climatology is None:
            raise ValueError("ACC needs the climatology of the batch")
        clim = batch.climatology.to(torch.float64)
        m = batch.valid & torch.isfinite(clim)
        f = torch.where(m, batch.preds[forecaster].to(torch.float64) - clim, 0.0)
        o = torch.where(m, batch.target.to(torch.float64) - clim, 0.0)
        w = torch.where(m, batch.cell_weights, 0.0)
        # Σw, Σw f', Σw o', Σw f'o', Σw f'², Σw o'²
        return _cells(w, w * f, w * o, w * f * o, w * f * f, w * o * o)

    def per_variable(self, sums: Tensor) -> Tensor:
        sw, sf, so, sfo, sff, soo = sums
        if self.centred:
            sfo, sff, soo = sfo - sf * so / sw, sff - sf * sf / sw, soo - so * so / sw
        return sfo / (sff * soo).sqrt()


class OpenSTLError(Metric):
    """OpenSTL's MSE or MAE (``openstl/core/metrics.py``) on cell grids, for tables beside
    OpenSTL's.

    Data are min-max scaled, x ↦ (x − low) / (high − low) with the train split's range of
    the targets (``ScoredBatch.value_range``), as OpenSTL's TaxiBJ loader. Per frame (lead)
    the per-pixel squared (``squared=True``) or absolute error is averaged over samples,
    then summed over the grid's pixels; each variable (channel) gives its share [L, V] and
    the pooled value sums them, as OpenSTL sums over C × H × W. Masked cells drop out of
    the per-pixel means; pixels never counted add nothing.
    """

    units: Units = "1"
    better: Better = "lower"

    def __init__(self, *, squared: bool) -> None:
        self.squared = squared
        self.name = "mse_openstl" if squared else "mae_openstl"
        self.long_name = f"{'MSE' if squared else 'MAE'} (OpenSTL convention)"

    def forecasters(self, setup: ScoringSetup) -> tuple[str, ...]:
        return () if setup.latlon else setup.forecasters

    def batch_sums(self, batch: ScoredBatch, forecaster: str) -> Tensor:
        if batch.value_range is None:
            raise ValueError(f"{self.name} needs the targets' value_range")
        low, high = batch.value_range
        err = batch.error(forecaster) / (high - low)
        err = err * err if self.squared else err.abs()
        # per grid pixel, over samples: Σm, Σm·err
        return torch.stack([batch.grid_counted, batch.on_grid(err).sum(0)])

    def per_variable(self, sums: Tensor) -> Tensor:
        count = sums[0]
        return torch.where(count > 0, sums[1] / count.clamp_min(1), 0.0).sum(dim=(-2, -1))

    def pooled(self, sums: Tensor) -> Tensor:
        return self.per_variable(sums).sum(-1)


METRICS: tuple[Metric, ...] = (
    RMSE(),
    MAE(),
    MSESkill("persistence"),
    MSESkill("climatology"),
    LatitudeWeightedRMSE(),
    AnomalyCorrelation(),
    OpenSTLError(squared=True),
    OpenSTLError(squared=False),
)


class MetricSums:
    """The running sums of each metric for each forecaster it scores, added batch by batch."""

    def __init__(self, metrics: Sequence[Metric], setup: ScoringSetup) -> None:
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique, got {names}")
        self.scored = {m.name: (m, m.forecasters(setup)) for m in metrics if m.forecasters(setup)}
        self._sums: dict[tuple[str, str], Tensor] = {}

    def update(self, batch: ScoredBatch) -> None:
        for name, (metric, forecasters) in self.scored.items():
            for forecaster in forecasters:
                sums = metric.batch_sums(batch, forecaster)
                key = (name, forecaster)
                self._sums[key] = sums if key not in self._sums else self._sums[key] + sums

    def _get(self, name: str, forecaster: str) -> Tensor:
        if (name, forecaster) not in self._sums:
            raise ValueError(f"no batch was added for {name} of {forecaster} (call update())")
        return self._sums[name, forecaster].cpu()

    def per_variable(self, name: str, forecaster: str) -> Tensor:
        """[L, V] float64 on the CPU."""
        return self.scored[name][0].per_variable(self._get(name, forecaster))

    def pooled(self, name: str, forecaster: str) -> Tensor:
        """[L] float64 on the CPU."""
        return self.scored[name][0].pooled(self._get(name, forecaster))

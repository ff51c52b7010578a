"""Verification metrics per lead and variable, accumulated over batches (torch, float64).

Every accumulator takes batches of ``pred``, ``target``, ``mask`` [B, L, V, H, W] (physical
units; B samples, L leads, V variables, H × W patch) and keeps running sums, so a whole
split is scored without holding it. A cell counts where ``mask > 0`` and the target is
finite; a NaN prediction at such a cell makes the metric NaN (it is not dropped), so
forecasts are always scored on the same cells. ``result``-style methods return float64
tensors [L, V] on the CPU.

Conventions (WeatherBench: Rasp et al. 2020, doi:10.1029/2020MS002203; WeatherBench 2:
Rasp et al. 2024, doi:10.1029/2023MS004019):

- latitude weights w = cos(lat) / mean(cos(lat)) over the grid
  (:func:`stpipe.core.grid.latitude_weights`), cropped to patches by :func:`patch_weights`;
- RMSE = sqrt(Σ w·m·e² / Σ w·m) over all samples (times) and cells: the square root is
  taken after averaging over time (WeatherBench 1; WeatherBench 2 calls this
  ``RMSESqrtAfterTimeAvg``). With w = 1 it is the plain RMSE;
- skill = 1 − MSE_model / MSE_reference (:func:`skill`);
- ACC against a climatology C, with forecast and observed anomalies f' = ŷ − C, o' = y − C:
  see :class:`AnomalyCorrelation`.

Cells of overlapping patches count once per patch: score on non-overlapping patches.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def _valid(target: Tensor, mask: Tensor) -> Tensor:
    return (mask > 0) & torch.isfinite(target)


def _sum_cells(x: Tensor) -> Tensor:
    """[B, L, V, H, W] → [L, V], summed in float64."""
    return x.to(torch.float64).sum(dim=(0, 3, 4))


class _RunningSums:
    """Sums kept across batches (float64, CPU)."""

    def __init__(self) -> None:
        self._sums: Tensor | None = None

    def _add(self, sums: Tensor) -> None:
        sums = sums.cpu()
        self._sums = sums if self._sums is None else self._sums + sums

    def _get(self) -> Tensor:
        if self._sums is None:
            raise ValueError(f"{type(self).__name__}: no batch was added (call update() first)")
        return self._sums


class ErrorAccumulator(_RunningSums):
    """MSE, RMSE, MAE and weighted RMSE per lead and variable.

    With e = ŷ − y, m the valid mask and w the weights (1 when ``update`` gets none):
    MSE = Σ m·e² / Σ m, MAE = Σ m·|e| / Σ m, RMSE = sqrt(MSE),
    weighted RMSE = sqrt(Σ w·m·e² / Σ w·m), sums over samples, H and W (all batches).
    """

    def update(
        self, pred: Tensor, target: Tensor, mask: Tensor, *, weights: Tensor | None = None
    ) -> None:
        """Add a batch; ``weights`` broadcast to [B, L, V, H, W] (see :func:`patch_weights`)."""
        m = _valid(target, mask)
        err = torch.where(m, pred.to(torch.float64) - target.to(torch.float64), 0.0)
        w = torch.ones_like(err) if weights is None else weights.to(torch.float64).expand_as(err)
        mw = torch.where(m, w, 0.0)
        sq = err * err
        # sums [5, L, V]: Σm, Σm e², Σm |e|, Σw m, Σw m e²
        self._add(
            torch.stack(
                [
                    _sum_cells(m),
                    _sum_cells(sq),
                    _sum_cells(err.abs()),
                    _sum_cells(mw),
                    _sum_cells(mw * sq),
                ]
            )
        )

    def mse(self) -> Tensor:
        s = self._get()
        return s[1] / s[0]

    def rmse(self) -> Tensor:
        return self.mse().sqrt()

    def mae(self) -> Tensor:
        s = self._get()
        return s[2] / s[0]

    def weighted_rmse(self) -> Tensor:
        s = self._get()
        return (s[4] / s[3]).sqrt()


class AnomalyCorrelation(_RunningSums):
    """Anomaly correlation coefficient (ACC) against a climatology, per lead and variable.

    With f' = ŷ − C, o' = y − C and weights w over valid cells of all samples:

    - uncentred (default; WeatherBench 2's ACC formula, pooled over time and space rather
      than averaged per time step): ACC = Σ w f' o' / sqrt(Σ w f'² · Σ w o'²);
    - centred (``centred=True``; WeatherBench 1's ``compute_weighted_acc`` with
      ``mean_dims`` all dims): the weighted means of f' and o' are removed first.

    Cells where C is NaN (slot without data, outside the grid) are left out.
    """

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor,
        climatology: Tensor,
        *,
        weights: Tensor | None = None,
    ) -> None:
        """Add a batch; ``climatology`` [B, L, V, H, W] is C at each valid time."""
        m = _valid(target, mask) & torch.isfinite(climatology)
        clim = climatology.to(torch.float64)
        f = torch.where(m, pred.to(torch.float64) - clim, 0.0)
        o = torch.where(m, target.to(torch.float64) - clim, 0.0)
        w = torch.ones_like(f) if weights is None else weights.to(torch.float64).expand_as(f)
        w = torch.where(m, w, 0.0)
        # sums [6, L, V]: Σw, Σw f', Σw o', Σw f'o', Σw f'², Σw o'²
        self._add(
            torch.stack(
                [
                    _sum_cells(w),
                    _sum_cells(w * f),
                    _sum_cells(w * o),
                    _sum_cells(w * f * o),
                    _sum_cells(w * f * f),
                    _sum_cells(w * o * o),
                ]
            )
        )

    def result(self, *, centred: bool = False) -> Tensor:
        sw, sf, so, sfo, sff, soo = self._get()
        if centred:
            sfo, sff, soo = sfo - sf * so / sw, sff - sf * sf / sw, soo - so * so / sw
        return sfo / (sff * soo).sqrt()


class OpenSTLErrors(_RunningSums):
    """OpenSTL's MSE and MAE (``openstl/core/metrics.py``), for tables beside OpenSTL's.

    Data are min-max scaled, x ↦ (x − low) / (high − low), as OpenSTL's TaxiBJ loader
    (ST-ResNet's MinMaxNormalization: one min and max over the train split, all channels,
    then mapped to [0, 1]). Per frame, the per-pixel error is averaged over samples, then
    summed over (C, H, W):

        MSE_l = Σ_{c,h,w} mean_n (ŷ − y)²[n, l, c, h, w] / (high − low)²

    ``mse()``/``mae()`` give that per lead [L]; ``mse_all()``/``mae_all()`` average over
    samples and frames together before the sum, which is OpenSTL's reported number
    (``np.mean(err, axis=(0, 1)).sum()``). Masked cells drop out of the per-pixel means;
    pixels never valid add nothing.
    """

    def __init__(self, *, low: float, high: float) -> None:
        if not high > low:
            raise ValueError(f"OpenSTL scaling needs high > low, got low={low} high={high}")
        super().__init__()
        self.scale = 1.0 / (high - low)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor) -> None:
        m = _valid(target, mask)
        err = torch.where(m, (pred.to(torch.float64) - target.to(torch.float64)) * self.scale, 0.0)
        # sums [3, L, V, H, W]: Σm, Σm e², Σm |e| over samples
        self._add(torch.stack([m.to(torch.float64).sum(0), (err * err).sum(0), err.abs().sum(0)]))

    def mse(self) -> Tensor:
        return _pixel_mean_sum(self._get(), 1, dims=(1, 2, 3))

    def mae(self) -> Tensor:
        return _pixel_mean_sum(self._get(), 2, dims=(1, 2, 3))

    def mse_all(self) -> Tensor:
        return _pixel_mean_sum(self._get().sum(dim=1), 1, dims=(0, 1, 2))

    def mae_all(self) -> Tensor:
        return _pixel_mean_sum(self._get().sum(dim=1), 2, dims=(0, 1, 2))


def _pixel_mean_sum(sums: Tensor, which: int, *, dims: tuple[int, ...]) -> Tensor:
    """Per-pixel mean (pixels never valid add 0), summed over ``dims``."""
    count = sums[0]
    return torch.where(count > 0, sums[which] / count.clamp_min(1), 0.0).sum(dim=dims)

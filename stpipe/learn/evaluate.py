"""Evaluation: a forecaster and the baselines on one split, per lead, in physical units.

``evaluate_model(model, data)`` scores every window wholly inside the split (test by
default; the job layer also scores candidates on ``"val"``) on non-overlapping patches
(``[patches] stride`` is set to the patch size and ``time_stride`` to 1, so every cell of
every window counts exactly once) with each metric of :data:`stpipe.core.metrics.METRICS`
(or those passed), and returns the scores as an ``xarray.Dataset`` with dims (forecaster,
lead, variable), laid out and written as JSON by :mod:`stpipe.learn.scores`. The
baselines (:mod:`stpipe.models.baselines`) use the climatology of the train split only;
the Dataset's attr ``climatology`` says which (e.g. ``"day of year × hour, ±30-day
smoothing"``, :attr:`stpipe.models.climatology.Climatology.description`).

``sample_maps(model, data)`` is one sample of the same split for a map panel
(:func:`stpipe.learn.plots.plot_sample_maps`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from stpipe.core.errors import ConfigError
from stpipe.core.grid import latitude_weights
from stpipe.core.metrics import (
    METRICS,
    GridPlacement,
    Metric,
    MetricSums,
    ScoredBatch,
    ScoringSetup,
    headline_metric,
    metric_units,
    patch_weights,
)
from stpipe.core.splits import SplitName
from stpipe.learn.context import (
    DataContext,
    build_baselines,
    grid_coordinates,
    iterate_on_device,
    make_split_loader,
    resolve_device,
)
from stpipe.learn.loader import PatchLoader
from stpipe.learn.scores import MODEL, MetricScores, PerLead, scores_dataset

EVAL_BATCH_SIZE = 64


@dataclass(frozen=True)
class SampleMaps:
    """One sample of the split for a map panel, first target variable, physical units.

    ``last_input`` [H, W]; ``truth``, ``forecast`` [L, H, W] (NaN outside the grid);
    ``rows``/``cols`` the coordinate values of the patch's rows and columns (NaN outside),
    named by ``row_dim``/``col_dim`` (``lat``/``lon`` on geographic grids).
    """

    variable: str
    units: str
    init_time: str
    lead_hours: PerLead
    last_input: np.ndarray
    truth: np.ndarray
    forecast: np.ndarray
    row_dim: str
    col_dim: str
    rows: np.ndarray
    cols: np.ndarray


def evaluate_model(
    model: nn.Module,
    data: DataContext,
    *,
    split: SplitName = "test",
    baselines: bool = True,
    device: str = "auto",
    metrics: Sequence[Metric] = METRICS,
) -> xr.Dataset:
    """Score ``model`` (``forward(batch)`` → [B, L, V_out, H, W] physical) on ``split``.

    ``data`` is the job's :class:`~stpipe.learn.context.DataContext` (e.g. the one training
    used). The model is put in eval mode on ``device`` (``[train] device``: auto, cpu,
    cuda); scores are computed in float32/float64. Returns the Dataset of
    :mod:`stpipe.learn.scores` (``"model"`` and, with ``baselines``, each baseline).
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    references = {k: b.to(device) for k, b in build_baselines(data).items()}
    forecasters = (MODEL, *(references if baselines else ()))
    sums = MetricSums(metrics, ScoringSetup(latlon=data.latlon, forecasters=forecasters))
    scoring = _Scoring(data)
    n_samples = 0
    with torch.no_grad():
        for batch, _ in iterate_on_device(_tiles(data, split, device), device):
            clim = references["climatology"](batch)
            preds = {MODEL: model(batch).float()}
            for name in forecasters[1:]:
                preds[name] = clim if name == "climatology" else references[name](batch)
            sums.update(scoring.batch(batch, preds, clim))
            n_samples += int(batch["weight"].sum())  # padding repeats weigh 0
    if n_samples == 0:
        raise ConfigError(f"split {split!r} has no window to evaluate")
    return _dataset(sums, data, forecasters=forecasters, split=split, n_samples=n_samples)


def sample_maps(
    model: nn.Module, data: DataContext, *, split: SplitName = "test", device: str = "auto"
) -> SampleMaps:
    """The first sample :func:`evaluate_model` scores on ``split``, for a map panel."""
    device = resolve_device(device)
    model = model.to(device).eval()
    with torch.no_grad():
        for batch, _ in iterate_on_device(_tiles(data, split, device, batch_size=1), device):
            return _sample_maps(data, batch, model(batch).float())
    raise ConfigError(f"split {split!r} has no window to evaluate")


def _tiles(
    data: DataContext, split: SplitName, device: torch.device, *, batch_size: int = EVAL_BATCH_SIZE
) -> PatchLoader:
    """The split's loader on non-overlapping patches at every window start (each cell once)."""
    return make_split_loader(
        data,
        spec=dataclasses.replace(data.spec, stride=data.spec.size, time_stride=1),
        split=split,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        max_batches=None,
        device=device,
    )


class _Scoring:
    """What the metrics need of the data beside the predictions: latitude weights, where
    patches lie on the grid, the targets' value range on the train split."""

    def __init__(self, data: DataContext) -> None:
        _, _, rows, cols = grid_coordinates(data)
        self.grid_shape = (len(rows), len(cols))
        self.grid_weights = torch.as_tensor(latitude_weights(rows)) if data.latlon else None
        self.value_range = _openstl_range(data)

    def batch(
        self, batch: dict[str, Tensor], preds: dict[str, Tensor], clim: Tensor
    ) -> ScoredBatch:
        y = batch["y"]
        weights = None
        if self.grid_weights is not None:
            weights = patch_weights(self.grid_weights.to(y.device), batch["row0"], y.shape[-2])
        return ScoredBatch(
            preds,
            y,
            batch["mask"],
            weights=weights,
            climatology=clim,
            placement=GridPlacement(batch["row0"], batch["col0"], self.grid_shape),
            value_range=self.value_range,
        )


def _dataset(
    sums: MetricSums,
    data: DataContext,
    *,
    forecasters: tuple[str, ...],
    split: str,
    n_samples: int,
) -> xr.Dataset:
    spec = data.spec
    variables = spec.target_variables
    units = [str(data.ds[v].attrs.get("units", "")) for v in variables]
    scores = {}
    for name, (metric, scored) in sums.scored.items():
        scores[name] = MetricScores(
            per_variable={f: sums.per_variable(name, f).numpy() for f in scored},
            pooled={f: sums.pooled(name, f).numpy() for f in scored},
            long_name=metric.long_name,
            units=", ".join(dict.fromkeys(metric_units(metric.units, u) for u in units)),
            better=metric.better,
        )
    evaluation = scores_dataset(
        scores,
        forecasters=forecasters,
        lead_hours=[lead * data.step_s / 3600 for lead in spec.leads],
        lead_steps=spec.leads,
        variables=variables,
        variable_units=units,
        split=split,
        n_samples=n_samples,
        headline=headline_metric(latlon=data.latlon),
    )
    evaluation.attrs["climatology"] = data.climatology.description  # the baselines' slots
    return evaluation


def _openstl_range(data: DataContext) -> tuple[float, float]:
    """(min, max) over the target variables on the train split, OpenSTL's MinMax scaling."""
    targets = data.spec.target_variables
    low = min(data.norm.minimum[v] for v in targets)
    high = max(data.norm.maximum[v] for v in targets)
    return low, high if high > low else low + 1.0


def _sample_maps(data: DataContext, batch: dict[str, Tensor], pred: Tensor) -> SampleMaps:
    spec = data.spec
    var = spec.target_variables[0]
    v_in = spec.input_variables.index(var)
    row_dim, col_dim, rows, cols = grid_coordinates(data)
    height, width = spec.shape
    r0, c0 = int(batch["row0"][0]), int(batch["col0"][0])
    mask = batch["mask"][0, :, 0].cpu().numpy() > 0
    init_ns = int(batch["x_times"][0, -1])
    return SampleMaps(
        variable=var,
        units=str(data.ds[var].attrs.get("units", "")),
        init_time=np.datetime_as_string(np.datetime64(init_ns, "ns"), unit="m"),
        lead_hours=tuple(lead * data.step_s / 3600 for lead in spec.leads),
        last_input=batch["x"][0, -1, v_in].cpu().numpy(),
        truth=np.where(mask, batch["y"][0, :, 0].cpu().numpy(), np.nan),
        forecast=np.where(mask, pred[0, :, 0].cpu().numpy(), np.nan),
        row_dim=row_dim,
        col_dim=col_dim,
        rows=_coords(rows, r0, height),
        cols=_coords(cols, c0, width),
    )


def _coords(values: np.ndarray, start: int, length: int) -> np.ndarray:
    idx = start + np.arange(length)
    inside = (idx >= 0) & (idx < len(values))
    out = np.full(length, np.nan)
    out[inside] = np.asarray(values, dtype=np.float64)[idx[inside]]
    return out

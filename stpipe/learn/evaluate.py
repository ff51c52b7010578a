"""Evaluation: a forecaster and the baselines on one split, per lead, in physical units.

``evaluate_model(model, data)`` scores every window wholly inside the split (test by
default; the job layer also scores candidates on ``"val"``) on non-overlapping patches
(``[patches] stride`` is set to the patch size and ``time_stride`` to 1, so every cell of
every window counts exactly once), with the streaming accumulators of :mod:`stpipe.core.metrics`.
The baselines (:mod:`stpipe.models.baselines`) use the climatology of the train split only.

``Evaluation.to_json(path)`` writes the format of ``shared/design.md``::

    {"leads": [1.0, 3.0, 6.0, 12.0], "lead_unit": "h", "lead_steps": [1, 3, 6, 12],
     "split": "test", "variables": ["t2m"], "n_samples": 412,
     "metrics": {"rmse": {"model": [...], "persistence": [...], "climatology": [...],
                          "persistence_clim_change": [...]},
                 "mae": {...}, "skill_vs_persistence": {...}, "skill_vs_climatology": {...},
                 "rmse_lat_weighted": {...}, "acc": {...},        # lat/lon grids
                 "mse_openstl": {...}, "mae_openstl": {...}},     # cell grids (traffic)
     "summary": {"rmse_mean": {...}, "rmse_wmean": {...}, ...},
     "per_variable": {"t2m": {"rmse": {...}, ...}}}

Each list has one value per lead. Lists under ``metrics`` pool the target variables: the
mean over variables of the per-variable MSE (RMSE = its root), MAE and ACC; OpenSTL's scores
sum over the variables (channels) as OpenSTL does, on data min-max scaled with the train
split's range of the targets. ``per_variable`` has the others one by one. Skill is 1 − MSE/MSE_ref. ACC is against the
train-split climatology (uncentred, WeatherBench 2) and is not reported for the climatology
itself (0/0). ``summary`` averages each list over the leads; ``rmse_wmean`` is the mean over
leads of the latitude-weighted RMSE on lat/lon grids, of the RMSE elsewhere (the default
promotion metric). Non-finite values are written as ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stpipe.core.errors import ConfigError
from stpipe.core.grid import latitude_weights
from stpipe.core.metrics import (
    AnomalyCorrelation,
    ErrorAccumulator,
    OpenSTLErrors,
    patch_weights,
    skill,
)
from stpipe.core.patches import PatchSpec, SplitName
from stpipe.learn.context import (
    DataContext,
    build_baselines,
    grid_coordinates,
    iterate_on_device,
    make_split_loader,
    resolve_device,
)

MODEL = "model"
EVAL_BATCH_SIZE = 64

PerLead = tuple[float, ...]
Table = dict[str, dict[str, PerLead]]  # metric → forecast name → per lead


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


@dataclass(frozen=True)
class Evaluation:
    """Scores per lead of the model (``"model"``) and the baselines on one split."""

    split: str
    lead_steps: tuple[int, ...]
    lead_hours: PerLead
    variables: tuple[str, ...]
    n_samples: int
    metrics: Table
    per_variable: dict[str, Table]
    sample: SampleMaps | None = field(default=None, compare=False)

    @property
    def forecasts(self) -> tuple[str, ...]:
        return tuple(self.metrics["rmse"])

    def summary(self) -> dict[str, dict[str, float]]:
        """Each metric averaged over leads: ``{"rmse_mean": {"model": …}, …, "rmse_wmean"}``."""
        out = {
            f"{name}_mean": {k: _mean(v) for k, v in by_forecast.items()}
            for name, by_forecast in self.metrics.items()
        }
        weighted = self.metrics.get("rmse_lat_weighted", self.metrics["rmse"])
        out["rmse_wmean"] = {k: _mean(v) for k, v in weighted.items()}
        return out

    def best_baseline(self, metric: str = "rmse") -> PerLead:
        """Per lead, the lowest value of ``metric`` among the baselines."""
        rows = [v for k, v in self.metrics[metric].items() if k != MODEL]
        if not rows:
            raise ConfigError("this evaluation was run without baselines")
        return tuple(min(values) for values in zip(*rows, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "leads": list(self.lead_hours),
            "lead_unit": "h",
            "lead_steps": list(self.lead_steps),
            "split": self.split,
            "variables": list(self.variables),
            "n_samples": self.n_samples,
            "metrics": _jsonable(self.metrics),
            "summary": _jsonable(self.summary()),
            "per_variable": _jsonable(self.per_variable),
        }

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (strict: NaN → null) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Evaluation:
        raw = json.loads(Path(path).read_text())

        def table(t: Mapping[str, Mapping[str, list]]) -> Table:
            return {m: {k: tuple(_nan(x) for x in v) for k, v in by.items()} for m, by in t.items()}

        return cls(
            split=raw["split"],
            lead_steps=tuple(raw["lead_steps"]),
            lead_hours=tuple(raw["leads"]),
            variables=tuple(raw["variables"]),
            n_samples=raw["n_samples"],
            metrics=table(raw["metrics"]),
            per_variable={v: table(t) for v, t in raw["per_variable"].items()},
        )


def evaluate_model(
    model: nn.Module,
    data: DataContext,
    *,
    split: SplitName = "test",
    baselines: bool = True,
    device: str = "auto",
) -> Evaluation:
    """Score ``model`` (``forward(batch)`` → [B, L, V_out, H, W] physical) on ``split``.

    ``data`` is the job's :class:`~stpipe.learn.context.DataContext` (e.g. the one training
    used). The model is put in eval mode on ``device`` (``[train] device``: auto, cpu,
    cuda); scores are computed in float32/float64.
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    references = {k: b.to(device) for k, b in build_baselines(data).items()}
    forecasts = [MODEL, *(references if baselines else ())]
    loader = make_split_loader(
        data,
        spec=_tiling_spec(data.spec),
        split=split,
        batch_size=EVAL_BATCH_SIZE,
        shuffle=False,
        drop_last=False,
        max_batches=None,
        device=device,
    )
    acc = _Accumulators(data, forecasts)
    sample = None
    with torch.no_grad():
        for batch, _ in iterate_on_device(loader, device):
            clim = references["climatology"](batch)
            preds = {MODEL: model(batch).float()}
            preds.update({k: references[k](batch) for k in forecasts if k != MODEL})
            acc.update(batch, preds, clim)
            if sample is None:
                sample = _sample_maps(data, batch, preds[MODEL])
    return acc.result(split=split, sample=sample)


def _tiling_spec(spec: PatchSpec) -> PatchSpec:
    """``spec`` with non-overlapping patches and every window start (each cell once)."""
    return dataclasses.replace(spec, stride=spec.size, time_stride=1)


class _Accumulators:
    """The metric accumulators of every forecast, fed batch by batch."""

    def __init__(self, data: DataContext, forecasts: list[str]) -> None:
        self.data = data
        self.forecasts = forecasts
        self.errors = {k: ErrorAccumulator() for k in forecasts}
        self.latlon = data.latlon
        self.acc = {k: AnomalyCorrelation() for k in forecasts if k != "climatology"}
        low, high = _openstl_range(data)
        self.openstl = (
            {} if self.latlon else {k: OpenSTLErrors(low=low, high=high) for k in forecasts}
        )
        _, _, rows, cols = grid_coordinates(data)
        self.grid_shape = (len(rows), len(cols))
        self.grid_weights = torch.as_tensor(latitude_weights(rows)) if self.latlon else None
        self.n_samples = 0

    def update(self, batch: dict[str, Tensor], preds: dict[str, Tensor], clim: Tensor) -> None:
        y, mask = batch["y"], batch["mask"]
        weights = None
        if self.grid_weights is not None:
            weights = patch_weights(self.grid_weights.to(y.device), batch["row0"], y.shape[-2])
        for name, pred in preds.items():
            self.errors[name].update(pred, y, mask, weights=weights)
            if name in self.acc:
                self.acc[name].update(pred, y, mask, clim, weights=weights)
            if name in self.openstl:
                self.openstl[name].update(*_on_grid((pred, y, mask), batch, self.grid_shape))
        self.n_samples += int(batch["weight"].sum())  # padding repeats weigh 0

    def result(self, *, split: str, sample: SampleMaps | None) -> Evaluation:
        if self.n_samples == 0:
            raise ConfigError(f"split {split!r} has no window to evaluate")
        per_var: dict[str, Tensor] = {}  # metric → [forecast, L, V]
        mse = {k: e.mse() for k, e in self.errors.items()}
        per_var["rmse"] = _stack(self.errors, lambda e: e.rmse())
        per_var["mae"] = _stack(self.errors, lambda e: e.mae())
        for ref in ("persistence", "climatology"):
            if ref in mse:
                per_var[f"skill_vs_{ref}"] = torch.stack(
                    [skill(mse[k], mse[ref]) for k in self.forecasts]
                )
        if self.latlon:
            per_var["rmse_lat_weighted"] = _stack(self.errors, lambda e: e.weighted_rmse())
            per_var["acc"] = _stack(self.acc, lambda a: a.result())

        spec = self.data.spec
        metrics: Table = {}
        for name, values in per_var.items():
            names = list(self.acc) if name == "acc" else self.forecasts
            pooled = _pool(name, values, mse, names)
            metrics[name] = {k: _floats(pooled[i]) for i, k in enumerate(names)}
        if self.openstl:  # OpenSTL sums over channels: no per-variable values
            metrics["mse_openstl"] = {k: _floats(o.mse()) for k, o in self.openstl.items()}
            metrics["mae_openstl"] = {k: _floats(o.mae()) for k, o in self.openstl.items()}
        per_variable = {
            var: {
                name: {
                    k: _floats(values[i, :, j])
                    for i, k in enumerate(list(self.acc) if name == "acc" else self.forecasts)
                }
                for name, values in per_var.items()
            }
            for j, var in enumerate(spec.target_variables)
        }
        return Evaluation(
            split=split,
            lead_steps=spec.leads,
            lead_hours=tuple(lead * self.data.step_s / 3600 for lead in spec.leads),
            variables=spec.target_variables,
            n_samples=self.n_samples,
            metrics=metrics,
            per_variable=per_variable,
            sample=sample,
        )


def _stack(accumulators: Mapping[str, Any], get: Any) -> Tensor:
    return torch.stack([get(a) for a in accumulators.values()])  # [forecast, L, V]


def _pool(name: str, values: Tensor, mse: Mapping[str, Tensor], names: list[str]) -> Tensor:
    """Pool [forecast, L, V] over variables: RMSEs as the root of the mean MSE, skills from
    the pooled MSEs, the rest as plain means."""
    if name in ("rmse", "rmse_lat_weighted"):
        return values.square().mean(-1).sqrt()
    if name.startswith("skill_vs_"):
        ref = mse[name.removeprefix("skill_vs_")].mean(-1)
        return torch.stack([skill(mse[k].mean(-1), ref) for k in names])
    return values.mean(-1)


def _on_grid(
    fields: tuple[Tensor, ...], batch: dict[str, Tensor], grid_shape: tuple[int, int]
) -> tuple[Tensor, ...]:
    """Patches [B, L, V, H, W] placed on the whole grid [B, L, V, ny, nx] (0 elsewhere, so
    the mask is 0 there): OpenSTL's per-pixel means are per grid cell of a frame."""
    ny, nx = grid_shape
    height, width = fields[0].shape[-2:]
    out = [f.new_zeros((*f.shape[:-2], ny, nx)) for f in fields]
    for b, (r0, c0) in enumerate(zip(batch["row0"].tolist(), batch["col0"].tolist(), strict=True)):
        r_lo, r_hi = max(r0, 0), min(r0 + height, ny)
        c_lo, c_hi = max(c0, 0), min(c0 + width, nx)
        for grid, patch in zip(out, fields, strict=True):
            grid[b, ..., r_lo:r_hi, c_lo:c_hi] = patch[
                b, ..., r_lo - r0 : r_hi - r0, c_lo - c0 : c_hi - c0
            ]
    return tuple(out)


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


def _floats(t: Tensor) -> PerLead:
    return tuple(float(v) for v in t.detach().cpu())


def _mean(values: PerLead) -> float:
    return float(np.mean(values)) if values else math.nan


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

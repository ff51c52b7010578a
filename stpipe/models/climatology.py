"""Climatology: per-cell mean by time slot, fitted on the train split, and its batch lookup.

A slot is the time of day (period ``"day"``: 86400 / step_s slots, 24 for hourly data) or the
time of day × day of week (period ``"week"``: 48 × 7 = 336 slots for half-hourly traffic),
computed from UTC valid times. :meth:`Climatology.fit` is the one place the models touch
xarray; :class:`ClimatologyLookup` carries the table as a buffer and crops it to patches.

It also fits, per lead, the least-squares blend of the baselines that residual models start
from (:func:`stpipe.models.baselines.baseline_weights`): with p = x(t0) the last value and
C̃ the climatology *leaving out the sample itself* (what a climatology fitted on other days
would say, as on the test split), the weights (w_p, w_c, w_0) minimise

    Σ [x(t0 + k) − w_p·p − w_c·C̃(t0 + k) − w_0·C̃(t0)]²

over all train pairs and cells, in units centred on the train mean. They cover
persistence (1, 0, 0), climatology (0, 1, 0), persistence plus the climatological change
(1, 1, −1) and damped anomaly persistence (r, 1, −r); a noisy climatology (few weeks of
data) gets little weight because it is held out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import dask
import dask.array as da
import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor, nn

from stpipe.core.errors import ConfigError, StoreError
from stpipe.core.grid import is_latlon, spatial_dims

Period = Literal["day", "week"]
Times = TypeVar("Times", np.ndarray, Tensor)

DAY_NS = 86_400 * 10**9
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0, as pandas counts)


def slots_per_period(*, period: Period, step_s: int) -> int:
    """Number of climatology slots: 86400/step_s per day, × 7 for a week."""
    if step_s < 1 or 86_400 % step_s:
        raise ConfigError(f"climatology needs a time step dividing one day, got step_s={step_s}")
    per_day = 86_400 // step_s
    return per_day * 7 if period == "week" else per_day


def time_slots(times_ns: Times, *, period: Period, step_s: int) -> Times:
    """Slot index of each time (int64 ns since 1970 UTC; numpy array or torch tensor).

    slot = (t mod day) // step, plus ``day_of_week × slots_per_day`` for period ``"week"``.
    """
    step_ns = step_s * 10**9
    slot = (times_ns % DAY_NS) // step_ns
    if period == "week":
        weekday = (times_ns // DAY_NS + EPOCH_WEEKDAY) % 7
        slot = weekday * (86_400 // step_s) + slot
    return slot


def climatology_period(setting: Literal["auto", "day", "week"], ds: xr.Dataset) -> Period:
    """Resolve ``[model] climatology_period``: 'auto' is 'day' on lat/lon grids, else 'week'."""
    if setting != "auto":
        return setting
    return "day" if is_latlon(ds) else "week"


@dataclass(frozen=True, eq=False)
class Climatology:
    """Slot-mean table of the train split and the baseline blend per lag.

    ``table`` float32 [slot, variable, row, col] in physical units (NaN where a slot had no
    data); ``blend_weights`` float32 [variable, lag, 3]: (w_p, w_c, w_0) for lags
    0..max_lag steps (see the module doc; lag 0 is (1, 0, 0)).
    """

    variables: tuple[str, ...]
    period: Period
    step_s: int
    table: np.ndarray
    blend_weights: np.ndarray

    @property
    def n_slots(self) -> int:
        return self.table.shape[0]

    def blend(self, variable: str, lag: int) -> tuple[float, float, float]:
        """(w_p, w_c, w_0) of ``variable`` at ``lag`` steps; past max_lag, the last lag's."""
        rows = self.blend_weights[self.variables.index(variable)]
        w_p, w_c, w_0 = rows[min(lag, len(rows) - 1)]
        return float(w_p), float(w_c), float(w_0)

    @classmethod
    def fit(
        cls,
        ds: xr.Dataset,
        *,
        variables: Sequence[str],
        period: Period,
        step_s: int,
        max_lag: int = 48,
    ) -> Climatology:
        """Fit on a (lazy) canonical dataset of the train split, dims (time, row, col).

        Slot means and counts come from one xarray groupby; the blend's normal equations
        from one pass over time-contiguous blocks. Times lie on a ``step_s`` grid, possibly
        with gaps (pairs never straddle a gap).
        """
        n_slots = slots_per_period(period=period, step_s=step_s)
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise StoreError(
                f"climatology: variables {missing} not in dataset {sorted(map(str, ds.data_vars))}"
            )
        if ds.sizes.get("time", 0) == 0:
            raise StoreError("climatology: the train split has no time steps")
        rows, cols = spatial_dims(ds)
        times = ds["time"].values.astype("datetime64[ns]")
        slots = time_slots(times.astype(np.int64), period=period, step_s=step_s)
        data = ds[list(variables)].transpose("time", rows, cols).assign_coords(slot=("time", slots))
        grouped = data.groupby("slot")
        means, counts = dask.compute(
            grouped.mean("time").reindex(slot=np.arange(n_slots)),
            grouped.count("time").reindex(slot=np.arange(n_slots), fill_value=0),
        )
        table = np.stack([means[v].values for v in variables], axis=1).astype(np.float32)
        count = np.stack([counts[v].values for v in variables], axis=1).astype(np.float64)

        regular = pd.date_range(times[0], times[-1], freq=pd.Timedelta(seconds=step_s))
        regular_slots = time_slots(regular.as_unit("ns").asi8, period=period, step_s=step_s)
        on_grid = data.drop_vars("slot").reindex(time=regular)
        sums = []
        for i, name in enumerate(variables):
            centre = np.nansum(count[:, i] * table[:, i]) / max(count[:, i].sum(), 1.0)
            sums.append(
                _normal_equations_lazy(
                    on_grid[name].data, table[:, i], count[:, i], regular_slots, centre, max_lag
                )
            )
        (sums,) = dask.compute(sums)
        weights = np.stack([_solve_blend(s) for s in sums]).astype(np.float32)
        return cls(
            variables=tuple(variables),
            period=period,
            step_s=int(step_s),
            table=table,
            blend_weights=weights,
        )


def _normal_equations_lazy(
    values: np.ndarray | da.Array,
    table: np.ndarray,
    count: np.ndarray,
    slots: np.ndarray,
    centre: float,
    max_lag: int,
) -> object:
    """Delayed sum over time-contiguous blocks of :func:`_normal_equations`: [K+1, 3, 4]."""
    values = da.asarray(values).rechunk({0: -1, 1: "auto", 2: "auto"})
    row_edges = np.cumsum((0, *values.chunks[1]))
    col_edges = np.cumsum((0, *values.chunks[2]))
    parts = []
    for (_, i, j), block in np.ndenumerate(values.to_delayed()):
        region = np.s_[:, row_edges[i] : row_edges[i + 1], col_edges[j] : col_edges[j + 1]]
        parts.append(
            dask.delayed(_normal_equations)(
                block, table[region], count[region], slots, centre, max_lag
            )
        )
    return sum(parts)


def _normal_equations(
    x: np.ndarray,
    table: np.ndarray,
    count: np.ndarray,
    slots: np.ndarray,
    centre: float,
    max_lag: int,
) -> np.ndarray:
    """[K+1, 3, 4]: per lag k, [G | b] with G = Σ f fᵀ, b = Σ f·y, f = (p, C̃(t0+k), C̃(t0)),
    y = x(t0 + k), all centred; C̃(t) = (N·C − x(t)) / (N − 1), the slot mean without x(t)."""
    x = np.asarray(x, dtype=np.float64)
    n = count[slots]
    with np.errstate(invalid="ignore", divide="ignore"):
        held_out = np.where(n > 1, (n * table[slots] - x) / (n - 1), np.nan) - centre
    z = x - centre
    out = np.zeros((max_lag + 1, 3, 4))
    for k in range(1, min(max_lag, x.shape[0] - 1) + 1):
        f = np.stack([z[:-k], held_out[k:], held_out[:-k]]).reshape(3, -1)
        y = z[k:].reshape(-1)
        ok = np.isfinite(f).all(axis=0) & np.isfinite(y)
        f, y = f[:, ok], y[ok]
        out[k, :, :3] = f @ f.T
        out[k, :, 3] = f @ y
    return out


def _solve_blend(sums: np.ndarray) -> np.ndarray:
    """Least-squares weights [K+1, 3] from normal equations; (1, 0, 0) where undetermined."""
    weights = np.zeros((sums.shape[0], 3))
    weights[:, 0] = 1.0
    for k in range(1, sums.shape[0]):
        gram, rhs = sums[k, :, :3], sums[k, :, 3]
        if np.trace(gram) > 0 and np.linalg.cond(gram) < 1e8:
            weights[k] = np.linalg.solve(gram, rhs)
    return weights


class ClimatologyLookup(nn.Module):
    """The table of some variables as a buffer, looked up per valid time and patch.

    ``forward(times [B, N], row0 [B], col0 [B], height=H, width=W)`` → [B, N, V, H, W]
    physical units; cells outside the grid (negative or too large indices) are NaN.
    """

    def __init__(self, climatology: Climatology, *, variables: Sequence[str], step_s: int) -> None:
        super().__init__()
        missing = [v for v in variables if v not in climatology.variables]
        if missing:
            raise ConfigError(
                f"climatology lacks variables {missing}; it has {list(climatology.variables)}"
            )
        if climatology.step_s != step_s:
            raise ConfigError(
                f"climatology was fitted with step_s={climatology.step_s}, data has {step_s}"
            )
        index = [climatology.variables.index(v) for v in variables]
        table = torch.from_numpy(np.ascontiguousarray(climatology.table[:, index]))
        self.register_buffer("table", table.permute(0, 2, 3, 1).contiguous())  # slot,row,col,V
        self.period: Period = climatology.period
        self.step_s = climatology.step_s

    def forward(
        self, times: Tensor, row0: Tensor, col0: Tensor, *, height: int, width: int
    ) -> Tensor:
        n_rows, n_cols = self.table.shape[1], self.table.shape[2]
        slot = time_slots(times, period=self.period, step_s=self.step_s)
        rows = row0[:, None] + torch.arange(height, device=row0.device)  # [B, H]
        cols = col0[:, None] + torch.arange(width, device=col0.device)  # [B, W]
        inside = ((rows >= 0) & (rows < n_rows))[:, :, None] & ((cols >= 0) & (cols < n_cols))[
            :, None, :
        ]
        values = self.table[
            slot[:, :, None, None],
            rows.clamp(0, n_rows - 1)[:, None, :, None],
            cols.clamp(0, n_cols - 1)[:, None, None, :],
        ]  # [B, N, H, W, V]
        values = values.permute(0, 1, 4, 2, 3)
        return torch.where(inside[:, None, None], values, torch.nan)

"""Climatology: per-cell mean by time slot, fitted on the train split, and its batch lookup.

A slot is computed from UTC valid times (int64 ns since 1970, numpy or torch alike):

- period ``"day"``: the time of day, 86400 / step_s slots (24 for hourly data);
- ``"week"``: time of day × day of week (48 × 7 = 336 slots for half-hourly traffic);
- ``"doy"``: time of day × day of year, 366 × 86400 / step_s slots (8784 for hourly data),
  for train splits of a year or more. The day of year is the calendar date's place in a
  leap year (:func:`day_of_year`): Jan 1 → 0, Feb 29 → 59 (its own day, seen in leap years
  only), Mar 1 → 60 in every year, Dec 31 → 365, so a date keeps its slot in every year.
  The means are smoothed along the day of year as WeatherBench 2 does: per time of day and
  cell, the mean of every train value within ±30 days (:data:`DOY_HALF_WINDOW_DAYS`),
  circular over the year, i.e. window sums of values over window sums of counts (NaN-aware,
  so each slot weighs by how many values it has).

Memory: the table is float32 [slot, variable, row, col]; it lives on the model's device and
in its logged program. For ``"doy"`` that is 366 × steps per day × V × H × W × 4 bytes:
hourly, per variable, 69 MiB on a 32 × 64 grid (5.625°), 275 MiB on 64 × 128, 973 MiB on
121 × 240 (1.5°) and 34 GiB on 721 × 1440 (0.25°; 6-hourly steps there: 5.7 GiB). The fit
holds float64 slot sums and counts of the cells it works on besides.

:meth:`Climatology.fit` is the one place the models touch xarray, and one pass of dask over
the train split: each time-contiguous block of cells gives its slot sums and counts, its
region of the table and its share of the baseline blend's normal equations (below).
:class:`ClimatologyLookup` carries the table as a buffer and crops it to patches.

The blend, per lead, of the baselines that residual models start from
(:func:`stpipe.models.baselines.baseline_weights`): with p = x(t0) the last value and C̃ the
climatology *leaving out the sample itself* (what a climatology fitted on other days would
say, as on the test split), the weights (w_p, w_c, w_0) minimise

    Σ [x(t0 + k) − w_p·p − w_c·C̃(t0 + k) − w_0·C̃(t0)]²

over all train pairs and cells, in units centred on the train mean. They cover
persistence (1, 0, 0), climatology (0, 1, 0), persistence plus the climatological change
(1, 1, −1) and damped anomaly persistence (r, 1, −r); a noisy climatology (few weeks of
data) gets little weight because it is held out. For ``"doy"``, C̃ leaves out only the
sample, not the rest of its year's ±30-day window, so it is a little closer to x than a
climatology of other years would be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

Period = Literal["day", "week", "doy"]
Times = TypeVar("Times", np.ndarray, Tensor)

DAY_NS = 86_400 * 10**9
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0, as pandas counts)
DOY_HALF_WINDOW_DAYS = 30
MIN_DOY_SPAN = np.timedelta64(365, "D")  # 'auto' picks "doy" for train splits this long
MOMENT_PAIRS = 2**22  # pairs summed per lag and variable for the blend weights
FIT_BLOCK_BYTES = 16 * 2**20
"""Input bytes of one block of cells (all its times) in the fit. A block's task holds about
8× that at once (float64 copies, masks, the slot-sorted gather) and the threaded scheduler
runs one a core: dask's default blocks (128 MiB) took the fit on a year of 128×256 hourly
to 15 GB RSS on 16 cores (``benchmarks/bench_nightly.py``)."""
LAG_PASS_BYTES = 16 * 2**20
"""Bytes of one lag's temporaries in a block's moment pass (four float64 values a pair, see
:func:`_lag_moments`); blocks are cut smaller where theirs would be larger (why larger ones
are slower was not profiled: likely the allocator maps them afresh on every lag and the pass
leaves the caches). ``benchmarks/bench_climatology_fit.py``
on 2 cores (``benchmarks/results/bench_climatology_fit_cpu2.log``, two runs): 24 days of
64×64, every step an origin, took 4.7-4.8 s in one 16 MiB block and 2.4-2.5 s in the blocks
this bound cuts (2 MiB); 120 days of 128×256 sample their origins and keep 16 MiB blocks, as
a year does (fixed 1 MiB blocks ran at 0.76-0.83× their speed there)."""


def day_of_year(days: Times) -> Times:
    """Place of each date in a leap year, 0..365 (Feb 29 → 59, Mar 1 → 60 in every year).

    ``days``: int64 days since 1970-01-01 (numpy or torch). Integer civil-from-days
    arithmetic (H. Hinnant's ``civil_from_days``): years counted from March 1 of 0000 in
    400-year eras; the day of that March-based year, 0 (Mar 1)..365 (Feb 29), shifted by 60.
    """
    z = days + 719_468  # days since 0000-03-01
    era = z // 146_097
    day_of_era = z - era * 146_097  # 0..146096
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365  # 0..399
    from_march = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    return (from_march + 60) % 366


def _day_of_week(days: Times) -> Times:
    return (days + EPOCH_WEEKDAY) % 7


def _same_day(days: Times) -> Times:
    return days * 0


@dataclass(frozen=True)
class _Calendar:
    """The day part of a period's slots: how many, the day index of a date, the smoothing."""

    days: int
    day_index: Callable[[Times], Times]
    label: str
    half_window_days: int = 0


CALENDARS: dict[Period, _Calendar] = {
    "day": _Calendar(1, _same_day, "{tod} of day"),
    "week": _Calendar(7, _day_of_week, "day of week × {tod}"),
    "doy": _Calendar(
        366,
        day_of_year,
        f"day of year × {{tod}}, ±{DOY_HALF_WINDOW_DAYS}-day smoothing",
        DOY_HALF_WINDOW_DAYS,
    ),
}


def slots_per_period(*, period: Period, step_s: int) -> int:
    """Number of climatology slots: 86400/step_s per day, × 7 for a week, × 366 for a year."""
    if step_s < 1 or 86_400 % step_s:
        raise ConfigError(f"climatology needs a time step dividing one day, got step_s={step_s}")
    return CALENDARS[period].days * (86_400 // step_s)


def time_slots(times_ns: Times, *, period: Period, step_s: int) -> Times:
    """Slot index of each time (int64 ns since 1970 UTC; numpy array or torch tensor).

    slot = day index × slots per day + (t mod day) // step, the day index being 0
    (``"day"``), the day of week (``"week"``, Monday = 0) or :func:`day_of_year` (``"doy"``).
    """
    time_of_day = (times_ns % DAY_NS) // (step_s * 10**9)
    day = CALENDARS[period].day_index(times_ns // DAY_NS)
    return day * (86_400 // step_s) + time_of_day


def is_the_climate(period: Period) -> bool:
    """Whether a climatology of ``period`` is the climate (``"doy"``: a year or more of
    data), which anomalies revert to, or the mean of a few weeks' weather (``"day"``,
    ``"week"``), which the coming days need not be like (a cold spell, a new air mass).
    Forecasts built on the latter keep the current anomaly rather than bet on it
    (:mod:`stpipe.models.scnn`, :func:`stpipe.learn.train.reference_names`)."""
    return period == "doy"


def climatology_period(
    setting: Literal["auto", "day", "week", "doy"], train: xr.Dataset, *, step_s: int
) -> Period:
    """Resolve ``[model] climatology_period`` for the train split ``train``: 'auto' is
    'doy' when it spans a year (365 days, its last step included), else 'day' on lat/lon
    grids and 'week' on cell grids."""
    if setting != "auto":
        return setting
    times = train["time"].values
    if times.size and times[-1] - times[0] + np.timedelta64(step_s, "s") >= MIN_DOY_SPAN:
        return "doy"
    return "day" if is_latlon(train) else "week"


def _circular_window_sum(values: np.ndarray, *, half_window: int) -> np.ndarray:
    """Σ values[(d + k) mod D] over |k| ≤ half_window along axis 0 (D entries), by cumsum."""
    n = values.shape[0]
    if 2 * half_window + 1 > n:
        raise ConfigError(f"a ±{half_window} window does not fit a circle of {n}")
    wrapped = values[np.arange(-half_window, n + half_window) % n]
    cum = np.concatenate([np.zeros_like(values[:1]), np.cumsum(wrapped, axis=0)])
    return cum[2 * half_window + 1 :] - cum[:n]


def _time_of_day_label(step_s: int) -> str:
    if step_s == 3600:
        return "hour"
    if step_s % 3600 == 0:
        return f"{step_s // 3600}-h slot"
    return f"{step_s // 60}-min slot" if step_s % 60 == 0 else f"{step_s}-s slot"


@dataclass(frozen=True, eq=False)
class Climatology:
    """Slot-mean table of the train split and the baseline blend per lag.

    ``table`` float32 [slot, variable, row, col] in physical units (NaN where a slot had no
    data; for ``"doy"`` smoothed, see the module doc); ``blend_weights`` float32
    [variable, lag, 3]: (w_p, w_c, w_0) for lags 0..max_lag steps (lag 0 is (1, 0, 0)).
    """

    variables: tuple[str, ...]
    period: Period
    step_s: int
    table: np.ndarray
    blend_weights: np.ndarray

    @property
    def n_slots(self) -> int:
        return self.table.shape[0]

    @property
    def description(self) -> str:
        """What a slot is, e.g. ``"hour of day"``, ``"day of week × 30-min slot"`` or
        ``"day of year × hour, ±30-day smoothing"``."""
        return CALENDARS[self.period].label.format(tod=_time_of_day_label(self.step_s))

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

        One dask pass over time-contiguous blocks of cells (see the module doc). Times lie
        on a ``step_s`` grid, possibly with gaps (pairs never straddle a gap).
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
        regular = pd.date_range(times[0], times[-1], freq=pd.Timedelta(seconds=step_s))
        groups = _SlotGroups.of(regular.as_unit("ns").asi8, period=period, step_s=step_s)
        on_grid = ds[list(variables)].transpose("time", rows, cols).reindex(time=regular)
        # every stride-th origin: at most MOMENT_PAIRS pairs a lag over all the cells
        stride = max(1, -(-on_grid.sizes["time"] * ds.sizes[rows] * ds.sizes[cols] // MOMENT_PAIRS))
        lazy = [_fit_lazy(on_grid[v].data, groups, max_lag, stride) for v in variables]
        (blocks,) = dask.compute(lazy)
        shape = (n_slots, len(variables), ds.sizes[rows], ds.sizes[cols])
        table = np.full(shape, np.nan, dtype=np.float32)
        weights = []
        for i, parts in enumerate(blocks):
            for (block_rows, block_cols), part in parts:
                table[:, i, block_rows, block_cols] = part.table
            weights.append(_solve_blend(_blend_moments([part for _, part in parts])))
        return cls(
            variables=tuple(variables),
            period=period,
            step_s=int(step_s),
            table=table,
            blend_weights=np.stack(weights).astype(np.float32),
        )


@dataclass(frozen=True, eq=False)
class _SlotGroups:
    """The times of a regular grid grouped by slot, to sum [T, ...] arrays per slot."""

    slots: np.ndarray  # [T] slot of each time
    order: np.ndarray  # [T] the times sorted by slot
    starts: np.ndarray  # where each slot that has times starts in that order
    n_slots: int
    days: int
    half_window_days: int

    @classmethod
    def of(cls, times_ns: np.ndarray, *, period: Period, step_s: int) -> _SlotGroups:
        n_slots = slots_per_period(period=period, step_s=step_s)
        slots = time_slots(times_ns, period=period, step_s=step_s)
        order = np.argsort(slots, kind="stable")
        starts = np.flatnonzero(np.diff(slots[order], prepend=-1))
        calendar = CALENDARS[period]
        return cls(slots, order, starts, n_slots, calendar.days, calendar.half_window_days)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Σ of ``values`` [T, ...] per slot: float64 [n_slots, ...], 0 where no time."""
        out = np.zeros((self.n_slots, *values.shape[1:]))
        present = self.slots[self.order[self.starts]]
        out[present] = np.add.reduceat(values[self.order], self.starts, axis=0)
        return out

    def smooth(self, per_slot: np.ndarray) -> np.ndarray:
        """Window sums of [n_slots, ...] along the day, per time of day (none: as is)."""
        if not self.half_window_days:
            return per_slot
        by_day = per_slot.reshape(self.days, -1, *per_slot.shape[1:])
        smoothed = _circular_window_sum(by_day, half_window=self.half_window_days)
        return smoothed.reshape(per_slot.shape)


@dataclass(frozen=True, eq=False)
class _BlockFit:
    """What one block of cells gives: its table region float32 [slot, rows, cols], the sum
    and count of its values, and its lag moments (:func:`_lag_moments`) about ``shift``."""

    table: np.ndarray
    total: float
    count: float
    shift: float
    moments: np.ndarray


def _fit_lazy(
    values: np.ndarray | da.Array, groups: _SlotGroups, max_lag: int, stride: int
) -> list[tuple[tuple[slice, slice], object]]:
    """((rows, cols) of the block, delayed :func:`_fit_block`) per time-contiguous block of
    at most :data:`FIT_BLOCK_BYTES`, and small enough that a lag's pass over its pairs (origins
    every ``stride``-th step) holds at most :data:`LAG_PASS_BYTES`."""
    values = da.asarray(values)
    steps = values.shape[0]
    pairs_per_cell = -(-steps // stride)
    pair_bytes = 4 * 8  # a lag's pass holds four float64 values a pair (_lag_moments)
    per_lag = values.dtype.itemsize * steps * LAG_PASS_BYTES // (pair_bytes * pairs_per_cell)
    values = values.rechunk(
        {0: -1, 1: "auto", 2: "auto"}, block_size_limit=min(FIT_BLOCK_BYTES, per_lag)
    )
    row_edges = np.cumsum((0, *values.chunks[1]))
    col_edges = np.cumsum((0, *values.chunks[2]))
    shared = dask.delayed(groups)  # one task holds the slot arrays, not each block's
    return [
        (
            (slice(row_edges[i], row_edges[i + 1]), slice(col_edges[j], col_edges[j + 1])),
            dask.delayed(_fit_block)(block, shared, max_lag, stride),
        )
        for (_, i, j), block in np.ndenumerate(values.to_delayed())
    ]


def _fit_block(x: np.ndarray, groups: _SlotGroups, max_lag: int, stride: int) -> _BlockFit:
    """Slot means (smoothed by ``groups``) and lag moments (origins every ``stride``-th
    step) of one block ``x`` [T, h, w]."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    sums = groups.sums(np.where(finite, x, 0.0))
    counts = groups.sums(finite.astype(np.float64))
    total, count = float(sums.sum()), float(counts.sum())
    sums, counts = groups.smooth(sums), groups.smooth(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        table = np.where(counts > 0, sums / counts, np.nan)
    shift = total / count if count else 0.0
    moments = _lag_moments(x, table, counts, groups.slots, shift, max_lag, stride)
    return _BlockFit(table.astype(np.float32), total, count, shift, moments)


def _lag_moments(
    x: np.ndarray,
    table: np.ndarray,
    count: np.ndarray,
    slots: np.ndarray,
    shift: float,
    max_lag: int,
    stride: int,
) -> np.ndarray:
    """[K+1, 5, 5]: per lag k, Σ u uᵀ over the pairs where u is finite, with
    u = (p, C̃(t0+k), C̃(t0), y, 1) − (s, s, s, s, 0), p = x(t0), y = x(t0 + k), s = ``shift``
    and C̃(t) = (N·C − x(t)) / (N − 1) the slot mean without x(t) (N values in C).

    The origins t0 are every ``stride``-th step, so that a lag sums at most
    :data:`MOMENT_PAIRS` pairs over all blocks: the three weights of a lag are well
    determined by far fewer pairs than a year of a large grid holds, and summing all of
    them for each of the ``max_lag`` lags made the fit grow as time × cells × lags (most of
    ``stpipe train``'s time on a year of 128×256)."""
    n = count[slots]
    with np.errstate(invalid="ignore", divide="ignore"):
        held_out = np.where(n > 1, (n * table[slots] - x) / (n - 1), np.nan) - shift
    z = x - shift
    out = np.zeros((max_lag + 1, 5, 5))
    for k in range(1, min(max_lag, x.shape[0] - 1) + 1):
        t0 = slice(0, x.shape[0] - k, stride)
        t1 = slice(k, x.shape[0], stride)
        u = np.stack([z[t0], held_out[t1], held_out[t0], z[t1]]).reshape(4, -1)
        u = u[:, np.isfinite(u).all(axis=0)]
        u = np.concatenate([u, np.ones((1, u.shape[1]))])
        out[k] = u @ u.T
    return out


def _blend_moments(parts: Sequence[_BlockFit]) -> np.ndarray:
    """The blocks' lag moments summed about the train mean c: [K+1, 5, 5].

    Moving a block's moments from its shift s to c is u ↦ T·u with T = [[I, −(c − s)·1],
    [0, 1]], so they become T M Tᵀ.
    """
    centre = sum(p.total for p in parts) / max(sum(p.count for p in parts), 1.0)
    total = np.zeros_like(parts[0].moments)
    for part in parts:
        move = np.eye(5)
        move[:4, 4] = part.shift - centre
        total += move @ part.moments @ move.T
    return total


def _solve_blend(moments: np.ndarray) -> np.ndarray:
    """Least-squares weights [K+1, 3] from centred lag moments (G = M[:3, :3], b = M[:3, 3]);
    (1, 0, 0) where undetermined."""
    weights = np.zeros((moments.shape[0], 3))
    weights[:, 0] = 1.0
    for k in range(1, moments.shape[0]):
        gram, rhs = moments[k, :3, :3], moments[k, :3, 3]
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

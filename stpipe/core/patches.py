"""Spacetime patches: what a training window is, which windows are valid, and their ids.

Pure arithmetic, no I/O: the loader (:mod:`stpipe.learn.loader`) reads the store and cuts what
this module describes.

A *window* starts at store time index ``t0`` and spans ``spec.span = input_steps +
max(leads)`` consecutive steps: inputs ``t0 … t0+input_steps-1`` and targets
``t0 + input_steps - 1 + lead`` for each lead. A *patch* is a window at one spatial
position: rows ``row0 … row0+H-1`` and columns ``col0 … col0+W-1`` with ``H, W = size +
2·halo``; the central ``size`` cells are the target area, the halo is context only.
Positions step by ``stride`` from the grid origin and, except with ``edge = "drop"``, keep
going until the grid is covered, so the last patches reach past the edge and are filled
by the edge policy:

- ``pad``: NaN outside the grid;
- ``reflect``: mirrored about the edge cell (numpy's ``reflect``);
- ``wrap``: columns wrap around (global longitude grids), rows are NaN-padded;
- ``drop``: only positions whose target area lies inside the grid; the halo is NaN-padded.

A :class:`PatchIndex` maps a patch id to ``(t0, row0, col0)`` by arithmetic: ids are
``window * n_rows * n_cols + row_position * n_cols + col_position`` over the sorted array
of valid window starts of one split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from stpipe.core.errors import ConfigError, StoreError
from stpipe.core.splits import time_segments

if TYPE_CHECKING:
    from stpipe.core.settings import PatchesSection

EdgePolicy = Literal["pad", "reflect", "wrap", "drop"]
NanPolicy = Literal["skip", "mask"]
AxisMode = Literal["pad", "reflect", "wrap", "clip"]

EDGE_POLICIES: tuple[str, ...] = ("pad", "reflect", "wrap", "drop")
STATIC_FEATURES: tuple[str, ...] = ("lat", "lon", "mask")
N_TIME_FEATURES = 4
NS_PER_DAY = 86_400 * 10**9
# 1970-01-01, the origin of datetime64, was a Thursday (Monday = 0).
_EPOCH_WEEKDAY = 3


@dataclass(frozen=True)
class PatchSpec:
    """What one training sample is; the fields mirror the ``[patches]`` config section.

    ``leads`` are steps after the last input step; ``size``, ``stride`` are (rows, cols) in
    grid cells; ``halo`` extra context cells on each side; ``time_stride`` steps between
    window starts within a run of regular steps. ``nan_policy``: ``skip`` leaves out the
    windows holding a step where an input variable is NaN anywhere on the grid (a whole
    step, so a field with a permanent NaN land mask needs ``mask``); ``mask`` keeps them,
    NaN in ``x`` and mask 0 on NaN targets.
    """

    input_steps: int
    leads: tuple[int, ...]
    size: tuple[int, int]
    input_variables: tuple[str, ...]
    target_variables: tuple[str, ...] = ()
    stride: tuple[int, int] | None = None
    time_stride: int = 1
    halo: int = 0
    edge: EdgePolicy = "pad"
    time_features: bool = True
    static_features: tuple[str, ...] = ()
    nan_policy: NanPolicy = "skip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "leads", tuple(int(lead) for lead in self.leads))
        object.__setattr__(self, "size", _pair(self.size, "size"))
        object.__setattr__(self, "stride", _pair(self.stride or self.size, "stride"))
        object.__setattr__(self, "input_variables", tuple(self.input_variables))
        object.__setattr__(
            self, "target_variables", tuple(self.target_variables or self.input_variables)
        )
        object.__setattr__(self, "static_features", tuple(self.static_features))
        self._check()

    def _check(self) -> None:
        problems = []
        if self.input_steps < 1:
            problems.append(f"input_steps must be >= 1, got {self.input_steps}")
        if (
            not self.leads
            or self.leads[0] < 1
            or any(b <= a for a, b in zip(self.leads, self.leads[1:], strict=False))
        ):
            problems.append(f"leads must be positive and increasing, got {list(self.leads)}")
        if min(self.size) < 1 or min(self.stride) < 1 or self.time_stride < 1:
            problems.append(
                f"size, stride and time_stride must be >= 1, got size={self.size} "
                f"stride={self.stride} time_stride={self.time_stride}"
            )
        if self.halo < 0:
            problems.append(f"halo must be >= 0, got {self.halo}")
        if self.edge not in EDGE_POLICIES:
            problems.append(f"edge must be one of {EDGE_POLICIES}, got {self.edge!r}")
        if self.nan_policy not in ("skip", "mask"):
            problems.append(f"nan_policy must be 'skip' or 'mask', got {self.nan_policy!r}")
        if not self.input_variables or len(set(self.input_variables)) != len(self.input_variables):
            problems.append(f"input_variables must be distinct names, got {self.input_variables}")
        if not set(self.target_variables) <= set(self.input_variables):
            problems.append(
                f"target_variables {list(self.target_variables)} must be a subset of "
                f"input_variables {list(self.input_variables)}"
            )
        unknown = [f for f in self.static_features if f not in STATIC_FEATURES]
        if unknown:
            problems.append(f"static_features must be among {STATIC_FEATURES}, got {unknown}")
        if problems:
            raise ConfigError("[patches] " + "; ".join(problems))

    @classmethod
    def from_settings(cls, p: PatchesSection, *, variables: Sequence[str]) -> PatchSpec:
        """The spec of ``[patches]`` over the store's ``variables`` (the default inputs)."""
        return cls(
            input_steps=p.input_steps,
            leads=tuple(p.leads),
            size=p.size,
            stride=p.stride,
            time_stride=p.time_stride,
            halo=p.halo,
            edge=p.edge,
            input_variables=tuple(p.inputs(variables)),
            target_variables=tuple(p.targets(variables)),
            time_features=p.time_features,
            static_features=tuple(p.static_features),
            nan_policy=p.nan_policy,
        )

    @property
    def span(self) -> int:
        """Consecutive store steps a window covers, from the first input to the last lead."""
        return self.input_steps + self.leads[-1]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of a patch: the target area plus the halo on both sides."""
        return self.size[0] + 2 * self.halo, self.size[1] + 2 * self.halo

    @property
    def target_offsets(self) -> np.ndarray:
        """Steps from ``t0`` to each target, int64 [L]."""
        return self.input_steps - 1 + np.asarray(self.leads, dtype=np.int64)

    @property
    def target_index(self) -> np.ndarray:
        """Positions of the target variables among the input variables, int64 [V_out]."""
        return np.array([self.input_variables.index(v) for v in self.target_variables])

    @property
    def n_time_features(self) -> int:
        return N_TIME_FEATURES if self.time_features else 0


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ConfigError(f"[patches] {name} must be (rows, cols), got {value!r}")
    return pair


def axis_modes(edge: EdgePolicy) -> tuple[AxisMode, AxisMode]:
    """How rows and columns beyond the grid are filled under an edge policy."""
    if edge == "reflect":
        return "reflect", "reflect"
    if edge == "wrap":
        return "pad", "wrap"
    return "pad", "pad"


def axis_positions(n: int, *, size: int, stride: int, edge: EdgePolicy, wrap: bool) -> int:
    """Number of patch positions along an axis of ``n`` cells."""
    if wrap:
        return math.ceil(n / stride)
    if edge == "drop":
        return 0 if n < size else (n - size) // stride + 1
    return 1 if n <= size else math.ceil((n - size) / stride) + 1


def axis_indices(start: int | np.ndarray, length: int, n: int, mode: AxisMode) -> np.ndarray:
    """Grid indices of cells ``start … start+length-1`` along an axis of ``n`` cells.

    Cells beyond the grid map back inside by ``reflect`` (numpy's mirror about the edge
    cell), ``wrap`` or ``clip``, or to -1 with ``pad``. ``start`` may be an array
    [P]; the result is int64 [P, length] (or [length]).
    """
    idx = np.asarray(start, dtype=np.int64)[..., None] + np.arange(length, dtype=np.int64)
    if mode == "wrap":
        return idx % n
    if mode == "clip":
        return np.clip(idx, 0, n - 1)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(idx)
        period = 2 * (n - 1)
        idx = idx % period
        return np.where(idx < n, idx, period - idx)
    return np.where((idx >= 0) & (idx < n), idx, -1)


@dataclass(frozen=True, eq=False)
class PatchIndex:
    """Patch id ↔ ``(t0, row0, col0)`` for one split, by arithmetic.

    ``starts`` (int64 [n_windows], ascending) are the store time indices of the valid
    window starts; the spatial positions are the same for every window. ``row0``/``col0``
    are the grid indices of the patch's top-left cell *including* the halo, so they may
    be negative or reach past the grid.
    """

    spec: PatchSpec
    grid_shape: tuple[int, int]
    starts: np.ndarray
    n_rows: int
    n_cols: int
    wrap_cols: bool = False
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    @classmethod
    def build(
        cls,
        spec: PatchSpec,
        *,
        times: np.ndarray,
        step_s: int,
        grid_shape: tuple[int, int],
        index_range: tuple[int, int],
        bad_steps: np.ndarray | None = None,
        global_lon: bool = False,
    ) -> PatchIndex:
        """Index the windows of ``spec`` inside ``index_range`` that cross no gap.

        ``global_lon`` says the columns span 360° of longitude, which ``edge = "wrap"``
        requires.
        """
        if spec.edge == "wrap" and not global_lon:
            raise ConfigError(
                "[patches] edge = 'wrap' needs a global longitude grid (columns spanning "
                f"360°); this grid of {grid_shape} cells is not"
            )
        segments = time_segments(times, step_s, index_range, bad_steps=bad_steps)
        runs = [
            np.arange(lo, hi - spec.span + 1, spec.time_stride, dtype=np.int64)
            for lo, hi in segments
        ]
        starts = np.concatenate(runs) if runs else np.zeros(0, dtype=np.int64)
        wrap = spec.edge == "wrap"
        n_rows = axis_positions(
            grid_shape[0], size=spec.size[0], stride=spec.stride[0], edge=spec.edge, wrap=False
        )
        n_cols = axis_positions(
            grid_shape[1], size=spec.size[1], stride=spec.stride[1], edge=spec.edge, wrap=wrap
        )
        return cls(spec, tuple(grid_shape), starts, n_rows, n_cols, wrap, segments)

    def __len__(self) -> int:
        return len(self.starts) * self.n_positions

    @property
    def n_positions(self) -> int:
        return self.n_rows * self.n_cols

    def row_origin(self, row_position: int | np.ndarray) -> np.ndarray:
        return np.asarray(row_position, dtype=np.int64) * self.spec.stride[0] - self.spec.halo

    def col_origin(self, col_position: int | np.ndarray) -> np.ndarray:
        return np.asarray(col_position, dtype=np.int64) * self.spec.stride[1] - self.spec.halo

    def locate(self, ids: int | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t0, row0, col0)`` int64 arrays of patch ids (int or int array)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"patch ids must be in [0, {len(self)}), got {ids.min()}…{ids.max()}")
        window, position = np.divmod(ids, self.n_positions)
        row, col = np.divmod(position, self.n_cols)
        return self.starts[window], self.row_origin(row), self.col_origin(col)

    def row_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """Per row position: the grid rows a patch reads (int64 [n_rows, H], -1 = pad) and
        whether each patch row lies inside the grid (bool [n_rows, H])."""
        return self._axis_maps(0, self.n_rows, self.row_origin, wrap=False)

    def col_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`row_maps` for the columns: int64 [n_cols, W], bool [n_cols, W]."""
        return self._axis_maps(1, self.n_cols, self.col_origin, wrap=self.wrap_cols)

    def _axis_maps(
        self, axis: int, count: int, origin: Callable[[np.ndarray], np.ndarray], *, wrap: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        n, length = self.grid_shape[axis], self.spec.shape[axis]
        starts = origin(np.arange(count))
        indices = axis_indices(starts, length, n, axis_modes(self.spec.edge)[axis])
        cells = starts[:, None] + np.arange(length)
        inside = np.ones_like(cells, dtype=bool) if wrap else (cells >= 0) & (cells < n)
        return indices, inside

    def core(self, axis: int) -> np.ndarray:
        """bool [H] (axis 0) or [W] (axis 1): True outside the halo, in the target area."""
        core = np.zeros(self.spec.shape[axis], dtype=bool)
        core[self.spec.halo : self.spec.halo + self.spec.size[axis]] = True
        return core

    def describe(self) -> str:
        return (
            f"{len(self.starts)} windows × {self.n_rows}×{self.n_cols} positions = "
            f"{len(self)} patches in {len(self.segments)} runs of regular steps"
        )


def time_features(times: np.ndarray) -> np.ndarray:
    """sin/cos of hour of day and of day of week, float32 [time, 4].

    Phases: ``day = seconds since midnight / 86400``; ``week = (weekday + day) / 7``
    (Monday = 0); times are UTC datetime64.
    """
    ns = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
    days, within = np.divmod(ns, NS_PER_DAY)
    day = within / NS_PER_DAY
    week = ((days + _EPOCH_WEEKDAY) % 7 + day) / 7
    day, week = 2 * np.pi * day, 2 * np.pi * week
    return np.stack([np.sin(day), np.cos(day), np.sin(week), np.cos(week)], axis=-1).astype(
        np.float32
    )


def static_coordinates(
    features: Sequence[str], rows: np.ndarray, cols: np.ndarray, *, latlon: bool
) -> np.ndarray:
    """The coordinate channels of ``features`` (``mask`` excluded), float32 [S', ny, nx].

    ``lat`` → lat/90 and ``lon`` → lon/180 wrapped to [-1, 1); on grids without
    geographic coordinates they are the row and column positions scaled to [-1, 1].
    """

    def scaled(values: np.ndarray, geographic: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if latlon and geographic == "lat":
            return values / 90.0
        if latlon:
            return ((values + 180.0) % 360.0 - 180.0) / 180.0
        n = len(values)
        return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)

    ny, nx = len(rows), len(cols)
    channels = []
    for name in features:
        if name == "lat":
            channels.append(np.broadcast_to(scaled(rows, "lat")[:, None], (ny, nx)))
        elif name == "lon":
            channels.append(np.broadcast_to(scaled(cols, "lon")[None, :], (ny, nx)))
    return np.array(channels, dtype=np.float32).reshape(len(channels), ny, nx)


def is_global_lon(lon: np.ndarray) -> bool:
    """Whether regularly spaced longitudes (degrees) go once around the globe."""
    lon = np.asarray(lon, dtype=np.float64)
    if len(lon) < 2:
        return False
    step = np.diff(lon)
    return bool(np.allclose(step, step[0], rtol=1e-4) and abs(step[0] * len(lon) - 360) < 1e-3)


def check_not_empty(index: PatchIndex, *, split: str, times: np.ndarray) -> None:
    """Raise StoreError with the numbers that explain it if a split has no window."""
    if len(index):
        return
    first, last = (str(times[0]), str(times[-1])) if len(times) else ("-", "-")
    raise StoreError(
        f"split {split!r} has no valid window: a window needs {index.spec.span} regular "
        f"steps (input_steps {index.spec.input_steps} + max lead {index.spec.leads[-1]}) "
        f"and {index.n_rows}×{index.n_cols} positions; the store has {len(times)} steps "
        f"({first} … {last}) in {len(index.segments)} usable runs"
    )

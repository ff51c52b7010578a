"""What a logged forecaster was trained for: its :class:`ModelCard` (no MLflow needed).

The card travels in the MLmodel ``metadata`` of every logged model, so a registered model
forecasts, and is checked against a store, without the config it was trained with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr

from stpipe.core.grid import spatial_dims
from stpipe.core.patches import PatchSpec


@dataclass(frozen=True)
class Grid:
    """A grid's identity: dim names, shape, and a digest of its coordinate values."""

    dims: tuple[str, str]
    shape: tuple[int, int]
    digest: str

    @classmethod
    def of(cls, ds: xr.Dataset) -> Grid:
        rows, cols = spatial_dims(ds)
        h = hashlib.sha256(f"{rows},{cols}".encode())
        for name in (rows, cols):
            h.update(np.ascontiguousarray(ds[name].values, dtype=np.float64).tobytes())
        return cls(
            dims=(rows, cols), shape=(ds.sizes[rows], ds.sizes[cols]), digest=h.hexdigest()[:16]
        )

    def describe(self) -> str:
        return f"{self.dims[0]}×{self.dims[1]} {self.shape[0]}×{self.shape[1]} ({self.digest})"


@dataclass(frozen=True)
class ModelCard:
    """What a logged forecaster needs and gives; stored in the MLmodel ``metadata``.

    ``patch_shape`` is the input patch (rows, cols) including ``halo``; ``units`` of the
    target variables; ``step_s`` the store's time step; ``static_features``,
    ``n_time_features`` and ``edge`` say how the inputs were built (``[patches]``).
    """

    pipeline: str
    model: str
    input_variables: tuple[str, ...]
    target_variables: tuple[str, ...]
    units: tuple[str, ...]
    input_steps: int
    leads: tuple[int, ...]
    step_s: int
    patch_shape: tuple[int, int]
    halo: int
    static_features: tuple[str, ...]
    n_time_features: int
    edge: str
    grid: Grid

    def mismatch(self, other: ModelCard) -> list[str]:
        """What differs from ``other`` in what the inputs and outputs are (empty: nothing).

        Each entry reads ``"<field> <self's value> vs <other's value>"``.
        """
        skip = {"pipeline", "model", "units"}
        problems = []
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in skip or mine == theirs:
                continue
            if isinstance(mine, Grid):
                mine, theirs = mine.describe(), theirs.describe()
            elif isinstance(mine, tuple):
                mine, theirs = list(mine), list(theirs)
            problems.append(f"{name} {mine} vs {theirs}")
        return problems

    def store_mismatch(self, ds: xr.Dataset) -> list[str]:
        """Why the store ``ds`` cannot feed this model (empty: it can): missing input
        variables, another grid or time step; entries read ``"<what> <model's> vs <store's>"``.
        """
        problems = []
        if not set(self.input_variables) <= set(map(str, ds.data_vars)):
            problems.append(f"variables {list(self.input_variables)} vs {sorted(ds.data_vars)}")
        grid = Grid.of(ds)
        if grid != self.grid:
            problems.append(f"grid {self.grid.describe()} vs {grid.describe()}")
        step_s = int(ds.attrs["time_step_s"])
        if step_s != self.step_s:
            problems.append(f"time step {self.step_s} s vs {step_s} s")
        return problems

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelCard:
        fields = dict(raw)
        grid = fields.pop("grid")
        tuples = {k: tuple(v) for k, v in fields.items() if isinstance(v, list)}
        return cls(
            **(fields | tuples),
            grid=Grid(dims=tuple(grid["dims"]), shape=tuple(grid["shape"]), digest=grid["digest"]),
        )


def card_for(*, pipeline: str, model: str, spec: PatchSpec, ds: xr.Dataset) -> ModelCard:
    """The card of the model ``model`` of ``pipeline`` trained with ``spec`` on the store ``ds``."""
    return ModelCard(
        pipeline=pipeline,
        model=model,
        input_variables=spec.input_variables,
        target_variables=spec.target_variables,
        units=tuple(str(ds[v].attrs.get("units", "")) for v in spec.target_variables),
        input_steps=spec.input_steps,
        leads=spec.leads,
        step_s=int(ds.attrs["time_step_s"]),
        patch_shape=spec.shape,
        halo=spec.halo,
        static_features=spec.static_features,
        n_time_features=spec.n_time_features,
        edge=spec.edge,
        grid=Grid.of(ds),
    )

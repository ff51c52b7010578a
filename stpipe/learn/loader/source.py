"""The committed store as the loader reads it: coordinates, time step, chunking, arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from stpipe.core.errors import StoreError
from stpipe.core.grid import spatial_dims
from stpipe.io.store import open_store

FLOAT32_BYTES = 4


@dataclass(frozen=True, eq=False)
class StoreSource:
    """What the loader needs from the committed store: coordinates, step and chunking."""

    path: str
    variables: tuple[str, ...]
    times: np.ndarray
    step_s: int
    rows: np.ndarray
    cols: np.ndarray
    latlon: bool
    chunks: tuple[int, int, int]

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def open_arrays(self) -> list[zarr.Array]:
        # Shapes come from the consolidated root metadata, the store's commit point.
        group = zarr.open_group(self.path, mode="r", use_consolidated=True)
        return [group[name] for name in self.variables]


def open_source(store_path: str | Path, variables: tuple[str, ...]) -> StoreSource:
    """Read the store's coordinates and check that ``variables`` are float32 and chunked alike."""
    ds = open_store(store_path)
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise StoreError(
            f"{store_path}: variables {missing} are not in the store; it has {list(ds.data_vars)}"
        )
    rows, cols = spatial_dims(ds)
    group = zarr.open_group(str(store_path), mode="r", use_consolidated=True)
    chunks = {name: tuple(group[name].chunks) for name in variables}
    for name in variables:
        if group[name].dtype != np.float32:
            raise StoreError(f"{store_path}: {name} is {group[name].dtype}, expected float32")
    if len(set(chunks.values())) > 1:
        raise StoreError(f"{store_path}: variables are chunked differently: {chunks}")
    return StoreSource(
        path=str(store_path),
        variables=tuple(variables),
        times=ds["time"].values.astype("datetime64[ns]"),
        step_s=int(ds.attrs["time_step_s"]),
        rows=ds[rows].values,
        cols=ds[cols].values,
        latlon=rows == "lat",
        chunks=chunks[variables[0]],
    )


def chunk_bytes(
    t: tuple[int, int], r: tuple[int, int], shape: tuple[int, ...], chunks: tuple[int, int, int]
) -> int:
    """Uncompressed bytes of the chunks that a read of steps ``t`` × rows ``r`` decodes."""

    def extent(lo: int, hi: int, chunk: int, n: int) -> int:
        return min(n, -(-hi // chunk) * chunk) - lo // chunk * chunk

    return (
        extent(*t, chunks[0], shape[0]) * extent(*r, chunks[1], shape[1]) * shape[2] * FLOAT32_BYTES
    )

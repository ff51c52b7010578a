"""Conventions for gridded datasets shared by every stage.

A canonical dataset has dims ``(time, lat, lon)`` for geographic grids (lat ascending,
lon ascending in the store's convention, both in degrees) or ``(time, y, x)`` for grids
with no geographic coordinates (traffic cells). Data variables are float32 with NaN for
missing values and a ``units`` attribute.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stpipe.core.errors import StoreError

CF_CONVENTIONS = "CF-1.10"  # the ``Conventions`` attribute of the data and forecast stores
LATLON_DIMS = ("lat", "lon")
CELL_DIMS = ("y", "x")


def spatial_dims(ds: xr.Dataset | xr.DataArray) -> tuple[str, str]:
    """The (row, column) dims of a canonical dataset: ('lat', 'lon') or ('y', 'x')."""
    for dims in (LATLON_DIMS, CELL_DIMS):
        if all(d in ds.dims for d in dims):
            return dims
    raise StoreError(f"expected spatial dims {LATLON_DIMS} or {CELL_DIMS}, got {tuple(ds.dims)}")


def is_latlon(ds: xr.Dataset | xr.DataArray) -> bool:
    return spatial_dims(ds) == LATLON_DIMS


def latitude_weights(lat: np.ndarray) -> np.ndarray:
    """cos(lat) normalised to mean 1 over ``lat`` [rows] (degrees), as float64 [rows].

    WeatherBench 1's weights; WeatherBench 2's cell-area weights equal them on global
    equiangular grids without pole rows (:mod:`stpipe.core.metrics` says where they differ).
    """
    w = np.cos(np.deg2rad(np.asarray(lat, dtype=np.float64)))
    return w / w.mean()

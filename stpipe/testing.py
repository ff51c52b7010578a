"""Factories and validators that stpipe's own tests (and users' tests) reuse.

Everything here builds canonical datasets in memory (see :mod:`stpipe.core.grid`); nothing
mocks a library.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from stpipe.core.grid import spatial_dims

UNITS = {"t2m": "K", "u10": "m s-1", "v10": "m s-1", "msl": "Pa", "inflow": "1", "outflow": "1"}
TYPICAL = {"t2m": 280.0, "msl": 101325.0, "inflow": 20.0, "outflow": 20.0}
"""A plausible level of each known variable, in ``UNITS``: ingest refuses values outside
the physical bounds of a known variable (2 m temperature near 0 K, say)."""


def make_dataset(
    *,
    nt: int = 48,
    ny: int = 16,
    nx: int = 20,
    variables: Sequence[str] = ("t2m", "u10"),
    start: str = "2024-01-01",
    step: str = "1h",
    latlon: bool = True,
    seed: int = 0,
    gap_after: int | None = None,
    gap_steps: int = 5,
) -> xr.Dataset:
    """A canonical dataset with distinct, reproducible values.

    Every value is different (a random field plus a per-variable offset, around the
    variable's ``TYPICAL`` level), so slicing mistakes show up as mismatches. ``gap_after=k`` leaves out ``gap_steps`` steps after the
    k-th, so the time axis has one gap.
    """
    rng = np.random.default_rng(seed)
    times = pd.date_range(
        start, periods=nt + (gap_steps if gap_after is not None else 0), freq=step
    )
    if gap_after is not None:
        times = times.delete(slice(gap_after, gap_after + gap_steps))
    if latlon:
        dims = ("lat", "lon")
        coords = {
            "lat": (
                "lat",
                np.linspace(40.0, 40.0 + 0.25 * (ny - 1), ny),
                {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"},
            ),
            "lon": (
                "lon",
                np.linspace(-5.0, -5.0 + 0.25 * (nx - 1), nx),
                {"units": "degrees_east", "standard_name": "longitude", "axis": "X"},
            ),
        }
    else:
        dims = ("y", "x")
        coords = {"y": ("y", np.arange(ny)), "x": ("x", np.arange(nx))}
    data_vars = {}
    for i, name in enumerate(variables):
        noise = rng.standard_normal((len(times), ny, nx)).astype(np.float32)
        values = noise + np.float32(10 * i + TYPICAL.get(name, 0.0))
        data_vars[name] = (("time", *dims), values, {"units": UNITS.get(name, "1")})
    ds = xr.Dataset(data_vars, coords={"time": ("time", times), **coords})
    ds["time"].attrs["standard_name"] = "time"
    ds.attrs["time_step_s"] = int(pd.Timedelta(step).total_seconds())
    return ds


def assert_canonical(ds: xr.Dataset) -> None:
    """Raise AssertionError unless ``ds`` follows the canonical conventions of stpipe.core.grid."""
    rows, cols = spatial_dims(ds)
    assert np.issubdtype(ds["time"].dtype, np.datetime64), f"time dtype {ds['time'].dtype}"
    t = ds["time"].values
    assert (np.diff(t) > np.timedelta64(0)).all(), "time must be strictly increasing"
    if rows == "lat":
        assert (np.diff(ds["lat"].values) > 0).all(), "lat must be ascending"
        assert (np.diff(ds["lon"].values) > 0).all(), "lon must be ascending"
    for name, var in ds.data_vars.items():
        assert var.dims == ("time", rows, cols), f"{name} dims {var.dims}"
        assert var.dtype == np.float32, f"{name} dtype {var.dtype}"
        assert "units" in var.attrs, f"{name} has no units attribute"

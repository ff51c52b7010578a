"""The forecast store's layout: one object per init time and variable, CF attributes and
Conventions shared with the data store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from stpipe.core.grid import CF_CONVENTIONS
from stpipe.forecast.store import open_forecasts, write_forecast
from stpipe.testing import make_dataset

VARIABLES = ("t2m", "u10")
LEADS = (1, 3, 6)
HOUR = np.timedelta64(3600, "s")


def forecast_of(init: str, value: float, *, lazy: bool = False) -> xr.Dataset:
    """One init time of a forecast on a 4×5 lat/lon grid, ``value`` everywhere."""
    grid = make_dataset(nt=1, ny=4, nx=5, variables=VARIABLES)
    data = np.full((1, len(LEADS), 4, 5), value, np.float32)
    ds = xr.Dataset(
        {v: (("init_time", "lead_time", "lat", "lon"), data, {"units": "K"}) for v in VARIABLES},
        coords={
            "init_time": [np.datetime64(init, "ns")],
            "lead_time": np.asarray(LEADS) * HOUR,
            "lat": grid["lat"],
            "lon": grid["lon"],
        },
        attrs={"model_name": "m", "model_version": "1", "run_id": "r1", "store_digest": "d"},
    )
    # A lazy forecast in Dask chunks smaller than the store's: written as one chunk each.
    return ds.chunk({"lead_time": 1, "lat": 2}) if lazy else ds


def chunk_objects(store: Path, name: str) -> list[Path]:
    return [p for p in (store / name / "c").rglob("*") if p.is_file()]


def test_one_object_per_init_time_and_variable_holds_every_lead(tmp_path: Path) -> None:
    store = tmp_path / "f.zarr"
    inits = ("2024-01-02T00", "2024-01-02T06", "2024-01-02T12")
    for k, init in enumerate(inits):
        write_forecast(forecast_of(init, float(k), lazy=k == 1), str(store))
    write_forecast(forecast_of(inits[0], 9.0), str(store))  # a rewrite adds no object

    # one chunk per (init, variable): 3 objects each, where a chunk per lead made 3 × 3
    for name in VARIABLES:
        assert len(chunk_objects(store, name)) == len(inits), name
        assert zarr.open_array(store / name).chunks == (1, len(LEADS), 4, 5)
    ds = open_forecasts(str(store))
    np.testing.assert_array_equal(ds["u10"].values[:, :, 0, 0], [[9.0] * 3, [1.0] * 3, [2.0] * 3])


def test_the_store_carries_cf_attributes_and_the_data_stores_conventions(tmp_path: Path) -> None:
    store = str(tmp_path / "f.zarr")
    write_forecast(forecast_of("2024-01-02T00", 1.0), store)

    ds = xr.open_zarr(store)
    assert ds.attrs["Conventions"] == CF_CONVENTIONS
    assert ds["valid_time"].attrs == {"standard_name": "time", "long_name": "valid time"}
    assert ds["lead_time"].attrs["standard_name"] == "forecast_period"
    assert ds["lead_time"].attrs["long_name"] == "lead time"
    assert ds["init_time"].attrs["standard_name"] == "forecast_reference_time"
    assert ds["init_time"].attrs["long_name"].startswith("initialisation time")

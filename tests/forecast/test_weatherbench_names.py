"""The README's renaming of a forecast store to WeatherBench 2's names works on a real store:
``time`` = init_time, ``prediction_timedelta`` = lead_time, ``latitude``, ``longitude``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stpipe.forecast.store import open_forecasts, write_forecast
from stpipe.testing import make_dataset
from tests.forecast.test_forecast_layout import HOUR, LEADS, VARIABLES, forecast_of


def test_the_readme_renaming_gives_weatherbench2_names(tmp_path: Path) -> None:
    store = str(tmp_path / "f.zarr")
    for init in ("2024-01-02T00", "2024-01-02T06"):
        write_forecast(forecast_of(init, 1.0), store)
    truth = make_dataset(nt=24, ny=4, nx=5, variables=VARIABLES, start="2024-01-02")

    # The README's snippet, as written there:
    names = {"init_time": "time", "lead_time": "prediction_timedelta"}
    grid = {"lat": "latitude", "lon": "longitude"}
    forecast = open_forecasts(store).rename(names | grid).drop_vars("valid_time")
    obs = truth.rename(grid)

    assert forecast["t2m"].dims == ("time", "prediction_timedelta", "latitude", "longitude")
    assert obs["t2m"].dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(
        forecast["time"].values, np.array(["2024-01-02T00", "2024-01-02T06"], "datetime64[ns]")
    )
    assert forecast["prediction_timedelta"].dtype.kind == "m"
    np.testing.assert_array_equal(forecast["prediction_timedelta"].values, np.asarray(LEADS) * HOUR)
    # valid time = time + prediction_timedelta: what WeatherBench 2 aligns with the obs
    valid = forecast["time"] + forecast["prediction_timedelta"]
    np.testing.assert_array_equal(
        valid.values, open_forecasts(store)["valid_time"].values.astype("datetime64[ns]")
    )
    aligned = obs["t2m"].sel(time=valid)
    assert aligned.dims == ("time", "prediction_timedelta", "latitude", "longitude")
    np.testing.assert_array_equal(forecast["latitude"].values, obs["latitude"].values)

"""Batch forecasts: the input window, tiles like the loader's, stitching, the forecast store
(round trip, re-runs, kills mid-write) and verification."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import zarr

from stpipe.app.config import Config
from stpipe.app.jobs import model_card
from stpipe.core.card import ModelCard
from stpipe.core.errors import StoreError
from stpipe.forecast.predict import forecast_grid, input_window_end, read_window, tile_batch
from stpipe.forecast.store import forecast_attrs, open_forecasts, write_forecast
from stpipe.forecast.verify import verifiable_inits, verify_forecast
from stpipe.io.ingestion import ingest
from stpipe.io.store import open_store
from stpipe.learn.loader import make_loader
from stpipe.models import Climatology
from stpipe.models.baselines import Baseline
from stpipe.testing import make_dataset

HOUR = np.timedelta64(1, "h")


def ns(*times: str) -> np.ndarray:
    return np.array(times, dtype="datetime64[ns]")


def forecast_dataset(
    init: str, value: float, *, leads=(1, 3), variables=("t2m",), version: str = "1"
) -> xr.Dataset:
    """A one-init forecast on a 3×4 lat/lon grid, every value ``value`` + the lead index."""
    data = (
        np.full((1, len(leads), 3, 4), value, np.float32)
        + np.arange(len(leads))[None, :, None, None]
    )
    ds = xr.Dataset(
        {v: (("init_time", "lead_time", "lat", "lon"), data, {"units": "K"}) for v in variables},
        coords={
            "init_time": (
                "init_time",
                [np.datetime64(init, "ns")],
                {"standard_name": "forecast_reference_time"},
            ),
            "lead_time": (
                "lead_time",
                np.asarray(leads) * HOUR,
                {"standard_name": "forecast_period"},
            ),
            "lat": ("lat", [50.0, 50.25, 50.5], {"units": "degrees_north"}),
            "lon": ("lon", [0.0, 0.25, 0.5, 0.75], {"units": "degrees_east"}),
        },
        attrs=forecast_attrs(
            model_name="m", model_version=version, run_id=f"run{version}", store_digest="abc"
        ),
    )
    return ds


# --- the forecast store --------------------------------------------------------------------


def test_store_round_trip_has_cf_dims_attrs_and_provenance(tmp_path: Path) -> None:
    store = str(tmp_path / "f.zarr")
    write_forecast(forecast_dataset("2024-01-02T00", 1.0), store)
    write_forecast(forecast_dataset("2024-01-03T00", 2.0, version="2"), store)

    ds = open_forecasts(store)
    assert ds["t2m"].dims == ("init_time", "lead_time", "lat", "lon")
    np.testing.assert_array_equal(ds["init_time"].values, ns("2024-01-02T00", "2024-01-03T00"))
    np.testing.assert_array_equal(ds["lead_time"].values, [1 * HOUR, 3 * HOUR])
    assert ds["lead_time"].dtype.kind == "m", "lead_time is a timedelta"
    assert ds["init_time"].attrs["standard_name"] == "forecast_reference_time"
    assert ds["lead_time"].attrs["standard_name"] == "forecast_period"
    assert ds["t2m"].attrs["units"] == "K"
    np.testing.assert_array_equal(ds["valid_time"].values[1], ns("2024-01-03T01", "2024-01-03T03"))
    assert ds["model_version"].values.tolist() == ["1", "2"]
    assert ds["run_id"].values.tolist() == ["run1", "run2"]
    assert ds.attrs["model_version"] == "2", "root attrs carry the latest write's provenance"
    np.testing.assert_array_equal(ds["t2m"].values[1, :, 0, 0], [2.0, 3.0])
    plain = xr.open_zarr(store)
    assert plain.sizes["init_time"] == 2, "plain xarray readers see the same committed rows"


def test_rewriting_an_init_time_replaces_its_row_without_duplicates(tmp_path: Path) -> None:
    store = str(tmp_path / "f.zarr")
    write_forecast(forecast_dataset("2024-01-02T00", 1.0), store)
    write_forecast(forecast_dataset("2024-01-03T00", 2.0), store)
    again = write_forecast(forecast_dataset("2024-01-02T00", 7.0, version="3"), store)

    assert again.replaced and again.row == 0
    ds = open_forecasts(store)
    assert ds.sizes["init_time"] == 2
    first = ds.sel(init_time="2024-01-02T00")
    np.testing.assert_array_equal(first["t2m"].values[:, 0, 0], [7.0, 8.0])
    assert str(first["model_version"].values) == "3"
    assert xr.open_zarr(store).sizes["init_time"] == 2


def test_a_forecast_of_other_leads_or_variables_is_refused(tmp_path: Path) -> None:
    store = str(tmp_path / "f.zarr")
    write_forecast(forecast_dataset("2024-01-02T00", 1.0), store)
    with pytest.raises(StoreError, match=r"has lead_time \[1h, 3h\], this forecast has \[1h, 6h\]"):
        write_forecast(forecast_dataset("2024-01-03T00", 1.0, leads=(1, 6)), store)
    with pytest.raises(StoreError, match=r"holds variables \['t2m'\], this forecast has \['u10'\]"):
        write_forecast(forecast_dataset("2024-01-03T00", 1.0, variables=("u10",)), store)


def test_another_zarr_group_is_not_overwritten(tmp_path: Path) -> None:
    store = tmp_path / "other.zarr"
    forecast_dataset("2024-01-02T00", 1.0).to_zarr(store, zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="not a stpipe forecast store"):
        write_forecast(forecast_dataset("2024-01-03T00", 1.0), str(store))
    with pytest.raises(StoreError, match="no forecast store here"):
        open_forecasts(str(tmp_path / "missing.zarr"))


KILLED_VARIABLES = ("t2m", "u10")  # the killed writer blocks on the second
KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import xarray as xr
    from stpipe.forecast.store import write_forecast

    def never(block):
        time.sleep(3600)  # the test kills the process while this chunk is pending
        return block

    ds = xr.open_dataset(sys.argv[2]).load()
    meta = np.array((), dtype="float32")  # so that Dask need not call never() to find it
    blocked = ds["u10"].chunk().data.map_blocks(never, meta=meta)
    ds["u10"] = (ds["u10"].dims, blocked, ds["u10"].attrs)
    write_forecast(ds, sys.argv[1])
""")


def kill_mid_write(store: Path, forecast: xr.Dataset, *, written: Callable[[], bool]) -> None:
    """Run a writer of ``forecast`` (variables t2m and u10) that blocks on u10; SIGKILL it
    once ``written()`` says t2m's chunk (every lead of the init time) is on disk."""
    source = store.parent / "forecast.nc"
    forecast.to_netcdf(source)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(store), str(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not written():
            if proc.poll() is not None:
                raise AssertionError(f"writer exited early: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("writer never wrote its first chunk")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_killed_append_leaves_the_new_init_time_invisible(tmp_path: Path) -> None:
    store = tmp_path / "f.zarr"
    write_forecast(forecast_dataset("2024-01-02T00", 1.0, variables=KILLED_VARIABLES), str(store))
    new_chunk = store / "t2m" / "c" / "1" / "0" / "0" / "0"

    kill_mid_write(
        store,
        forecast_dataset("2024-01-03T00", 5.0, variables=KILLED_VARIABLES),
        written=new_chunk.exists,
    )

    for ds in (open_forecasts(str(store)), xr.open_zarr(store)):
        np.testing.assert_array_equal(ds["init_time"].values, ns("2024-01-02T00"))
        np.testing.assert_array_equal(ds["t2m"].values[0, :, 0, 0], [1.0, 2.0])
    assert zarr.open_group(store, use_consolidated=False)["t2m"].shape[0] == 2, (
        "the killed writer had resized the arrays: the protocol, not luck, hid the row"
    )
    write_forecast(forecast_dataset("2024-01-03T00", 4.0, variables=KILLED_VARIABLES), str(store))
    ds = open_forecasts(str(store))
    assert ds.sizes["init_time"] == 2
    np.testing.assert_array_equal(ds["t2m"].values[1, :, 0, 0], [4.0, 5.0])


def test_a_killed_rewrite_keeps_the_old_forecast_and_a_rerun_replaces_it(tmp_path: Path) -> None:
    store = tmp_path / "f.zarr"
    write_forecast(forecast_dataset("2024-01-02T00", 1.0, variables=KILLED_VARIABLES), str(store))
    write_forecast(forecast_dataset("2024-01-03T00", 2.0, variables=KILLED_VARIABLES), str(store))
    new_row_chunk = store / "t2m" / "c" / "2" / "0" / "0" / "0"  # a rewrite goes to a new row

    kill_mid_write(
        store,
        forecast_dataset("2024-01-02T00", 5.0, variables=KILLED_VARIABLES),
        written=new_row_chunk.exists,
    )

    for ds in (open_forecasts(str(store)), xr.open_zarr(store)):
        np.testing.assert_array_equal(ds["init_time"].values, ns("2024-01-02T00", "2024-01-03T00"))
        np.testing.assert_array_equal(
            ds["t2m"].values[:, :, 0, 0],
            [[1.0, 2.0], [2.0, 3.0]],
            err_msg="a half-written rewrite must not be visible: the old forecast stays",
        )
    write_forecast(forecast_dataset("2024-01-02T00", 6.0, variables=KILLED_VARIABLES), str(store))
    ds = open_forecasts(str(store))
    assert ds.sizes["init_time"] == 2
    np.testing.assert_array_equal(ds.sel(init_time="2024-01-02")["t2m"].values[:, 0, 0], [6.0, 7.0])
    assert xr.open_zarr(store).sizes["init_time"] == 2, "the rerun left no extra row"


# --- the input window and the tiles ----------------------------------------------------------


def test_the_latest_complete_window_skips_a_gap_at_the_end() -> None:
    times = pd.date_range("2024-01-01", periods=10, freq="h").values
    times = np.concatenate([times, [times[-1] + 3 * HOUR]])  # one step after a gap
    assert input_window_end(times, input_steps=4, step_s=3600) == 9
    assert (
        input_window_end(
            times, input_steps=4, step_s=3600, init_time=np.datetime64("2024-01-01T05")
        )
        == 5
    )
    with pytest.raises(
        StoreError,
        match=r"no complete input window ends at 2024-01-01T02.*"
        r"lacks 1 of them \(2023-12-31T23",
    ):
        input_window_end(
            times, input_steps=4, step_s=3600, init_time=np.datetime64("2024-01-01T02")
        )
    with pytest.raises(StoreError, match="no 20 consecutive steps"):
        input_window_end(times, input_steps=20, step_s=3600)


def baseline_card(ds: xr.Dataset, *, halo: int, size: int = 8) -> ModelCard:
    from stpipe.core.card import Grid

    return ModelCard(
        pipeline="t",
        model="persistence",
        input_variables=("t2m", "u10"),
        target_variables=("t2m",),
        units=("K",),
        input_steps=3,
        leads=(1, 2),
        step_s=3600,
        patch_shape=(size + 2 * halo, size + 2 * halo),
        halo=halo,
        static_features=(),
        n_time_features=4,
        edge="pad",
        grid=Grid.of(ds),
    )


@pytest.mark.parametrize("halo", [0, 2])
def test_persistence_over_the_grid_gives_back_the_last_input_exactly(halo: int) -> None:
    ds = make_dataset(nt=10, ny=13, nx=19)
    card = baseline_card(ds, halo=halo)
    model = Baseline(
        "persistence",
        climatology=None,
        input_variables=card.input_variables,
        target_variables=card.target_variables,
        input_steps=3,
        leads=card.leads,
        step_s=3600,
        norm_mean=[0, 0],
        norm_std=[1, 1],
    ).eval()

    out = forecast_grid(model, ds, card=card, end=7, overlap=(3, 2))

    assert out["t2m"].dims == ("init_time", "lead_time", "lat", "lon")
    assert out["init_time"].values[0] == ds["time"].values[7]
    for lead in range(2):
        np.testing.assert_array_equal(out["t2m"].values[0, lead], ds["t2m"].values[7])


def test_climatology_forecasts_are_valid_at_init_plus_lead() -> None:
    ds = make_dataset(nt=72, ny=9, nx=11)
    clim = Climatology.fit(ds, variables=["t2m"], period="day", step_s=3600)
    card = baseline_card(ds, halo=0, size=4)
    model = Baseline(
        "climatology",
        climatology=clim,
        input_variables=card.input_variables,
        target_variables=card.target_variables,
        input_steps=3,
        leads=card.leads,
        step_s=3600,
        norm_mean=[0, 0],
        norm_std=[1, 1],
    ).eval()

    out = forecast_grid(model, ds, card=card, end=30, overlap=(1, 1))

    hour = pd.Timestamp(ds["time"].values[30]).hour
    for k, lead in enumerate(card.leads):
        np.testing.assert_allclose(
            out["t2m"].values[0, k], clim.table[(hour + lead) % 24, 0], rtol=0, atol=1e-6
        )


def test_tiles_carry_exactly_the_inputs_the_training_loader_gives(
    make_config: Callable[..., Config],
    write_feed,
    source_data: xr.Dataset,
) -> None:
    write_feed(source_data)
    config = make_config(
        patches={
            "input_steps": 3,
            "leads": [1, 2],
            "size": [8, 8],
            "halo": 2,
            "static_features": ["lat", "lon", "mask"],
        }
    )
    ingest(config.ingest_job, progress=False)
    ds = open_store(config.store_path)
    card = model_card(config, ds)
    loader = make_loader(
        config.patch_spec(), config.store_path, split="all", batch_size=9, shuffle=False
    )
    batch = next(iter(loader))

    for i in range(len(batch["t0"])):
        end = int(batch["t0"][i]) + card.input_steps - 1
        position = np.array([[int(batch["row0"][i]) + 2, int(batch["col0"][i]) + 2]])
        mine = tile_batch(
            ds, read_window(ds, card=card, end=end), card=card, end=end, positions=position
        )
        for key, value in mine.items():
            torch.testing.assert_close(
                value[0], batch[key][i], equal_nan=True, rtol=0, atol=0, msg=f"{key} of sample {i}"
            )


# --- verification ----------------------------------------------------------------------------


def test_verification_scores_against_the_truth_by_hand() -> None:
    truth = make_dataset(nt=6, ny=3, nx=4, variables=("t2m",), start="2024-01-02")
    forecast = forecast_dataset("2024-01-02T00", 0.0, leads=(1, 3)).isel(init_time=0)
    forecast = forecast.assign_coords(
        lat=truth["lat"].values,
        lon=truth["lon"].values,
        valid_time=("lead_time", ns("2024-01-02T01", "2024-01-02T03")),
        run_id="run1",
        model_version="1",
    )
    result = verify_forecast(forecast, truth, step_s=3600)

    error = forecast["t2m"].values[0] - truth["t2m"].values[1]
    w = np.cos(np.deg2rad(truth["lat"].values))
    w = (w / w.mean())[:, None] * np.ones((1, 4))
    assert result.scores["rmse_t2m_lead1"] == pytest.approx(
        np.sqrt((w * error**2).sum() / w.sum()), rel=1e-12
    )
    assert result.scores["mae_t2m_lead3"] == pytest.approx(
        np.abs(forecast["t2m"].values[1] - truth["t2m"].values[3]).mean(), rel=1e-12
    )
    assert result.run_id == "run1"


def test_only_forecasts_with_every_valid_time_in_the_store_are_verifiable(tmp_path: Path) -> None:
    store = str(tmp_path / "f.zarr")
    write_forecast(forecast_dataset("2024-01-02T00", 1.0), store)
    write_forecast(forecast_dataset("2024-01-02T02", 1.0), store)
    truth_times = pd.date_range("2024-01-02T00", "2024-01-02T04", freq="h").values
    inits = verifiable_inits(open_forecasts(store), truth_times)
    np.testing.assert_array_equal(inits, ns("2024-01-02T00"))

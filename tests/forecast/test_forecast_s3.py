"""The forecast store on S3: a local moto server on a loopback port, reached with s3fs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from stpipe.app import jobs
from stpipe.app.jobs import tracking_for
from stpipe.forecast.predict import forecast_grid
from stpipe.forecast.store import open_forecasts, write_forecast
from stpipe.io.store import open_store
from stpipe.tracking.model import load_model
from tests.app.test_jobs import pipeline, register_baseline
from tests.forecast.test_forecast import forecast_dataset

pytestmark = pytest.mark.integration

BUCKET = "stpipe-forecasts"


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """fsspec storage options of a fresh bucket on a moto server at 127.0.0.1."""
    import s3fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    s3fs.S3FileSystem(**options).mkdir(BUCKET)
    try:
        yield options
    finally:
        server.stop()


def test_the_store_round_trips_and_rewrites_on_s3(s3: dict[str, str]) -> None:
    url = f"s3://{BUCKET}/unit.zarr"
    write_forecast(forecast_dataset("2024-01-02T00", 1.0), url, storage_options=s3)
    write_forecast(forecast_dataset("2024-01-03T00", 2.0), url, storage_options=s3)
    again = write_forecast(
        forecast_dataset("2024-01-02T00", 5.0, version="2"), url, storage_options=s3
    )

    assert again.replaced
    ds = open_forecasts(url, storage_options=s3)
    np.testing.assert_array_equal(
        ds["init_time"].values, np.array(["2024-01-02", "2024-01-03"], "datetime64[ns]")
    )
    np.testing.assert_array_equal(ds["t2m"].values[:, :, 0, 0], [[5.0, 6.0], [2.0, 3.0]])
    assert ds["model_version"].values.tolist() == ["2", "1"]
    assert ds["t2m"].attrs["units"] == "K"


@pytest.mark.slow
def test_the_forecast_job_writes_to_an_s3_url(s3: dict[str, str], tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/tiny.zarr"
    options = ", ".join(f'{k} = "{v}"' for k, v in s3.items())
    config = pipeline(
        tmp_path, extra=f'[forecast]\nstore = "{url}"\nstorage_options = {{ {options} }}\n'
    )
    assert config.forecast_store == url
    register_baseline(config)

    outcome = jobs.run_forecast(config)

    assert outcome.store == url
    forecasts = open_forecasts(url, storage_options=s3)
    store = open_store(config.store_path)
    champion = load_model(tracking_for(config), "models:/tiny-t2m@champion")
    direct = forecast_grid(
        champion, store, card=champion.card, end=store.sizes["time"] - 1, overlap=(2, 2)
    )
    np.testing.assert_array_equal(forecasts["t2m"].values, direct["t2m"].values)
    assert not (tmp_path / "work" / "forecasts.zarr").exists(), "nothing went to the workdir"

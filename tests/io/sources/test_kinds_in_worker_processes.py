"""Every file kind ingests through worker processes as through threads.

Worker processes import only the reader's module before they fork (no xarray, pandas or
pydantic of their own): GRIB's reader brings xarray and cfgrib with it, TaxiBJ's h5py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from stpipe.io.ingest_plan import MODE_ENV
from stpipe.io.ingestion import IngestJob, ingest
from stpipe.io.settings import DaskSection, SourceSection
from stpipe.io.store import open_store

from .conftest import write_grib, write_taxibj

LAT = np.array([60.0, 57.5, 55.0, 52.5])
LON = np.array([350.0, 355.0, 0.0, 5.0, 10.0])


def grib_feed(feed: Path) -> tuple[str, list[str]]:
    rng = np.random.default_rng(3)
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        times = pd.date_range(day, periods=4, freq="6h")
        values = {"2t": 280 + 5 * rng.standard_normal((4, LAT.size, LON.size))}
        write_grib(feed / f"era5_{day}.grib2", times=times, lat=LAT, lon=LON, values=values)
    return "grib", ["t2m"]  # cfgrib names 2t t2m


def taxibj_feed(feed: Path) -> tuple[str, list[str]]:
    rng = np.random.default_rng(4)
    for day in ("20240101", "20240102", "20240103"):
        dates = [f"{day}{slot:02d}" for slot in range(1, 49)]
        data = rng.poisson(20.0, (48, 2, 6, 5)).astype(np.float64)
        write_taxibj(feed / f"taxi_{day}.h5", dates=dates, data=data)
    return "taxibj", ["inflow", "outflow"]


@pytest.mark.parametrize("write_feed", [grib_feed, taxibj_feed], ids=["grib", "taxibj"])
def test_worker_processes_build_the_store_threads_build(tmp_path, monkeypatch, write_feed):
    feed = tmp_path / "feed"
    feed.mkdir()
    kind, variables = write_feed(feed)
    stores = {}
    for mode in ("threads", "processes"):
        monkeypatch.setenv(MODE_ENV, mode)
        source = SourceSection(kind=kind, paths=str(feed / "*"), variables=variables)
        job = IngestJob(tmp_path / mode, source, dask=DaskSection(n_workers=2))
        report = ingest(job, progress=False)
        assert (len(report.ingested), report.refused) == (3, []), report.summary()
        stores[mode] = open_store(job.store_path).load()
        stores[mode].attrs.pop("history")  # when each ingest ran
    xr.testing.assert_identical(stores["processes"], stores["threads"])
    assert stores["processes"].sizes["time"] == {"grib": 12, "taxibj": 144}[kind]

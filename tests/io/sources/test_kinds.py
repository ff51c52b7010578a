"""The source-kind registry: a new kind is one SOURCE_KINDS entry; unknown kinds are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stpipe.io.ingestion import IngestJob, ingest
from stpipe.io.settings import SourceSection
from stpipe.io.sources.canonical import SourceData, SourceOptions, cell_data, select_variables
from stpipe.io.sources.kinds import SOURCE_KINDS, SourceKindSpec, read_source_file
from stpipe.io.store import open_store

STEP = np.timedelta64(3600, "s")
ROOT = str(Path(__file__).resolve().parents[3])


def read_toy(path: Path, source: SourceOptions) -> SourceData:
    """A ``.npz`` of ``time`` (ns since 1970) and ``count`` [time, 3, 4]: the whole reader."""
    with np.load(path) as f:
        chosen = select_variables(path, ["count"], source)
        return cell_data(
            path,
            time=f["time"].astype("datetime64[ns]"),
            variables={name: (f[file_name], {"units": "1"}) for name, file_name in chosen.items()},
            attrs={"title": "toy"},
            time_step_s=3600,
        )


def toy_values(first_hour: int, n: int) -> np.ndarray:
    """float32 [n, 3, 4]: a value per hour and cell that no two steps share."""
    hours = np.arange(first_hour, first_hour + n, dtype=np.float32)
    return hours[:, None, None] * 100 + np.arange(12, dtype=np.float32).reshape(3, 4)


def write_toy(path: Path, first_hour: int, n: int) -> Path:
    times = np.datetime64("2024-01-01T00", "ns") + np.arange(first_hour, first_hour + n) * STEP
    np.savez(path, time=times.astype(np.int64), count=toy_values(first_hour, n))
    return path


def generate_toy(
    outdir: Path, *, days: int, start: date, seed: int, grid: tuple[int, int] | None
) -> list[Path]:
    """A generated kind's writer: one file of 24 hourly steps per day from ``start``."""
    outdir.mkdir(parents=True, exist_ok=True)
    offset = (start - date(2024, 1, 1)).days
    return [
        write_toy(outdir / f"toy_{start + timedelta(days=d):%Y%m%d}.npz", 24 * (offset + d), 24)
        for d in range(days)
    ]


def test_a_registered_toy_kind_reads_and_ingests_through_the_registry_alone(tmp_path, monkeypatch):
    monkeypatch.setitem(SOURCE_KINDS, "toy", SourceKindSpec(f"{__name__}:read_toy"))
    feed = tmp_path / "feed"
    feed.mkdir()
    files = [write_toy(feed / "a.npz", 0, 24), write_toy(feed / "b.npz", 24, 12)]
    source = SourceSection(kind="toy", paths=str(feed / "*.npz"), variables=["count"])

    decoded = read_source_file(files[0], source).to_dataset()
    report = ingest(IngestJob(tmp_path / "work", source), progress=False)

    np.testing.assert_array_equal(decoded["count"].values, toy_values(0, 24))
    assert (report.ingested, report.refused, report.steps_added) == (files, [], 36)
    stored = open_store(report.store).load()
    np.testing.assert_array_equal(stored["count"].values, toy_values(0, 36))
    assert stored["count"].dims == ("time", "y", "x")
    assert stored.attrs["time_step_s"] == 3600


def test_a_generated_toy_kind_needs_no_paths_and_writes_its_feed(tmp_path, monkeypatch):
    monkeypatch.setitem(
        SOURCE_KINDS,
        "toy-generated",
        SourceKindSpec(f"{__name__}:read_toy", f"{__name__}:generate_toy"),
    )
    source = SourceSection(
        kind="toy-generated",
        variables=["count"],
        synthetic={"days": 2, "start": "2024-01-02"},
    )

    report = ingest(IngestJob(tmp_path, source), progress=False)

    feed = tmp_path / "feed"
    assert report.ingested == [feed / "toy_20240102.npz", feed / "toy_20240103.npz"]
    stored = open_store(report.store).load()
    np.testing.assert_array_equal(stored["count"].values, toy_values(24, 48))


def test_file_kinds_need_paths_and_generated_ones_do_not():
    assert {k for k, spec in SOURCE_KINDS.items() if spec.needs_paths} == {
        "netcdf",
        "grib",
        "taxibj",
    }
    with pytest.raises(ValidationError, match="source kind 'taxibj' needs 'paths'"):
        SourceSection(kind="taxibj", variables=["inflow"])
    assert SourceSection(kind="synthetic-traffic", variables=["inflow"]).paths is None


def test_an_unknown_kind_is_one_line_listing_the_registered_kinds(monkeypatch):
    monkeypatch.setitem(SOURCE_KINDS, "toy", SourceKindSpec(f"{__name__}:read_toy"))
    with pytest.raises(ValidationError) as info:
        SourceSection(kind="csv", paths="*.csv", variables=["a"])

    (error,) = info.value.errors()
    assert error["loc"] == ("kind",)
    assert error["msg"] == (
        "Value error, Input should be 'netcdf', 'grib', 'taxibj', 'synthetic-weather', "
        "'synthetic-traffic' or 'toy' (the registered source kinds), got 'csv'"
    )


def test_every_registered_reader_and_generator_loads():
    for kind, spec in SOURCE_KINDS.items():
        assert callable(spec.load_reader()), kind
        assert spec.needs_paths or callable(spec.load_generator()), kind


def test_validating_a_kind_imports_no_reader_so_cfgrib_stays_unloaded():
    code = (
        "import sys\n"
        "from stpipe.io.settings import SourceSection\n"
        "SourceSection(kind='grib', paths='*.grib', variables=['t2m'])\n"
        "loaded = [m for m in ('cfgrib', 'netCDF4', 'h5py', 'stpipe.io.sources.grib') "
        "if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | {"PYTHONPATH": ROOT})

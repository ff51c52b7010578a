"""Ingest rules: append, skip by checksum, overlaps, gaps, refusals; real files, real store."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from stpipe.app.cli import main
from stpipe.core.errors import SourceError
from stpipe.core.grid import CF_CONVENTIONS
from stpipe.core.splits import time_gaps
from stpipe.io.ingestion import ingest
from stpipe.io.manifest import read_manifest, store_digest
from stpipe.io.store import open_store


def committed(config) -> tuple[object, xr.Dataset]:
    return read_manifest(config.store_path), open_store(config.store_path).load()


def test_files_append_in_order_and_round_trip_exactly(
    source_data, write_feed, make_config, assert_same_values
):
    files = write_feed(source_data)
    config = make_config()

    report = ingest(config.ingest_job, progress=False)

    assert report.ingested == files, report.summary()
    assert (report.skipped, report.refused, report.steps_added) == ([], [], 72)
    assert report.bytes_ingested == 72 * 16 * 20 * 4 * 2
    ds = open_store(config.store_path)
    assert ds["t2m"].chunks is not None, "open_store must be lazy (dask)"
    assert_same_values(ds.load(), source_data)
    assert ds.attrs["time_step_s"] == 3600 and ds.attrs["Conventions"] == CF_CONVENTIONS
    assert ds["t2m"].attrs["units"] == "K" and ds["lat"].attrs["units"] == "degrees_north"
    assert ds.attrs["history"].count("stpipe ingest: appended 24 steps") == 3
    manifest = read_manifest(config.store_path)
    assert [(f.name, f.offset, f.appended) for f in manifest.files] == [
        (f.name, 24 * i, 24) for i, f in enumerate(files)
    ]
    assert (manifest.committed_length, manifest.gaps) == (72, ())
    assert report.time_range == (source_data.time.values[0], source_data.time.values[-1])
    plain = xr.open_zarr(config.store_path)
    assert plain.sizes["time"] == 72 and plain["time"].values[-1] == source_data.time.values[-1]


def test_rerun_on_same_inputs_changes_nothing(source_data, write_feed, make_config, snapshot):
    write_feed(source_data)
    config = make_config()
    ingest(config.ingest_job, progress=False)
    before = snapshot(config.store_path)

    report = ingest(config.ingest_job, progress=False)

    assert (report.ingested, report.steps_added, len(report.skipped)) == ([], 0, 3)
    assert {reason for _, reason in report.skipped} == {"already ingested (same sha256)"}
    assert snapshot(config.store_path) == before, "a no-op re-run must not touch the store"


def test_next_night_appends_only_the_new_file(
    source_data, write_feed, make_config, assert_same_values
):
    first_two = write_feed(source_data.isel(time=slice(0, 48)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    digest = store_digest(config.store_path)
    third = write_feed(source_data.isel(time=slice(48, 72)))

    report = ingest(config.ingest_job, progress=False)

    assert report.ingested == third
    assert [p for p, _ in report.skipped] == first_two
    assert store_digest(config.store_path) != digest
    assert_same_values(open_store(config.store_path).load(), source_data)


def test_overlapping_file_with_identical_values_is_skipped(
    source_data, write_feed, make_config, assert_same_values
):
    write_feed(source_data.isel(time=slice(0, 48)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    digest = store_digest(config.store_path)
    (recut,) = write_feed(source_data.isel(time=slice(6, 30)), suffix="_recut")

    report = ingest(config.ingest_job, progress=False)

    assert (recut, "identical to stored data") in report.skipped
    assert report.ingested == [] and store_digest(config.store_path) == digest
    assert read_manifest(config.store_path).files[-1].appended == 0
    assert_same_values(open_store(config.store_path).load(), source_data.isel(time=slice(0, 48)))
    assert (recut, "already ingested (same sha256)") in ingest(
        config.ingest_job, progress=False
    ).skipped


def test_partly_overlapping_file_appends_its_new_steps(
    source_data, write_feed, make_config, assert_same_values
):
    write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    (longer,) = write_feed(source_data.isel(time=slice(12, 72)), steps_per_file=60)

    report = ingest(config.ingest_job, progress=False)

    assert (report.ingested, report.steps_added) == ([longer], 48)
    entry = read_manifest(config.store_path).files[-1]
    assert (entry.n_steps, entry.offset, entry.appended) == (60, 24, 48)
    assert_same_values(open_store(config.store_path).load(), source_data)


def test_overlap_with_different_values_is_refused_and_store_untouched(
    source_data, write_feed, make_config, snapshot
):
    write_feed(source_data.isel(time=slice(0, 48)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    before = snapshot(config.store_path)
    changed = source_data.isel(time=slice(24, 48)).copy(deep=True)
    changed["u10"][5, 3, 4] += 1.0
    (bad,) = write_feed(changed, suffix="_v2")

    report = ingest(config.ingest_job, progress=False)

    ((path, reason),) = report.refused
    assert path == bad
    assert reason == (
        "overlaps the store over 2024-01-02T00:00:00 … 2024-01-02T23:00:00 with different "
        "values (first in 'u10' at 2024-01-02T05:00:00); refusing to overwrite stored data"
    )
    assert snapshot(config.store_path) == before


def test_time_gap_is_allowed_and_recorded(source_data, write_feed, make_config):
    write_feed(source_data.isel(time=slice(0, 24)))
    write_feed(source_data.isel(time=slice(48, 72)))
    config = make_config()

    report = ingest(config.ingest_job, progress=False)

    times = source_data.time.values
    expected = [(times[23], times[48])]
    assert report.gaps == expected and list(read_manifest(config.store_path).gaps) == expected
    ds = open_store(config.store_path)
    assert ds.sizes["time"] == 48
    assert time_gaps(ds.time.values, ds.attrs["time_step_s"]) == expected


def test_backfill_into_a_gap_is_refused(source_data, write_feed, make_config, snapshot):
    write_feed(source_data.isel(time=slice(0, 24)))
    write_feed(source_data.isel(time=slice(48, 72)))
    config = make_config(source={"on_bad_file": "skip"})
    ingest(config.ingest_job, progress=False)
    before = snapshot(config.store_path)
    (middle,) = write_feed(source_data.isel(time=slice(24, 48)))

    report = ingest(config.ingest_job, progress=False)

    ((path, reason),) = report.refused
    assert path == middle
    assert "2024-01-02T00:00:00 is not in the store; the store is append-only" in reason
    assert snapshot(config.store_path) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda ds: ds.assign_coords(lat=ds.lat + 0.5),
            r"grid differs from the store's: lat \[40.5 … 44.25\] \(16 values\) in the file, "
            r"\[40.0 … 43.75\] \(16 values\) in the store",
        ),
        (
            lambda ds: ds.isel(lon=slice(0, 10)),
            r"lon \[-5.0 … -2.75\] \(10 values\) in the file, \[-5.0 … -0.25\] \(20 values\)",
        ),
        (
            lambda ds: ds.assign(t2m=ds.t2m.assign_attrs(units="degC")),
            r"variable 't2m' has units 'degC', the store has 'K'",
        ),
    ],
    ids=["lat-values", "shape", "units"],
)
def test_file_on_another_grid_or_units_is_refused(
    source_data, write_feed, make_config, snapshot, change, message
):
    write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    before = snapshot(config.store_path)
    (odd,) = write_feed(change(source_data.isel(time=slice(24, 48))))

    report = ingest(config.ingest_job, progress=False)

    ((path, reason),) = report.refused
    assert path == odd
    with pytest.raises(SourceError, match=message):
        raise SourceError(path, reason)
    assert snapshot(config.store_path) == before


def test_bad_file_with_fail_stops_and_keeps_earlier_files(
    source_data, write_feed, make_config, capsys
):
    good, broken, later = write_feed(source_data)
    broken.write_bytes(b"this is not a netcdf file")
    config = make_config()

    code = main(["ingest", str(config.path)])

    assert code == 1
    out = capsys.readouterr().out
    assert f"refused {broken.name}:" in out and "1 file(s) after it not attempted" in out
    manifest, ds = committed(config)
    assert [f.name for f in manifest.files] == [good.name]
    assert ds.sizes["time"] == 24
    assert later.exists()


def test_bad_file_with_skip_ingests_the_rest(source_data, write_feed, make_config):
    good, broken, later = write_feed(source_data)
    broken.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    config = make_config(source={"on_bad_file": "skip"})

    report = ingest(config.ingest_job, progress=False)

    assert report.ingested == [good, later]
    assert [p for p, _ in report.refused] == [broken]
    assert report.gaps == [(source_data.time.values[23], source_data.time.values[48])]


def test_bad_first_file_leaves_no_store(feed, make_config):
    (feed / "day_2024010100.nc").write_bytes(b"garbage")
    config = make_config()

    report = ingest(config.ingest_job, progress=False)

    assert len(report.refused) == 1 and report.time_range is None
    assert not config.store_path.exists()


def test_single_step_files_take_the_step_from_their_attributes(
    source_data, write_feed, make_config, assert_same_values
):
    write_feed(source_data.isel(time=slice(0, 3)), steps_per_file=1)
    config = make_config()

    report = ingest(config.ingest_job, progress=False)

    assert len(report.ingested) == 3 and report.refused == []
    assert_same_values(open_store(config.store_path).load(), source_data.isel(time=slice(0, 3)))


def test_first_file_with_one_step_and_no_known_step_is_refused(
    source_data, write_feed, make_config
):
    single = source_data.isel(time=slice(0, 1))
    single.attrs = {}
    write_feed(single)
    config = make_config()

    report = ingest(config.ingest_job, progress=False)

    ((_, reason),) = report.refused
    assert reason == "cannot tell the time step: one time and no time_step_s"
    assert not config.store_path.exists()


def test_synthetic_traffic_source_is_generated_then_ingested(tmp_path, make_config):
    config = make_config(
        source={"kind": "synthetic-traffic", "variables": ["inflow", "outflow"]},
        **{"source.synthetic": {"days": 2, "grid": [8, 8], "start": "2024-03-04"}},
    )

    report = ingest(config.ingest_job, progress=False)

    assert [p.name for p in report.ingested] == ["taxibj_20240304.h5", "taxibj_20240305.h5"]
    ds = open_store(config.store_path)
    assert ds["inflow"].dims == ("time", "y", "x") and ds.sizes["time"] == 96
    assert ds.attrs["time_step_s"] == 1800


def test_real_ncep_sample_round_trips(tmp_path, make_config, assert_same_values):
    hvsampledata = pytest.importorskip("hvsampledata")
    sample = hvsampledata.air_temperature("xarray")
    path = sample.air.encoding["source"]
    config = make_config(source={"paths": path, "variables": ["air"]})
    from stpipe.io.sources import read_source_file

    expected = read_source_file(path, config.source).to_dataset()

    report = ingest(config.ingest_job, progress=False)

    assert report.steps_added == 20 and report.refused == []
    ds = open_store(config.store_path).load()
    assert_same_values(ds, expected)
    assert ds["air"].attrs == expected["air"].attrs
    assert ds["air"].attrs["units"] == "degK"
    assert ds.attrs["time_step_s"] == 6 * 3600
    native = sample.air.sortby("lat").assign_coords(lon=sample.lon - 360.0)
    np.testing.assert_allclose(ds["air"].values, native.values, atol=1e-4)
    np.testing.assert_array_equal(ds.lat.values, np.sort(sample.lat.values))
    assert pd.Timestamp(ds.time.values[0]) == pd.Timestamp("2014-02-24")


def test_touched_file_is_recognised_by_its_checksum(source_data, write_feed, make_config, snapshot):
    (day,) = write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    before = snapshot(config.store_path)
    day.touch()

    report = ingest(config.ingest_job, progress=False)

    assert report.skipped == [(day, "already ingested (same sha256)")]
    assert snapshot(config.store_path) == before


def test_checksum_cache_never_hides_a_rewritten_file(source_data, write_feed, make_config):
    (day,) = write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    stat = day.stat()
    changed = source_data.isel(time=slice(0, 24)).copy(deep=True)
    changed["t2m"][0, 0, 0] = 250.0  # plausible, so refused for the overlap alone
    changed.to_netcdf(day)
    os.utime(day, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert day.stat().st_size == stat.st_size and day.stat().st_mtime_ns == stat.st_mtime_ns

    report = ingest(config.ingest_job, progress=False)

    ((path, reason),) = report.refused
    assert path == day and "with different values (first in 't2m' at 2024-01-01T00:00:00)" in reason

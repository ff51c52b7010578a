"""The store: chunk rule, commit point, recovery, manifest, lock, errors on bad paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from stpipe.core.errors import StoreError
from stpipe.core.splits import time_gaps
from stpipe.io.ingestion import ingest
from stpipe.io.layout import blosc_codecs
from stpipe.io.manifest import FileEntry, Manifest, manifest_digest, read_manifest
from stpipe.io.settings import StoreSection
from stpipe.io.store import (
    HISTORY_LINES,
    Layout,
    choose_layout,
    commit,
    open_store,
    recover,
    store_lock,
)


@pytest.mark.parametrize(
    ("grid", "step_s", "expected"),
    [
        ((256, 256), 3600, Layout(24, (128, 128), "lz4", 5)),
        ((64, 64), 3600, Layout(96, (64, 64), "lz4", 5)),
        ((25, 53), 6 * 3600, Layout(32, (25, 53), "lz4", 5)),
        ((32, 32), 1800, Layout(384, (32, 32), "lz4", 5)),
        ((721, 1440), 600, Layout(36, (128, 128), "lz4", 5)),
    ],
    ids=["256-hourly", "64-hourly", "ncep-6h", "taxibj-30min", "era5-10min"],
)
def test_chunk_rule(grid, step_s, expected):
    assert choose_layout(grid, time_step_s=step_s) == expected


def test_chunk_rule_yields_to_store_settings():
    store = StoreSection(
        time_chunk=10, spatial_chunk=(50, 500), compressor="zstd", compression_level=9
    )
    expected = Layout(10, (50, 256), "zstd", 9)
    assert choose_layout((256, 256), time_step_s=3600, store=store) == expected


@pytest.mark.parametrize(
    ("compressor", "level", "blosc_level"),
    [
        ("zstd", 1, 1),
        ("zstd", 3, 2),
        ("zstd", 5, 3),
        ("zstd", 15, 8),
        ("zstd", 22, 9),
        ("lz4", 1, 1),
        ("lz4", 9, 9),
    ],
)
def test_blosc_level_of_each_compressor(compressor, level, blosc_level):
    (codec,) = blosc_codecs(compressor, level)
    assert (codec.cname.value, codec.clevel, codec.shuffle.value) == (
        compressor,
        blosc_level,
        "shuffle",
    )


@pytest.mark.parametrize(("compressor", "level"), [("lz4", 10), ("zstd", 23)])
def test_compression_level_outside_the_compressors_range_is_refused(compressor, level):
    with pytest.raises(ValueError, match=f"compression_level {level} is outside {compressor}'s 1-"):
        StoreSection(compressor=compressor, compression_level=level)


@pytest.mark.parametrize("asked", [{}, {"compressor": "lz4"}], ids=["default", "set"])
def test_a_store_keeps_its_compressor_when_the_setting_changes(
    asked, source_data, write_feed, make_config, caplog
):
    write_feed(source_data.isel(time=slice(0, 24)))
    ingest(make_config(store={"compressor": "zstd"}).ingest_job, progress=False)
    write_feed(source_data.isel(time=slice(24, 48)))
    config = make_config(store=asked)  # lz4: new stores only, said when asked for
    with caplog.at_level("WARNING", logger="stpipe.io.ingestion"):
        ingest(config.ingest_job, progress=False)

    t2m = zarr.open_array(config.store_path / "t2m")
    assert [(c.cname.value, c.clevel) for c in t2m.compressors] == [("zstd", 2)]
    stored = xr.open_zarr(config.store_path)["t2m"].values
    np.testing.assert_array_equal(stored, source_data["t2m"].values[:48].astype("float32"))
    warned = "compressor/compression_level lz4/5 differ from the existing store's" in caplog.text
    assert warned == bool(asked), caplog.text


def test_open_store_on_missing_path_names_it(tmp_path):
    with pytest.raises(StoreError, match=r"nope.zarr: store does not exist; run `stpipe ingest`"):
        open_store(tmp_path / "nope.zarr")


def test_open_store_refuses_a_zarr_store_stpipe_did_not_write(tmp_path, source_data):
    source_data.to_zarr(tmp_path / "other.zarr", zarr_format=3)
    with pytest.raises(StoreError, match="not a stpipe store"):
        open_store(tmp_path / "other.zarr")


def test_store_metadata_is_xarray_and_cf_compatible(source_data, write_feed, make_config):
    write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    ingest(config.ingest_job, progress=False)

    root = json.loads((config.store_path / "zarr.json").read_bytes())
    t2m = root["consolidated_metadata"]["metadata"]["t2m"]
    assert t2m["dimension_names"] == ["time", "lat", "lon"]
    assert t2m["chunk_grid"]["configuration"]["chunk_shape"] == [192, 16, 20]
    assert t2m["codecs"][1]["name"] == "blosc"
    blosc = t2m["codecs"][1]["configuration"]
    assert (blosc["cname"], blosc["clevel"], blosc["shuffle"]) == ("lz4", 5, "shuffle")
    time = root["consolidated_metadata"]["metadata"]["time"]["attributes"]
    assert time["units"] == "seconds since 1970-01-01 00:00:00"
    assert time["calendar"] == "proleptic_gregorian"
    ds = xr.open_zarr(config.store_path)
    np.testing.assert_array_equal(ds.time.values, source_data.time.values[:24])


def test_only_the_committed_length_is_visible_and_recover_truncates(
    source_data, write_feed, make_config, assert_same_values
):
    write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    # What a killed append leaves: arrays resized and written past the commit.
    group = zarr.open_group(config.store_path, mode="r+", use_consolidated=False)
    for name in ("t2m", "u10", "time"):
        group[name].resize((130, *group[name].shape[1:]))
    group["t2m"][24:130] = np.float32(7.0)
    (config.store_path / "t2m" / "c" / "0" / "0" / "0.1234.partial").write_bytes(b"half")

    for ds in (
        open_store(config.store_path),
        xr.open_zarr(config.store_path),
        zarr.open_group(config.store_path, mode="r", use_consolidated=True),
    ):
        assert ds["t2m"].shape == (24, 16, 20), type(ds)

    manifest = recover(config.store_path)

    assert manifest.committed_length == 24
    group = zarr.open_group(config.store_path, mode="r", use_consolidated=False)
    assert [group[n].shape[0] for n in ("t2m", "u10", "time")] == [24, 24, 24]
    assert sorted(config.store_path.rglob("*.partial")) == []
    assert not (config.store_path / "t2m" / "c" / "1").exists() or not any(
        (config.store_path / "t2m" / "c" / "1").rglob("*")
    )
    assert_same_values(open_store(config.store_path).load(), source_data.isel(time=slice(0, 24)))


def test_manifest_round_trips_through_json():
    t = np.datetime64("2024-01-01T00:00", "ns")
    entry = FileEntry("a.nc", 10, "ab" * 32, t, t + np.timedelta64(23, "h"), 24, 0, 24)
    manifest = Manifest(3600, ("t2m",), 24, entry.start, entry.end, ((t, t),), (entry,))
    assert Manifest.from_json(manifest.to_json(), origin="x") == manifest


def test_digest_changes_iff_committed_data_changes():
    t = np.datetime64("2024-01-01T00:00", "ns")
    day = np.timedelta64(1, "D")
    first = FileEntry("a.nc", 10, "a" * 64, t, t + day, 24, 0, 24)
    duplicate = FileEntry("a2.nc", 12, "b" * 64, t, t + day, 24, 24, 0)
    second = FileEntry("b.nc", 10, "c" * 64, t + day, t + 2 * day, 24, 24, 24)
    base = Manifest(3600, ("t2m",), 24, files=(first,))
    with_duplicate = Manifest(3600, ("t2m",), 24, files=(first, duplicate))
    appended = Manifest(3600, ("t2m",), 48, files=(first, second))
    assert manifest_digest(base) == manifest_digest(with_duplicate)
    assert manifest_digest(base) != manifest_digest(appended)
    assert len(manifest_digest(base)) == 16


def test_time_gaps_are_last_before_and_first_after():
    times = np.array(
        ["2024-01-01T00", "2024-01-01T01", "2024-01-01T05", "2024-01-01T06", "2024-01-01T08"],
        dtype="datetime64[ns]",
    )
    assert time_gaps(times, 3600) == [(times[1], times[2]), (times[3], times[4])]
    assert time_gaps(times[:2], 3600) == []
    assert time_gaps(times, 4 * 3600) == []


def test_lock_refuses_a_second_writer_naming_the_holder(tmp_path):
    with store_lock(tmp_path), pytest.raises(StoreError) as err, store_lock(tmp_path):
        pass
    assert "being written by another process (pid " in str(err.value)
    assert " since " in str(err.value)
    with store_lock(tmp_path):
        pass


def test_ingest_refuses_while_another_writer_holds_the_lock(source_data, write_feed, make_config):
    write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    with store_lock(config.workdir), pytest.raises(StoreError, match="another process"):
        ingest(config.ingest_job, progress=False)
    assert not config.store_path.exists()


def test_read_manifest_of_a_directory_without_commit(tmp_path):
    (tmp_path / "s.zarr").mkdir()
    with pytest.raises(StoreError, match=r"has no committed data \(no zarr.json\)"):
        read_manifest(tmp_path / "s.zarr")


def test_history_keeps_its_first_line_and_the_newest_ones(source_data, write_feed, make_config):
    write_feed(source_data.isel(time=slice(0, 24)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    manifest = read_manifest(config.store_path)
    first = open_store(config.store_path).attrs["history"]
    assert "stpipe ingest: appended 24 steps" in first and "\n" not in first

    for k in range(HISTORY_LINES + 20):  # a store ingested file by file, for long
        commit(config.store_path, manifest, history=f"commit {k}")

    lines = open_store(config.store_path).attrs["history"].splitlines()
    assert lines == [first, *(f"commit {k}" for k in range(20, HISTORY_LINES + 20))]
    assert read_manifest(config.store_path) == manifest, "only the history text changed"

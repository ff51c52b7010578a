"""`stpipe store rollback`: the newest committed files leave the store in one commit, the
manifest records it, a kill at any store write leaves the old or the new state, and the
real files then ingest. Real NetCDF files, real store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from stpipe.app.cli import main
from stpipe.app.config import load_config
from stpipe.io.ingestion import ingest
from stpipe.io.manifest import read_manifest, store_digest
from stpipe.io.store import open_store, recover
from stpipe.io.store_writes import CRASH_ENV


def stored(config) -> tuple[str, xr.Dataset]:
    """The store's manifest digest and committed data."""
    return store_digest(config.store_path), open_store(config.store_path).load()


def assert_stored(config, expected: tuple[str, xr.Dataset]) -> None:
    """The store holds ``expected``: digest, values, coordinates, attributes (all but
    ``history``, which a rollback extends)."""
    digest, data = expected
    assert store_digest(config.store_path) == digest
    actual = open_store(config.store_path).load()
    assert actual.attrs.pop("history").startswith(data.attrs["history"])
    data = data.copy()
    data.attrs = {k: v for k, v in data.attrs.items() if k != "history"}
    xr.testing.assert_identical(actual, data)


@pytest.fixture
def blocked(source_data, write_feed, make_config):
    """Days 1–2 ingested, then a file dated 60 days late (accepted under a wide max_gap), so
    the real day 3 is refused as a backfill. Returns (config, the state after day 2, the
    mis-dated file, the real day 3)."""
    write_feed(source_data.isel(time=slice(0, 48)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    after_day_2 = stored(config)
    misdated = write_feed(source_data.isel(time=slice(48, 72)), suffix="_misdated")[0]
    with netCDF4.Dataset(misdated, "a") as nc:
        assert nc["time"].units.startswith("hours since 2024-01-03")
        nc["time"].units = nc["time"].units.replace("2024-01-03", "2024-03-03")
    wide = make_config(source={"max_gap": "90D"})
    assert ingest(wide.ingest_job, progress=False).ingested == [misdated]
    real = misdated.with_name("day_2024010300.nc")
    source_data.isel(time=slice(48, 72)).to_netcdf(real)
    (refused,) = ingest(wide.ingest_job, progress=False).refused
    assert refused[0] == real and "the store is append-only" in refused[1]
    return config, after_day_2, misdated, real


def test_rollback_of_the_newest_file_unblocks_the_store(
    blocked, capsys, make_config, source_data, assert_same_values
):
    config, after_day_2, misdated, real = blocked
    before = read_manifest(config.store_path)

    code = main(["store", "rollback", str(config.path), "--files", "1"])

    assert code == 0
    assert capsys.readouterr().out.strip() == (
        f"{config.store_path}: rolled back 1 file(s) ({misdated.name}): 72 → 48 steps, now "
        "ending at 2024-01-02T23:00:00"
    )
    assert_stored(config, after_day_2)
    manifest = read_manifest(config.store_path)
    (entry,) = manifest.rollbacks
    assert (entry.length_before, entry.length_after, entry.files) == (72, 48, before.files[-1:])
    assert abs(np.datetime64("now") - entry.time) < np.timedelta64(60, "s")
    assert manifest.files == before.files[:-1] and manifest.gaps == ()
    history = open_store(config.store_path).attrs["history"].splitlines()[-1]
    assert history.endswith(f"stpipe store rollback: removed 1 file(s) ({misdated.name}), 24 steps")

    misdated.unlink()
    report = ingest(make_config().ingest_job, progress=False)

    assert report.ingested == [real] and report.refused == []
    assert_same_values(open_store(config.store_path).load(), source_data)
    assert read_manifest(config.store_path).rollbacks == (entry,), "the record stays"


def test_rollback_to_a_time_removes_every_file_after_it(blocked, capsys):
    config, _, misdated, _ = blocked
    first_day = ("2024-01-01T00:00:00", "2024-01-01T23:00:00")

    code = main(["store", "rollback", str(config.path), "--to", "2024-01-01T23:30:00+00:00"])

    assert code == 0
    assert f"rolled back 2 file(s) (day_2024010200.nc, {misdated.name}): 72 → 24 steps" in (
        capsys.readouterr().out
    )
    ds = open_store(config.store_path)
    assert (str(ds.time.values[0])[:19], str(ds.time.values[-1])[:19]) == first_day
    assert [f.name for f in read_manifest(config.store_path).files] == ["day_2024010100.nc"]


def test_rollback_of_a_recorded_duplicate_keeps_the_data(
    source_data, write_feed, make_config, capsys
):
    write_feed(source_data.isel(time=slice(0, 48)))
    config = make_config()
    ingest(config.ingest_job, progress=False)
    write_feed(source_data.isel(time=slice(6, 30)), suffix="_recut")
    ingest(config.ingest_job, progress=False)
    before = stored(config)
    assert read_manifest(config.store_path).files[-1].appended == 0

    assert main(["store", "rollback", str(config.path), "--files", "1"]) == 0

    assert "48 → 48 steps" in capsys.readouterr().out
    assert_stored(config, before)
    assert len(read_manifest(config.store_path).files) == 2


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (
            ["--files", "3"],
            "{store}: rolling back 3 file(s) would remove every committed step; to start over, "
            "delete the store instead",
        ),
        (["--files", "9"], "{store}: cannot roll back 9 file(s): the store holds 3"),
        (["--files", "0"], "{store}: cannot roll back 0 file(s): the store holds 3"),
    ],
    ids=["every-file", "more-than-stored", "zero"],
)
def test_refused_rollback_is_one_line_and_changes_nothing(blocked, capsys, snapshot, args, problem):
    config = blocked[0]
    before, files = stored(config), snapshot(config.store_path)

    code = main(["store", "rollback", str(config.path), *args])

    assert code == 2
    err = capsys.readouterr().err
    assert err == f"stpipe store: error: {problem.format(store=config.store_path)}\n"
    assert_stored(config, before)
    assert snapshot(config.store_path) == files


def test_rollback_after_the_end_changes_nothing(blocked, capsys, snapshot):
    config = blocked[0]
    files = snapshot(config.store_path)

    assert main(["store", "rollback", str(config.path), "--to", "2024-06-01"]) == 0

    out = capsys.readouterr().out.strip()
    assert out == (
        f"{config.store_path}: no file appended steps after 2024-06-01 00:00:00; nothing to "
        "roll back"
    )
    assert snapshot(config.store_path) == files


def test_rollback_without_a_store_is_one_line(make_config, capsys):
    config = make_config()

    assert main(["store", "rollback", str(config.path), "--files", "1"]) == 2

    assert capsys.readouterr().err == (
        f"stpipe store: error: {config.store_path}: store does not exist; nothing to roll back\n"
    )


ONE = ("--files", "1")


def _copy_workdir(config_path: Path, where: Path) -> Path:
    shutil.copytree(config_path.parent, where, ignore=shutil.ignore_patterns("run*"))
    return where / config_path.name


def test_killed_rollback_leaves_the_old_or_the_new_state(blocked, tmp_path, make_config):
    """SIGKILL before each store write of a rollback, N = 1, 2, … until one completes."""
    config, after_day_2, misdated, real = blocked
    old = stored(config)
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    seen = set()
    for crash_at in range(1, 20):
        copy = load_config(_copy_workdir(config.path, tmp_path / f"run{crash_at}"))
        run = subprocess.run(
            [sys.executable, "-m", "stpipe", "-q", "store", "rollback", str(copy.path), *ONE],
            env=env | {CRASH_ENV: str(crash_at)},
            capture_output=True,
            text=True,
        )
        recover(copy.store_path)
        state = "new" if store_digest(copy.store_path) == after_day_2[0] else "old"
        assert_stored(copy, after_day_2 if state == "new" else old)
        seen.add(state)
        if run.returncode == 0:
            assert state == "new"
            break
        assert run.returncode == -9, run.stderr
        if state == "new":  # killed while truncating: the next ingest completes the store
            (copy.path.parent / "feed" / misdated.name).unlink()
            report = ingest(copy.ingest_job, progress=False)
            assert [p.name for p in report.ingested] == [real.name]
    else:
        pytest.fail("the rollback never completed")
    assert seen == {"old", "new"} and crash_at > 2

"""Crash safety of the forecast store: a write killed with SIGKILL at every store write.

``STPIPE_CRASH_AT_WRITE=N`` makes the writing process SIGKILL itself just before its N-th
write or delete in the forecast store, so the sweep N = 1, 2, … covers every state between
two writes of a real :func:`write_forecast`: creating the store, appending an init time and
rewriting one. After each kill the store must open (with :func:`open_forecasts` and plain
``xr.open_zarr``) and hold, for the init time being written, either the old state or the
new one, every other init time untouched; writing it again must then give exactly the
store that an unkilled write gives.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from stpipe.core.errors import StoreError
from stpipe.forecast.store import open_forecasts, write_forecast
from stpipe.io.store_writes import CRASH_ENV
from tests.forecast.test_forecast import forecast_dataset

# One launcher imports stpipe once and forks a child per kill point; each child writes for
# real and is killed for real. The parent never touches zarr before forking (zarr's event
# loop thread would not survive the fork).
SWEEP = """
import json, os, shutil, sys, traceback
from pathlib import Path
import dask.array, xarray, zarr
import stpipe.forecast.store

template, forecast, base, env = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
ds = xarray.open_dataset(forecast).load()

def run(store, crash_at=None):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if crash_at is not None:
                os.environ[env] = str(crash_at)
            stpipe.forecast.store.write_forecast(ds, str(store))
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

results = []
for n in range(1, 300):
    run_dir = base / f"kill{n:03d}"
    shutil.copytree(template, run_dir)
    code = run(run_dir / "f.zarr", crash_at=n)
    if code == 0:
        break
    shutil.copytree(run_dir, base / f"killed{n:03d}")
    results.append([n, code, run(run_dir / "f.zarr")])
print(json.dumps(results))
"""

OLD, NEW = 1.0, 5.0
T1, T2 = "2024-01-02T00", "2024-01-03T00"


def _sweep(template: Path, forecast: xr.Dataset, where: Path) -> list[list[int]]:
    where.mkdir()
    forecast.to_netcdf(where / "forecast.nc")
    runs = where / "runs"
    runs.mkdir()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            SWEEP,
            str(template),
            str(where / "forecast.nc"),
            str(runs),
            CRASH_ENV,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    assert {(code, rerun) for _, code, rerun in runs} == {(-signal.SIGKILL, 0)}, (
        f"every kill is a SIGKILL and every rerun succeeds: {runs}\n{out.stderr[-3000:]}"
    )
    return runs


def _state(store: Path) -> dict[str, float] | None:
    """Init time → the forecast's first value at lead 1, of the committed store; None if
    there is no forecast store. Also checks that plain xarray opens it alike."""
    try:
        ds = open_forecasts(str(store)).load()
    except StoreError as exc:
        assert "no forecast store here" in str(exc)
        return None
    plain = xr.open_zarr(store).load()
    assert set(plain["init_time"].values[plain["init_time"].notnull().values]) == set(
        ds["init_time"].values
    )
    state = {}
    for init in ds["init_time"].values:
        one = ds.sel(init_time=init)
        values = one["t2m"].values
        assert np.all(values[0] == values[0, 0, 0]) and np.all(values[1] == values[0, 0, 0] + 1)
        np.testing.assert_array_equal(
            one["valid_time"].values, init + np.array([1, 3], "timedelta64[h]")
        )
        assert str(one["model_version"].values) == str(int(values[0, 0, 0])), "provenance of it"
        state[str(init.astype("datetime64[h]"))] = float(values[0, 0, 0])
    return state


def _template(where: Path, *forecasts: tuple[str, float]) -> Path:
    where.mkdir()
    for init, value in forecasts:
        write_forecast(
            forecast_dataset(init, value, version=str(int(value))), str(where / "f.zarr")
        )
    return where


@pytest.mark.slow
@pytest.mark.parametrize(
    ("before", "write", "after"),
    [
        ((), (T1, NEW), {T1: NEW}),  # a new store
        (((T1, OLD),), (T2, NEW), {T1: OLD, T2: NEW}),  # an append
        (((T1, OLD), (T2, 2.0)), (T1, NEW), {T1: NEW, T2: 2.0}),  # a rewrite
    ],
    ids=["create", "append", "rewrite"],
)
def test_kill_at_every_forecast_store_write_then_write_again(
    tmp_path: Path,
    before: tuple[tuple[str, float], ...],
    write: tuple[str, float],
    after: dict[str, float],
) -> None:
    template = _template(tmp_path / "template", *before)
    init, value = write
    forecast = forecast_dataset(init, value, version=str(int(value)))
    reference = _template(tmp_path / "reference", *before, write)
    assert _state(reference / "f.zarr") == after

    runs = _sweep(template, forecast, tmp_path / "sweep")

    assert len(runs) >= 10, f"only {len(runs)} write points"
    olds = [dict(before)] if before else [None, {}]  # no store, or one with no forecast yet
    seen = []
    for n, _, _ in runs:
        state = _state(tmp_path / "sweep" / "runs" / f"killed{n:03d}" / "f.zarr")
        assert state in [*olds, after], f"killed at write {n}: {state}, not {olds} or {after}"
        seen.append(state == after)
        rerun = tmp_path / "sweep" / "runs" / f"kill{n:03d}" / "f.zarr"
        assert _state(rerun) == after, f"rerun after a kill at write {n}"
        xr.testing.assert_identical(
            open_forecasts(str(rerun)), open_forecasts(str(reference / "f.zarr"))
        )
        assert xr.open_zarr(rerun).sizes["init_time"] == len(after), "no row left behind"
    assert not seen[0] and seen == sorted(seen), (
        f"one commit point: old before it, new after: {seen}"
    )


def test_a_store_an_older_stpipe_left_without_consolidated_metadata_is_read_and_repaired(
    tmp_path: Path,
) -> None:
    store = tmp_path / "f.zarr"
    write_forecast(forecast_dataset(T1, OLD, version="1"), str(store))
    # What a kill between the two root writes of the older commit left: the root attributes
    # rewritten without the consolidated metadata.
    zarr.open_group(store, mode="r+", use_consolidated=False).attrs.update({"written": "x"})
    assert "consolidated_metadata" not in json.loads((store / "zarr.json").read_text())

    assert _state(store) == {T1: OLD}
    write_forecast(forecast_dataset(T2, NEW, version="5"), str(store))
    assert _state(store) == {T1: OLD, T2: NEW}
    assert json.loads((store / "zarr.json").read_text())["consolidated_metadata"]["metadata"]

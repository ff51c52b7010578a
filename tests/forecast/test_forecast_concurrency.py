"""Concurrent writers of one forecast store: real processes writing different init times at
the same moment must both land; a writer waits for the lock, and gives up with a one-line
error after ``lock_timeout_s``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stpipe.core.errors import StoreError
from stpipe.forecast.access import write_lock
from stpipe.forecast.store import open_forecasts, write_forecast
from tests.forecast.test_forecast import forecast_dataset, ns

TRIALS = 6

# A writer process: imports once, then per trial waits at a barrier (the test creates
# go<trial> once every writer is ready) and writes its init time into that trial's store.
WRITER = """
import sys, time
from pathlib import Path
from stpipe.forecast.store import write_forecast
from tests.forecast.test_forecast import forecast_dataset

base, init, value, trials = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
forecast = forecast_dataset(init, value)
for trial in range(trials):
    (base / f"ready{trial}-{init}").touch()
    while not (base / f"go{trial}").exists():
        time.sleep(0.001)
    write_forecast(forecast, str(base / f"f{trial}.zarr"))
    (base / f"done{trial}-{init}").touch()
"""


def _wait_for(paths: list[Path], procs: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None and proc.returncode != 0:
                raise AssertionError(f"writer failed: {proc.stderr.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, f"writers never reached {paths}"
        time.sleep(0.01)


@pytest.mark.slow
def test_two_processes_writing_different_init_times_at_once_both_land(tmp_path: Path) -> None:
    inits = {"2024-01-03T00": 3.0, "2024-01-04T00": 4.0}
    for trial in range(0, TRIALS, 2):  # even trials append to a store, odd ones create it
        write_forecast(forecast_dataset("2024-01-02T00", 2.0), str(tmp_path / f"f{trial}.zarr"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), init, str(value), str(TRIALS)],
            stderr=subprocess.PIPE,
        )
        for init, value in inits.items()
    ]
    try:
        for trial in range(TRIALS):
            _wait_for([tmp_path / f"ready{trial}-{init}" for init in inits], procs)
            (tmp_path / f"go{trial}").touch()
            _wait_for([tmp_path / f"done{trial}-{init}" for init in inits], procs)
        for proc in procs:
            assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-3000:]
    finally:
        for proc in procs:
            proc.kill()

    for trial in range(TRIALS):
        ds = open_forecasts(str(tmp_path / f"f{trial}.zarr"))
        expected = {**({"2024-01-02T00": 2.0} if trial % 2 == 0 else {}), **inits}
        np.testing.assert_array_equal(
            ds["init_time"].values, ns(*expected), err_msg=f"trial {trial}: a forecast was lost"
        )
        np.testing.assert_array_equal(ds["t2m"].values[:, 0, 0, 0], list(expected.values()))


def test_a_writer_waits_for_the_lock_and_then_writes(tmp_path: Path) -> None:
    store = str(tmp_path / "f.zarr")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            write_forecast(forecast_dataset("2024-01-02T00", 1.0), store, lock_timeout_s=60)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    with write_lock(store, timeout_s=1):
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive(), "the writer waits while another holds the lock"
        assert not Path(store).exists(), "and writes nothing meanwhile"
    writer.join(timeout=60)
    assert not errors, errors
    np.testing.assert_array_equal(open_forecasts(store)["init_time"].values, ns("2024-01-02T00"))


def test_a_writer_gives_up_after_the_lock_timeout_with_one_line(tmp_path: Path) -> None:
    store = str(tmp_path / "f.zarr")
    write_forecast(forecast_dataset("2024-01-02T00", 1.0), store)
    with write_lock(store, timeout_s=1):
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            write_forecast(forecast_dataset("2024-01-03T00", 2.0), store, lock_timeout_s=0.5)
        waited = time.monotonic() - started
    message = str(info.value)
    assert message.startswith(f"{store}: another process (pid ")
    assert "kept writing this forecast store for 0.5 s ([forecast] lock_timeout_s)" in message
    assert "\n" not in message
    assert 0.5 <= waited < 5
    np.testing.assert_array_equal(open_forecasts(store)["init_time"].values, ns("2024-01-02T00"))

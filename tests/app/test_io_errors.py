"""I/O failures of `stpipe forecast` and `stpipe verify`: one line on stderr naming the path
and the cause, a non-zero exit, and nothing half-written: the forecast store keeps exactly
the forecasts it had, and a run once the cause is gone completes it.

The failures are real: a file-size limit (``RLIMIT_FSIZE``) on the writing process, a full
tmpfs and a read-only bind mount (both in a mount namespace of their own, as root), closed
loopback ports for ``s3://`` and ``http://`` stores. Stores that can be reached late are
refused before the forecast is computed.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from stpipe.app import jobs
from stpipe.app.cli import main
from stpipe.app.config import Config
from stpipe.forecast.store import open_forecasts
from tests.app.test_jobs import pipeline, register_baseline

pytestmark = pytest.mark.slow

T1, T2 = "2024-01-05T12:00", "2024-01-05T18:00"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A pipeline with a champion on a 160×192 grid: a forecast chunk (~88 kB) is larger
    than every file the job reads or writes before it (the logged model, ~61 kB)."""
    config = pipeline(tmp_path_factory.mktemp("io"), grid=(160, 192), variables=("t2m",))
    register_baseline(config)
    return config


def _store_args(config: Config, store: Path | str) -> list[str]:
    return [str(config.path), "--set", f'forecast.store="{store}"']


def _forecast_args(config: Config, store: Path | str, init: str = T2) -> list[str]:
    return ["forecast", *_store_args(config, store), "--init-time", init]


def _cli(
    args: list[str],
    *,
    before: str = "",
    after: str = "",
    preexec: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``stpipe -q ARGS`` in a new process; with shell scripts ``before``/``after`` it, in a
    mount namespace of its own (whose mounts vanish with it); its exit status is stpipe's."""
    command = [sys.executable, "-m", "stpipe", "-q", *args]
    if before or after:
        script = f"set -e\n{before}\nset +e\n{shlex.join(command)}\nrc=$?\n{after}\nexit $rc"
        command = ["unshare", "-m", "sh", "-c", script]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, preexec_fn=preexec, check=False
    )


def _one_error_line(stderr: str, verb: str = "forecast") -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith(f"stpipe {verb}: error: "), lines[0]
    return lines[0]


def _first_forecast(config: Config, store: Path) -> xr.Dataset:
    """The store holding the forecast of T1 (written by the CLI in this process); loaded."""
    assert main(_forecast_args(config, store, T1)) == 0
    return open_forecasts(str(store)).load()


def _assert_unchanged(store: Path, before: xr.Dataset) -> None:
    xr.testing.assert_identical(open_forecasts(str(store)).load(), before)
    assert not list(store.rglob("*.partial")), "no temporary file left"


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not _can_mount(), reason="needs a mount namespace (unshare -m, as root)"
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- while the forecast is written -------------------------------------------------------------


def test_a_file_size_limit_while_writing_fails_in_one_line_and_keeps_the_store(
    config: Config, tmp_path: Path
) -> None:
    store = tmp_path / "f.zarr"
    before = _first_forecast(config, store)
    artifacts = max(p.stat().st_size for p in (config.workdir / "mlartifacts").rglob("*.pt2"))
    chunk = max(p.stat().st_size for p in (store / "t2m" / "c").rglob("*") if p.is_file())
    assert chunk > artifacts + 8192, (chunk, artifacts)
    limit = (artifacts + chunk) // 2

    def file_size_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    failed = _cli(_forecast_args(config, store), preexec=file_size_limit)
    fresh = _cli(_forecast_args(config, tmp_path / "new.zarr"), preexec=file_size_limit)

    for result, path in ((failed, store), (fresh, tmp_path / "new.zarr")):
        assert result.returncode == 2, result.stderr
        line = _one_error_line(result.stderr)
        assert line.endswith(
            f"{path}: cannot write the forecast of 2024-01-05T18:00:00: File too large; "
            "the store keeps the forecasts it had"
        )
    _assert_unchanged(store, before)
    assert not (tmp_path / "new.zarr").exists(), "a store the failed write began is removed"
    assert main(_forecast_args(config, store)) == 0, "without the limit the write completes"
    np.testing.assert_array_equal(
        open_forecasts(str(store))["init_time"].values,
        np.array([T1, T2], dtype="datetime64[ns]"),
    )


@needs_mounts
def test_a_full_disk_while_writing_fails_in_one_line_and_keeps_the_store(
    config: Config, tmp_path: Path
) -> None:
    before = _first_forecast(config, tmp_path / "f.zarr")
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    store = disk / "f.zarr"
    # A 2 MB tmpfs with the store on it, filled up; the store is copied out afterwards.
    result = _cli(
        _forecast_args(config, store),
        before=f"mount -t tmpfs -o size=2m tmpfs {disk}\ncp -a {tmp_path / 'f.zarr'} {store}\n"
        f"dd if=/dev/zero of={disk / 'filler'} bs=4k 2>/dev/null || true",
        after=f"cp -a {store} {kept}",
    )

    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert line.endswith(
        f"{store}: cannot write the forecast of 2024-01-05T18:00:00: No space left on device; "
        "the store keeps the forecasts it had"
    )
    _assert_unchanged(kept, before)
    assert main(_forecast_args(config, kept)) == 0, "with space again the write completes"
    assert open_forecasts(str(kept)).sizes["init_time"] == 2


# --- before the forecast is computed ---------------------------------------------------------


@pytest.fixture
def never_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the job gets as far as computing a forecast."""

    def compute(*args, **kwargs):
        raise AssertionError("the forecast was computed before the store was checked")

    monkeypatch.setattr(jobs, "forecast_grid", compute)


def test_a_read_only_forecast_directory_is_refused_before_forecasting(
    config: Config, tmp_path: Path
) -> None:
    directory = tmp_path / "ro"
    store = directory / "f.zarr"
    before = _first_forecast(config, store)
    if os.geteuid() == 0:
        if not _can_mount():
            pytest.skip("root ignores permissions and no mount namespace is available")
        read_only = f"mount --bind {directory} {directory}\nmount -o remount,bind,ro {directory}"
        result, cause = _cli(_forecast_args(config, store), before=read_only), "Read-only"
    else:
        subprocess.run(["chmod", "-R", "a-w", str(directory)], check=True)
        try:
            result, cause = _cli(_forecast_args(config, store)), "Permission denied"
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(directory)], check=True)

    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert f"{store}: cannot write the forecast store: {cause}" in line
    assert str(directory) in line.rsplit(cause, 1)[1], "the path that could not be written"
    _assert_unchanged(store, before)


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_a_refused_store_endpoint_fails_before_forecasting(
    config: Config, kind: str, never_computed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    if kind == "s3":
        store = "s3://forecasts/f.zarr"
        options = f'forecast.storage_options={{endpoint_url="http://127.0.0.1:{port}", key="k", secret="s"}}'
        cause = f'Could not connect to the endpoint URL: "http://127.0.0.1:{port}/'
    else:
        store, options = f"http://127.0.0.1:{port}/f.zarr", "forecast.storage_options={}"
        cause = f"Cannot connect to host 127.0.0.1:{port}"

    for args, action in (
        (_forecast_args(config, store), "cannot write the forecast store"),
        (["verify", *_store_args(config, store)], "cannot read the forecast store"),
    ):
        assert main([*args, "--set", options]) == 2
        line = _one_error_line(capsys.readouterr().err, args[0])
        assert f"{store}: {action}: {cause}" in line


def test_a_bad_init_time_fails_in_one_line_before_anything(
    config: Config, tmp_path: Path, never_computed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "f.zarr"
    assert main(_forecast_args(config, store, "notatime")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.endswith("init time 'notatime' is not a date-time; give one like 2024-01-05T12:00")
    assert not store.exists()


@pytest.mark.parametrize(
    ("store", "problem"),
    [("memory://f.zarr", "lost when the process ends"), ("foo://x/f.zarr", "unknown protocol")],
)
def test_a_store_url_that_cannot_hold_forecasts_fails_at_config_load(
    config: Config, store: str, problem: str, never_computed: None, capsys
) -> None:
    assert main(_forecast_args(config, store)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{config.path}: [forecast] store: " in line and problem in line

"""Fixtures shared by the store and ingest tests: small NetCDF feeds and configs in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from stpipe.app.config import Config, load_config
from stpipe.testing import make_dataset

VARIABLES = ("t2m", "u10")


@pytest.fixture
def source_data() -> xr.Dataset:
    """Three days of hourly 16×20 data (72 steps, float32, every value distinct)."""
    return make_dataset(nt=72, ny=16, nx=20, variables=VARIABLES, seed=1)


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    path = tmp_path / "feed"
    path.mkdir()
    return path


@pytest.fixture
def write_feed(feed: Path) -> Callable[..., list[Path]]:
    """``write_feed(ds, steps_per_file=24)``: NetCDF files of consecutive slices of ``ds``
    in ``feed``, named by their first time so that name order is time order."""

    def write(ds: xr.Dataset, *, steps_per_file: int = 24, suffix: str = "") -> list[Path]:
        files = []
        for start in range(0, ds.sizes["time"], steps_per_file):
            part = ds.isel(time=slice(start, start + steps_per_file))
            first = pd.Timestamp(part["time"].values[0])
            path = feed / f"day_{first:%Y%m%d%H}{suffix}.nc"
            part.to_netcdf(path)
            files.append(path)
        return files

    return write


def toml_text(raw: dict[str, dict[str, Any]]) -> str:
    """A config dict as TOML (tables of strings, numbers, booleans and lists of them)."""
    lines = []
    for section, keys in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """``make_config(**sections)``: a netcdf pipeline over ``feed/*.nc`` written to
    ``tmp_path/pipe.toml`` and loaded; keyword sections are merged over the defaults."""

    def make(**sections: dict[str, Any]) -> Config:
        raw: dict[str, dict[str, Any]] = {
            "pipeline": {"name": "test", "workdir": "work"},
            "source": {"kind": "netcdf", "paths": "feed/*.nc", "variables": list(VARIABLES)},
            "patches": {"input_steps": 6, "leads": [1, 3], "size": [8, 8]},
            "split": {"val_start": "2030-01-01", "test_start": "2030-01-02"},
        }
        for name, keys in sections.items():
            raw[name] = raw.get(name, {}) | keys
        path = tmp_path / "pipe.toml"
        path.write_text(toml_text(raw))
        return load_config(path)

    return make


def _snapshot(store_path: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(store_path)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(store_path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, tuple[int, bytes]]]:
    """``snapshot(store_path)``: every file under it, relative path → (mtime_ns, bytes)."""
    return _snapshot


def _assert_same_values(actual: xr.Dataset, expected: xr.Dataset) -> None:
    assert list(actual.data_vars) == list(expected.data_vars)
    for name in ("time", *expected[next(iter(expected.data_vars))].dims[1:]):
        np.testing.assert_array_equal(actual[name].values, expected[name].values, err_msg=name)
    for name in expected.data_vars:
        assert actual[name].dtype == np.float32, name
        np.testing.assert_array_equal(actual[name].values, expected[name].values, err_msg=name)


@pytest.fixture
def assert_same_values() -> Callable[[xr.Dataset, xr.Dataset], None]:
    """``assert_same_values(actual, expected)``: coords and float32 data exactly equal."""
    return _assert_same_values

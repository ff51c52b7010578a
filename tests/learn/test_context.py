"""What a job derives from the store (stpipe.learn.context): the splits resolved against the
store, train-split statistics and climatology fitted once (cached beside the store), and the
check that every split holds a sample before a job trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stpipe.app.config import Config
from stpipe.core.errors import StoreError
from stpipe.core.settings import SplitSection
from stpipe.core.splits import Splits
from stpipe.io.store import open_store, store_digest
from stpipe.learn.context import DataContext, check_split_windows, load_data_context
from tests.app.test_jobs import pipeline

NS = "datetime64[ns]"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """6 days of hourly t2m, u10 on 20×24 cells from 2024-01-01; val from 01-04, test 01-05."""
    return pipeline(tmp_path_factory.mktemp("context"))


def context(config: Config, splits: Splits | SplitSection | None = None) -> DataContext:
    return load_data_context(
        config.store_path,
        spec=config.patch_spec(),
        splits=config.split if splits is None else splits,
        climatology_period=config.model.climatology_period,
    )


def files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_statistics_and_climatology_are_those_of_the_train_split(config: Config) -> None:
    data = context(config)
    ds = open_store(config.store_path).load()
    train = ds.isel(time=slice(0, 72))  # 2024-01-01 … 01-03, before val_start

    assert data.splits == Splits(
        val_start=np.datetime64("2024-01-04", "ns"), test_start=np.datetime64("2024-01-05", "ns")
    )
    assert data.step_s == 3600
    assert data.store_digest == store_digest(config.store_path)
    for i, name in enumerate(("t2m", "u10")):
        values = train[name].values.astype(np.float64)
        assert data.norm_mean[i] == pytest.approx(values.mean(), rel=1e-7)
        assert data.norm_std[i] == pytest.approx(values.std(), rel=1e-6)
    assert data.train_part()["time"].values.tolist() == train["time"].values.tolist()

    clim = data.climatology
    assert clim.variables == ("t2m",)
    assert clim.description == "hour of day"
    t2m = train["t2m"].values.astype(np.float64)
    for hour in (0, 7, 23):  # the slot mean: that hour of the 3 train days
        np.testing.assert_allclose(clim.table[hour, 0], t2m[hour::24].mean(axis=0), rtol=1e-6)


def test_rolling_windows_are_resolved_against_the_stored_times(config: Config) -> None:
    data = context(config, SplitSection(val_days=1, test_days=2))
    assert (data.splits.val_start, data.splits.test_start, data.splits.test_end) == (
        np.datetime64("2024-01-04", "ns"),
        np.datetime64("2024-01-05", "ns"),
        np.datetime64("2024-01-07", "ns"),
    )
    values = open_store(config.store_path)["t2m"].values[:72].astype(np.float64)
    assert data.norm_mean[0] == pytest.approx(values.mean(), rel=1e-7)


def test_the_statistics_are_fitted_once_and_read_back_after(config: Config) -> None:
    first = context(config)
    cached = files(config.workdir / "stats")
    again = context(config)
    assert files(config.workdir / "stats") == cached, "nothing computed or written again"
    assert (again.norm_mean, again.norm_std) == (first.norm_mean, first.norm_std)
    np.testing.assert_array_equal(again.climatology.table, first.climatology.table)


def test_every_window_holding_a_sample_passes_the_check(config: Config) -> None:
    assert check_split_windows(context(config)) is None


def test_the_check_names_the_first_empty_window_with_its_dates(config: Config) -> None:
    splits = Splits(
        val_start=np.datetime64("2024-01-04", "ns"),
        test_start=np.datetime64("2024-01-05", "ns"),
        test_end=np.datetime64("2024-01-05T06:00", "ns"),
    )
    data = context(config, splits)
    check_split_windows(data, ("train", "val"))
    with pytest.raises(StoreError) as info:
        check_split_windows(data)
    assert str(info.value) == (
        f"{config.store_path}: the test window [2024-01-05T00:00:00, 2024-01-05T06:00:00) "
        "holds no complete sample: one needs 7 regular steps without NaN (input_steps 4 + max "
        "lead 3) on one of 3×3 patch positions, and the window holds 6 steps "
        "(2024-01-05T00:00:00 … 2024-01-05T05:00:00) in 1 gap-free run(s); move the [split] "
        "dates or ingest more data"
    )

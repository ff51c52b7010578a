"""Normalisation statistics: numpy's values on the train split, cached, and on a cluster."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stpipe.core.errors import StoreError
from stpipe.core.splits import Splits
from stpipe.io.settings import DaskSection
from stpipe.io.store import open_store
from stpipe.learn.stats import NormStats, compute_stats, nan_steps
from stpipe.testing import make_dataset
from tests.learn.test_loader import ingest_dataset


def config_stats(config) -> NormStats:
    """The statistics a job computes for ``config`` (its inputs, train split and cluster)."""
    return compute_stats(
        config.store_path,
        variables=config.input_variables,
        split=Splits.from_settings(config.split),
        dask=config.dask,
    )


VARIABLES = ("t2m", "u10")


@pytest.fixture
def store(tmp_path):
    """96 hourly steps (a gap after 30), NaN in the train split and after it."""
    ds = make_dataset(nt=96, ny=12, nx=10, variables=VARIABLES, gap_after=30)
    ds["t2m"][5, 2, 3] = np.nan
    ds["u10"][70, 0, 0] = np.nan
    return ingest_dataset(tmp_path / "w", ds), ds


def numpy_stats(values: np.ndarray) -> dict[str, float]:
    v = values.astype(np.float64)
    return {
        "mean": np.nanmean(v),
        "std": np.nanstd(v),
        "min": np.nanmin(v),
        "max": np.nanmax(v),
        "count": int(np.isfinite(v).sum()),
        "nan_count": int(np.isnan(v).sum()),
    }


def test_stats_equal_numpy_over_the_train_split_only(store) -> None:
    config, _ = store
    stats = config_stats(config)
    ds = open_store(config.store_path).load()
    train = ds.sel(time=slice(None, np.datetime64(config.split.val_start) - np.timedelta64(1, "s")))
    assert stats.n_steps == train.sizes["time"] == 49
    assert stats.time_range == (str(train.time.values[0]), str(train.time.values[-1]))
    for v in VARIABLES:
        expected = numpy_stats(train[v].values)
        assert stats.mean[v] == pytest.approx(expected["mean"], rel=1e-12, abs=1e-12)
        assert stats.std[v] == pytest.approx(expected["std"], rel=1e-12)
        assert (stats.minimum[v], stats.maximum[v]) == (expected["min"], expected["max"])
        assert (stats.count[v], stats.nan_count[v]) == (expected["count"], expected["nan_count"])
    assert stats.nan_count == {"t2m": 1, "u10": 0}, "the NaN at step 70 is not in train"
    mean, std = stats.arrays(["u10", "t2m"])
    assert mean.dtype == np.float32 and mean.tolist() == pytest.approx(
        [stats.mean["u10"], stats.mean["t2m"]]
    )
    assert std.tolist() == pytest.approx([stats.std["u10"], stats.std["t2m"]])


def test_stats_are_cached_and_recomputed_when_the_store_grows(store) -> None:
    config, ds = store
    cache = config.workdir / "stats"
    first = config_stats(config)
    (path,) = cache.glob("norm-*.json")
    raw = json.loads(path.read_text())
    raw["mean"]["t2m"] = 1234.5
    path.write_text(json.dumps(raw))
    assert config_stats(config).mean["t2m"] == 1234.5, "the cached file is reused"

    more = make_dataset(nt=24, ny=12, nx=10, variables=VARIABLES, start="2024-01-06", seed=9)
    more = more.assign_coords(lat=ds.lat, lon=ds.lon)
    ingest_dataset(config.workdir, more)
    grown = config_stats(config)
    assert len(list(cache.glob("norm-*.json"))) == 2, "a new digest, a new cache entry"
    assert grown.mean["t2m"] == pytest.approx(first.mean["t2m"], rel=1e-12)
    assert grown.store_digest != first.store_digest


def test_nan_steps_flags_every_step_holding_a_nan(store) -> None:
    config, _ = store
    flags = nan_steps(config.store_path, variables=VARIABLES)
    assert np.flatnonzero(flags).tolist() == [5, 70]
    assert np.flatnonzero(nan_steps(config.store_path, variables=["u10"])).tolist() == [70]


def test_norm_stats_round_trip_through_json(store) -> None:
    config, _ = store
    stats = config_stats(config)
    assert NormStats.from_json(stats.to_json()) == stats
    constant = NormStats.from_json(
        stats.to_json().replace(f'"t2m": {stats.std["t2m"]}', '"t2m": 0.0')
    )
    assert constant.std["t2m"] == 0.0 and constant.arrays(["t2m"])[1].tolist() == [1.0]


@pytest.mark.integration
def test_a_dask_cluster_computes_the_same_stats(store) -> None:
    from distributed import LocalCluster

    config, _ = store
    local = compute_stats(
        config.store_path,
        variables=VARIABLES,
        split=config.split,
        cache_dir=config.workdir / "local",
    )
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        remote = compute_stats(
            config.store_path,
            variables=VARIABLES,
            split=Splits.from_settings(config.split),
            cache_dir=config.workdir / "remote",
            dask=DaskSection(address=cluster.scheduler_address),
        )
    assert remote == local


def test_missing_variables_and_empty_train_split_are_named(store) -> None:
    config, _ = store
    with pytest.raises(StoreError, match=r"variables \['msl'\] are not in the store"):
        compute_stats(config.store_path, variables=["msl"], split=config.split)
    early = Splits(
        val_start=np.datetime64("2023-12-01", "ns"), test_start=np.datetime64("2024-01-04", "ns")
    )
    with pytest.raises(StoreError, match=r"the train split .* holds no time step"):
        compute_stats(config.store_path, variables=VARIABLES, split=early)

"""The chunk-aware loader: patches equal numpy slicing of the source, every window once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from stpipe.app.config import Config, config_from_dict
from stpipe.app.jobs import data_context
from stpipe.core.errors import ConfigError, StoreError
from stpipe.core.patches import PatchSpec
from stpipe.core.splits import Splits
from stpipe.io.ingestion import ingest
from stpipe.io.store import open_store
from stpipe.learn.loader import Piece, ReaderOptions, make_loader, plan_batches
from stpipe.testing import make_dataset

SPLIT = {"val_start": "2024-01-03T06:00", "test_start": "2024-01-04"}


def ingest_dataset(
    workdir: Path, ds: xr.Dataset, *, time_chunk: int = 8, spatial_chunk=(8, 8)
) -> Config:
    """Ingest ``ds`` through the real store (one NetCDF file per day); the config."""
    feed = workdir / "feed"
    feed.mkdir(parents=True, exist_ok=True)
    for day, part in ds.groupby(ds.time.dt.floor("D")):
        part.to_netcdf(feed / f"{np.datetime_as_string(day, 'D')}.nc")
    config = config_from_dict(
        {
            "pipeline": {"name": "t", "workdir": str(workdir)},
            "source": {
                "kind": "netcdf",
                "paths": str(feed / "*.nc"),
                "variables": list(ds.data_vars),
            },
            "store": {"time_chunk": time_chunk, "spatial_chunk": list(spatial_chunk)},
            "patches": {"input_steps": 3, "leads": [1, 2], "size": [8, 8]},
            "split": SPLIT,
        }
    )
    report = ingest(config.ingest_job, progress=False)
    assert not report.refused, report.summary()
    return config


@pytest.fixture(scope="module")
def weather(tmp_path_factory) -> tuple[Config, xr.Dataset]:
    """3 variables, 14×18 cells, 84 hourly steps with a 5-step gap and two NaN values."""
    ds = make_dataset(nt=84, ny=14, nx=18, variables=("t2m", "u10", "v10"), gap_after=30)
    ds["u10"][40, 3, 4] = np.nan
    ds["t2m"][12, 0, 17] = np.nan
    config = ingest_dataset(tmp_path_factory.mktemp("weather"), ds)
    return config, open_store(config.store_path).load()


@pytest.fixture(scope="module")
def global_grid(tmp_path_factory) -> tuple[Config, xr.Dataset]:
    """Longitudes going once round the globe (20 cells of 18°), for edge = 'wrap'.

    The store turns them to -180..180 (its convention), so the reference is the store.
    """
    ds = make_dataset(nt=40, ny=12, nx=20, variables=("t2m", "u10", "v10"), seed=3)
    ds = ds.assign_coords(lon=("lon", np.arange(20) * 18.0, ds.lon.attrs))
    config = ingest_dataset(tmp_path_factory.mktemp("global"), ds, time_chunk=6)
    return config, open_store(config.store_path).load()


def patch_spec(**changes) -> PatchSpec:
    base = dict(
        input_steps=3,
        leads=(1, 4),
        size=(8, 6),
        stride=(5, 5),
        halo=2,
        edge="pad",
        input_variables=("t2m", "u10", "v10"),
        target_variables=("v10", "t2m"),
        static_features=("lon", "mask", "lat"),
        nan_policy="mask",
    )
    return PatchSpec(**(base | changes))


def reference(ds: xr.Dataset, spec: PatchSpec):
    """Patches by direct numpy slicing of the (loaded) store, padded with np.pad: a function
    of (t0, row0, col0)."""
    data = np.stack([ds[v].values for v in spec.input_variables])  # V, T, ny, nx
    _, _, ny, nx = data.shape
    p = 40
    for axis, mode in (
        (2, "reflect" if spec.edge == "reflect" else "constant"),
        (3, {"reflect": "reflect", "wrap": "wrap"}.get(spec.edge, "constant")),
    ):
        widths = [(0, 0)] * 4
        widths[axis] = (p, p)
        data = np.pad(
            data, widths, mode=mode, **({"constant_values": np.nan} if mode == "constant" else {})
        )
    (h, w), halo, offsets = spec.shape, spec.halo, spec.target_offsets
    core_r, core_c = np.zeros(h, bool), np.zeros(w, bool)
    core_r[halo : h - halo], core_c[halo : w - halo] = True, True
    times = ds.time.values.astype("datetime64[ns]")

    def patch(t0: int, row0: int, col0: int) -> dict[str, np.ndarray]:
        win = data[:, t0 : t0 + spec.span, row0 + p : row0 + p + h, col0 + p : col0 + p + w]
        y = win[spec.target_index][:, offsets].transpose(1, 0, 2, 3)
        rows, cols = row0 + np.arange(h), col0 + np.arange(w)
        row_in = (rows >= 0) & (rows < ny)
        col_in = np.ones(w, bool) if spec.edge == "wrap" else (cols >= 0) & (cols < nx)
        target = (row_in & core_r)[:, None] & (col_in & core_c)[None, :]
        lat = ds.lat.values[np.clip(rows, 0, ny - 1)] / 90
        lon = ds.lon.values[cols % nx if spec.edge == "wrap" else np.clip(cols, 0, nx - 1)]
        lon = ((lon + 180) % 360 - 180) / 180
        return {
            "x": win[:, : spec.input_steps].transpose(1, 0, 2, 3),
            "y": y,
            "mask": (np.isfinite(y) & target).astype(np.float32),
            "static": np.stack(
                [
                    np.broadcast_to(lon[None, :], (h, w)),
                    row_in[:, None] & col_in[None, :],
                    np.broadcast_to(lat[:, None], (h, w)),
                ]
            ).astype(np.float32),
            "x_times": times[t0 : t0 + spec.input_steps].astype(np.int64),
            "y_times": times[t0 + offsets].astype(np.int64),
        }

    return patch


def windows(batches: list[dict], *, weight: float | None = 1.0) -> list[tuple[int, int, int]]:
    out = []
    for b in batches:
        keep = np.ones(len(b["t0"]), bool) if weight is None else b["weight"].numpy() == weight
        out += list(
            zip(
                b["t0"][keep].tolist(),
                b["row0"][keep].tolist(),
                b["col0"][keep].tolist(),
                strict=True,
            )
        )
    return out


def all_windows(loader) -> list[tuple[int, int, int]]:
    t0, row0, col0 = loader.index.locate(np.arange(len(loader.index)))
    return sorted(zip(t0.tolist(), row0.tolist(), col0.tolist(), strict=True))


@pytest.mark.parametrize(
    ("edge", "block_mb", "leads", "cache_mb"),
    [
        ("pad", 64.0, (1, 4), 256.0),
        ("reflect", 0.004, (1, 2, 3), 0.0),
        ("drop", 0.004, (2,), 256.0),
        ("wrap", 64.0, (1, 4), 0.0),
    ],
)
def test_patches_equal_numpy_slicing_of_the_source(
    weather, global_grid, edge, block_mb, leads, cache_mb
) -> None:
    config, ds = global_grid if edge == "wrap" else weather
    spec = patch_spec(edge=edge, leads=leads)
    loader = make_loader(
        spec,
        config.store_path,
        split="all",
        batch_size=7,
        shuffle=True,
        seed=5,
        options=ReaderOptions(block_mb=block_mb, cache_mb=cache_mb),
    )
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    assert sorted(windows(batches)) == all_windows(loader), "every window, once"
    features = {"x_time": "x_times", "y_time": "y_times"}
    patch = reference(ds, spec)
    checked = 0
    for b in batches:
        for i in range(len(b["t0"])):
            expected = patch(*(int(b[k][i]) for k in ("t0", "row0", "col0")))
            for key, value in expected.items():
                np.testing.assert_array_equal(b[key][i].numpy(), value, err_msg=key)
            for key, times in features.items():
                phase = (b[times][i].numpy() % 86_400_000_000_000) / 86_400e9
                np.testing.assert_allclose(
                    b[key][i, :, 0].numpy(), np.sin(2 * np.pi * phase), atol=1e-6
                )
            checked += 1
    assert checked == len(loader.index)


def test_batch_contract_shapes_and_dtypes(weather) -> None:
    config, _ = weather
    loader = make_loader(
        patch_spec(time_features=False, static_features=()),
        config.store_path,
        split="all",
        batch_size=4,
    )
    b = next(iter(loader))
    shapes = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in b.items()}
    assert shapes == {
        "x": ((4, 3, 3, 12, 10), "float32"),
        "y": ((4, 2, 2, 12, 10), "float32"),
        "mask": ((4, 2, 2, 12, 10), "float32"),
        "x_time": ((4, 3, 0), "float32"),
        "y_time": ((4, 2, 0), "float32"),
        "x_times": ((4, 3), "int64"),
        "y_times": ((4, 2), "int64"),
        "static": ((4, 0, 12, 10), "float32"),
        "t0": ((4,), "int64"),
        "row0": ((4,), "int64"),
        "col0": ((4,), "int64"),
        "weight": ((4,), "float32"),
    }


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_windows_stay_inside_their_split_and_skip_gaps_and_nan_steps(weather, split) -> None:
    config, ds = weather
    spec = patch_spec(nan_policy="skip", size=(8, 8), stride=(8, 8), halo=0)
    loader = make_loader(
        spec,
        config.store_path,
        split=split,
        batch_size=16,
        splits=Splits.from_settings(config.split),
        drop_last=False,
    )
    delivered = sorted(windows(list(loader)))
    assert delivered == all_windows(loader)
    times = ds.time.values
    start, stop = Splits.from_settings(config.split).time_range(split)
    nan_steps = {12, 40}
    for t0 in {t for t, _, _ in delivered}:
        steps = times[t0 : t0 + spec.span]
        assert np.all(np.diff(steps) == np.timedelta64(1, "h")), f"window {t0} crosses a gap"
        assert start is None or steps[0] >= start
        assert stop is None or steps[-1] < stop
        assert not nan_steps & set(range(t0, t0 + spec.span)), f"window {t0} holds a NaN step"


def test_mask_policy_keeps_nan_windows_and_masks_the_missing_targets(weather) -> None:
    config, _ = weather
    spec = patch_spec(
        nan_policy="mask", size=(8, 8), stride=(8, 8), halo=0, target_variables=("u10",), leads=(1,)
    )
    loader = make_loader(spec, config.store_path, split="all", batch_size=64)
    missing = []
    for b in loader:
        inside = b["static"][:, 1:2].bool().numpy()  # the "mask" static channel
        nan_y = np.isnan(b["y"].numpy())
        assert (b["mask"].numpy()[nan_y] == 0).all(), "no NaN target counts"
        assert (b["mask"].numpy()[~nan_y & inside[:, None]] == 1).all()
        for i, lead, _, r, c in np.argwhere(nan_y & inside[:, None]):
            missing.append(
                (int(b["y_times"][i, lead]), int(b["row0"][i]) + r, int(b["col0"][i]) + c)
            )
    times = open_store(config.store_path)["time"].values.astype(np.int64)
    assert missing == [(times[40], 3, 4)], "u10[40, 3, 4] is the one missing target"


def test_two_ranks_get_equal_batches_and_every_window_once(weather) -> None:
    config, _ = weather
    spec = patch_spec(size=(8, 8), stride=(5, 5))
    per_rank = [
        make_loader(
            spec,
            config.store_path,
            split="train",
            batch_size=5,
            shuffle=True,
            seed=2,
            rank=rank,
            world_size=2,
            drop_last=False,
            splits=Splits.from_settings(config.split),
        )
        for rank in (0, 1)
    ]
    batches = [list(loader) for loader in per_rank]
    assert len(per_rank[0]) == len(per_rank[1]) == len(batches[0]) == len(batches[1])
    real = windows(batches[0]) + windows(batches[1])
    assert sorted(real) == all_windows(per_rank[0]), "every window exactly once"
    assert len(per_rank[0].index) % 2 == 1, "the test needs an odd count to pad"
    padding = [b for bs in batches for b in bs if (b["weight"] == 0).any()]
    assert sum(int((b["weight"] == 0).sum()) for b in padding) == 1
    for b in padding:
        assert (b["mask"][b["weight"] == 0] == 0).all(), "padding repeats are masked out"


@pytest.mark.slow
def test_two_dataloader_workers_deliver_every_window_once_per_epoch(weather) -> None:
    config, _ = weather
    loader = make_loader(
        patch_spec(),
        config.store_path,
        split="all",
        batch_size=6,
        shuffle=True,
        num_workers=2,
        drop_last=False,
    )
    first = list(loader)
    loader.set_epoch(1)
    second = list(loader)
    assert len(first) == len(second) == len(loader)
    assert sorted(windows(first)) == sorted(windows(second)) == all_windows(loader)
    assert windows(first) != windows(second), "workers see the new epoch"


def test_same_seed_same_order_and_each_epoch_its_own(weather) -> None:
    config, _ = weather

    def order(seed: int, epoch: int) -> list:
        loader = make_loader(
            patch_spec(),
            config.store_path,
            split="all",
            batch_size=8,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        loader.set_epoch(epoch)
        return windows(list(loader))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and sorted(order(1, 0)) == sorted(order(1, 1))
    assert order(1, 0) != order(2, 0)


def test_drop_last_and_max_batches_bound_an_epoch(weather) -> None:
    config, _ = weather
    n = len(make_loader(patch_spec(), config.store_path, split="all", batch_size=1).index)
    dropped = make_loader(
        patch_spec(), config.store_path, split="all", batch_size=10, drop_last=True
    )
    assert len(dropped) == n // 10 == len(list(dropped))
    capped = make_loader(patch_spec(), config.store_path, split="all", batch_size=10, max_batches=3)
    assert len(capped) == 3 == len(list(capped))


def test_each_chunk_is_read_once_but_the_window_overlap(tmp_path) -> None:
    ds = make_dataset(nt=64, ny=16, nx=16, variables=("t2m", "u10"))
    config = ingest_dataset(tmp_path, ds, time_chunk=8, spatial_chunk=(8, 8))
    spec = PatchSpec(
        input_steps=4,
        leads=(1, 2),
        size=(8, 8),
        edge="drop",
        input_variables=("t2m", "u10"),
        nan_policy="mask",
    )
    loader = make_loader(
        spec,
        config.store_path,
        split="all",
        batch_size=16,
        shuffle=True,
        options=ReaderOptions(cache_mb=0),
    )
    delivered = sum(len(b["t0"]) for b in loader)
    # Blocks of 4 time chunks (4 × the 1-chunk overlap of a 6-step window): t0 in [0, 32)
    # reads steps [0, 40), t0 in [32, 59) reads [32, 64): 72 steps of 2 × 16 × 16 float32.
    assert loader.counters.bytes_read == 72 * 2 * 16 * 16 * 4
    assert loader.counters.blocks_read == 2
    assert delivered == loader.counters.patches == 59 * 4
    assert loader.counters.read_amplification == pytest.approx(72 * 512 / (59 * 4 * 6 * 2 * 64))


@pytest.mark.parametrize(("cache_mb", "reads"), [(256.0, 1), (0.0, 2)])
def test_a_small_index_is_read_once_and_later_epochs_come_from_memory(
    weather, cache_mb: float, reads: int
) -> None:
    config, _ = weather
    loader = make_loader(
        patch_spec(),
        config.store_path,
        split="all",
        batch_size=8,
        shuffle=True,
        seed=3,
        options=ReaderOptions(block_mb=0.004, cache_mb=cache_mb),
    )
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        epochs.append(list(loader))
    first_epoch_blocks = len(loader.dataset.layout.counts)
    assert loader.counters.blocks_read == reads * first_epoch_blocks > reads
    assert sorted(windows(epochs[0])) == sorted(windows(epochs[1])) == all_windows(loader)
    assert windows(epochs[0]) != windows(epochs[1]), "each epoch its own order"
    first = {
        w: x for b in epochs[0] for w, x in zip(windows([b], weight=None), b["x"], strict=True)
    }
    for b in epochs[1]:
        for w, x in zip(windows([b], weight=None), b["x"], strict=True):
            torch.testing.assert_close(x, first[w], equal_nan=True, rtol=0, atol=0)


def test_leaving_an_epoch_early_stops_the_threads(weather) -> None:
    config, _ = weather
    loader = make_loader(patch_spec(), config.store_path, split="all", batch_size=2)
    stream = iter(loader)
    next(stream)
    stream.close()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("stpipe-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "reader threads still running"
        time.sleep(0.05)


def test_loader_of_a_job_uses_its_patches_and_splits(weather) -> None:
    config, _ = weather
    data = data_context(config)
    loader = make_loader(data.spec, data.store_path, split="val", batch_size=4, splits=data.splits)
    assert loader.spec == config.patch_spec()
    assert not loader.dataset.shuffle and not loader.dataset.drop_last
    train = make_loader(data.spec, data.store_path, split="train", batch_size=4, splits=data.splits)
    assert train.dataset.shuffle


def test_shuffle_buffer_mixes_active_blocks_and_keeps_every_patch() -> None:
    pieces = [Piece(block=b, lo=0, hi=10, weight=1.0) for b in range(4)]
    plan = list(plan_batches(pieces, batch_size=6, active=2, rng=np.random.default_rng(0)))
    refs = np.concatenate([r for r, _, _ in plan])
    assert sorted(map(tuple, refs.tolist())) == [(s, i) for s in range(4) for i in range(10)]
    assert len(set(plan[0][0][:, 0].tolist())) == 2, "the first batch mixes two blocks"
    started = [s for _, st, _ in plan for s in st]
    finished = [s for _, _, fin in plan for s in fin]
    assert sorted(started) == sorted(finished) == [0, 1, 2, 3]


def test_bad_requests_name_what_is_wrong(weather) -> None:
    config, _ = weather
    with pytest.raises(StoreError, match=r"variables \['msl'\] are not in the store"):
        make_loader(
            patch_spec(input_variables=("msl",), target_variables=()),
            config.store_path,
            split="all",
            batch_size=4,
        )
    with pytest.raises(ConfigError, match="split 'train' needs the \\[split\\] dates"):
        make_loader(patch_spec(), config.store_path, split="train", batch_size=4)
    with pytest.raises(StoreError, match="split 'test' has no valid window"):
        make_loader(
            patch_spec(leads=(1, 30)),
            config.store_path,
            split="test",
            batch_size=4,
            splits=Splits.from_settings(config.split),
        )
    with pytest.raises(ConfigError, match=r"0 <= rank < world_size, got .* rank=2"):
        make_loader(
            patch_spec(), config.store_path, split="all", batch_size=4, rank=2, world_size=2
        )

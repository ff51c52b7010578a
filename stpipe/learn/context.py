"""What training and evaluation derive from a store, built the same way for both.

:func:`load_data_context` opens the store and gathers the patch spec, the time step, the
train-split normalisation statistics (cached by :mod:`stpipe.learn.stats`) and the train-split
climatology; :func:`build_forecaster` turns ``[model]`` (or a baseline's name) into a
forecaster for that data; :func:`check_split_windows` refuses splits without a sample
before a job spends time on the others; :func:`make_split_loader` gives the loader of one
split; and
:func:`iterate_on_device` moves batches to the device while timing the wait for each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from stpipe.core.errors import ConfigError, StoreError
from stpipe.core.grid import is_latlon, spatial_dims
from stpipe.core.patches import PatchSpec, is_global_lon
from stpipe.core.settings import SplitSection
from stpipe.core.splits import SplitName, Splits
from stpipe.io.settings import DaskSection
from stpipe.io.store import open_store, store_digest
from stpipe.learn.loader import PatchLoader, make_loader, split_windows
from stpipe.learn.stats import NormStats, compute_stats
from stpipe.models import Climatology, Forecaster, build_model, model_settings
from stpipe.models import climatology_period as resolve_climatology_period
from stpipe.models.settings import BASELINES, ModelSection

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        env = os.environ
        return cls(
            rank=int(env.get("RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(setting: str, dist: Distributed | None = None) -> torch.device:
    """``[train] device``: 'auto' is CUDA when present (this rank's GPU), else the CPU."""
    local_rank = dist.local_rank if dist is not None else 0
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[train] device = 'cuda' but torch sees no CUDA device")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@dataclass(frozen=True, eq=False)
class DataContext:
    """The store as the models see it.

    ``norm_mean``/``norm_std`` are per input variable (train split, physical units);
    ``climatology`` is fitted on the train split's steps (its ``description`` says which
    slots; the evaluation carries it); ``ds`` is the lazy store;
    ``dask`` is the cluster that scans it (None: a local one).
    """

    store_path: Path
    store_digest: str
    ds: xr.Dataset
    spec: PatchSpec
    splits: Splits
    step_s: int
    norm: NormStats
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    climatology: Climatology
    dask: DaskSection | None = None

    @property
    def n_static(self) -> int:
        return len(self.spec.static_features)

    @property
    def latlon(self) -> bool:
        return is_latlon(self.ds)

    def train_part(self) -> xr.Dataset:
        """The store's steps in the train split (lazy)."""
        a, b = self.splits.index_range("train", self.ds["time"].values)
        return self.ds.isel(time=slice(a, b))


def load_data_context(
    store_path: Path,
    *,
    spec: PatchSpec,
    splits: Splits | SplitSection,
    climatology_period: str = "auto",
    dask: DaskSection | None = None,
) -> DataContext:
    """Open the store and derive what the models need (see the module doc), once per job.

    ``splits``: fixed splits, or ``[split]`` (rolling windows are resolved against the
    store's times here); ``climatology_period`` is ``[model] climatology_period`` ('auto'
    resolved on the train split: day of year once it spans a year); ``dask``
    the cluster that computes the statistics (cached beside the store).
    """
    ds = open_store(store_path)
    if not isinstance(splits, Splits):
        splits = Splits.from_settings(splits, times=ds["time"].values)
    step_s = int(ds.attrs["time_step_s"])
    norm = compute_stats(store_path, variables=spec.input_variables, split=splits, dask=dask)
    mean, std = norm.arrays(spec.input_variables)
    a, b = splits.index_range("train", ds["time"].values)
    train = ds.isel(time=slice(a, b))
    climatology = Climatology.fit(
        train,
        variables=spec.target_variables,
        period=resolve_climatology_period(climatology_period, train, step_s=step_s),
        step_s=step_s,
    )
    return DataContext(
        store_path=store_path,
        store_digest=store_digest(store_path),
        ds=ds,
        spec=spec,
        splits=splits,
        step_s=step_s,
        norm=norm,
        norm_mean=tuple(float(v) for v in mean),
        norm_std=tuple(float(v) for v in std),
        climatology=climatology,
        dask=dask,
    )


def check_split_windows(
    data: DataContext, splits: Sequence[SplitName] = ("train", "val", "test")
) -> None:
    """StoreError naming the first of ``splits`` that holds no complete sample window.

    A window is ``input_steps`` + the largest lead regular steps inside the split (with
    ``nan_policy = "skip"``: none holding a NaN), as the loaders cut them; a job checks
    every split it will read before it trains, so an empty test window fails at once and
    not after hours of training. The message names the split, its dates, the steps it
    holds and what a window needs.
    """
    times = data.ds["time"].values
    rows, cols = spatial_dims(data.ds)
    spec = data.spec
    for split in splits:
        a, b = data.splits.index_range(split, times)
        index = split_windows(
            spec,
            data.store_path,
            times=times,
            step_s=data.step_s,
            grid_shape=(data.ds.sizes[rows], data.ds.sizes[cols]),
            global_lon=data.latlon and is_global_lon(data.ds[cols].values),
            index_range=(a, b),
            dask=data.dask,
        )
        if len(index):
            continue
        start, stop = (
            f"store {end}" if t is None else _seconds(t)
            for t, end in zip(data.splits.time_range(split), ("start", "end"), strict=True)
        )
        held = f"{b - a} steps" + (
            f" ({_seconds(times[a])} … {_seconds(times[b - 1])})" if b > a else ""
        )
        skipped = " without NaN" if spec.nan_policy == "skip" else ""
        raise StoreError(
            f"{data.store_path}: the {split} window [{start}, {stop}) holds no complete "
            f"sample: one needs {spec.span} regular steps{skipped} (input_steps "
            f"{spec.input_steps} + max lead {spec.leads[-1]}) on one of {index.n_rows}×"
            f"{index.n_cols} patch positions, and the window holds {held} in "
            f"{len(index.segments)} gap-free run(s); move the [split] dates or ingest more data"
        )


def _seconds(t: np.datetime64) -> str:
    return str(np.datetime64(t, "s"))


def build_forecaster(
    model: ModelSection, data: DataContext, *, name: str | None = None
) -> Forecaster:
    """``[model]`` (or the model ``name`` with its defaults, e.g. a baseline) for ``data``, on
    the CPU, in train mode."""
    model_cfg = model if name is None else model_settings({"name": name})
    spec = data.spec
    return build_model(
        model_cfg,
        input_variables=spec.input_variables,
        target_variables=spec.target_variables,
        input_steps=spec.input_steps,
        leads=spec.leads,
        patch_shape=spec.shape,
        n_time_features=spec.n_time_features,
        n_static=data.n_static,
        norm_mean=data.norm_mean,
        norm_std=data.norm_std,
        climatology=data.climatology,
        step_s=data.step_s,
    )


def build_baselines(data: DataContext) -> dict[str, Forecaster]:
    """Persistence, climatology and persistence + climatological change, in eval mode."""
    return {
        name: build_forecaster(model_settings({"name": name}), data).eval() for name in BASELINES
    }


def make_split_loader(
    data: DataContext,
    *,
    split: SplitName,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    max_batches: int | None,
    seed: int = 0,
    num_workers: int = 0,
    dist: Distributed | None = None,
    device: torch.device | None = None,
    spec: PatchSpec | None = None,
) -> PatchLoader:
    """The loader of one split (``set_epoch(epoch)``, ``len()``), sharded over ranks.

    ``spec`` replaces ``data.spec`` (evaluation reads non-overlapping tiles).
    """
    dist = dist or Distributed()
    return make_loader(
        spec or data.spec,
        data.store_path,
        splits=data.splits,
        dask=data.dask,
        split=split,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        num_workers=num_workers,
        rank=dist.rank,
        world_size=dist.world_size,
        pin_memory=device is not None and device.type == "cuda",
        drop_last=drop_last,
        max_batches=max_batches,
    )


def iterate_on_device(
    loader: Iterable[Batch], device: torch.device
) -> Iterator[tuple[Batch, float]]:
    """(batch on ``device``, seconds the loader kept the device waiting for it).

    On a GPU the host runs ahead of the kernels it queued: time blocked in the loader's
    ``next()`` while the GPU still works on earlier steps costs nothing, and a host that
    is throttled by the GPU (the caching allocators wait on it) would show it there too.
    So a wait counts only if the work queued before it had finished by the time the batch
    came (an upper bound of the device's idle time); on the CPU every wait counts.
    """
    iterator = iter(loader)
    cuda = device.type == "cuda"
    while True:
        queued = torch.cuda.Event() if cuda else None
        if queued is not None:
            queued.record(torch.cuda.current_stream(device))
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        waited = time.perf_counter() - started
        if queued is not None and not queued.query():
            waited = 0.0
        if device.type != "cpu":
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        yield batch, waited


def grid_coordinates(data: DataContext) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(row dim, column dim, row coordinate values, column coordinate values)."""
    rows, cols = spatial_dims(data.ds)
    return rows, cols, data.ds[rows].values, data.ds[cols].values

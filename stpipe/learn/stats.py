"""Statistics of the store that the loader and the models need, computed lazily with Dask.

- :func:`compute_stats`: per-variable mean, std, min, max and counts over the *train*
  split only (no leakage from val/test), for normalisation;
- :func:`nan_steps`: which time steps hold a NaN, for ``[patches] nan_policy = "skip"``.

Both build Dask graphs over the store and compute them inside
:func:`stpipe.io.compute.dask_context`, so ``[dask] address`` runs them on a cluster. Results
are cached as JSON in ``<store's parent>/stats/`` (the workdir), under a name hashed from
the store digest, the variables and the time range covered: a store that grows gets new
statistics, an unchanged one reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from dask import compute as dask_compute

from stpipe.core.errors import StoreError
from stpipe.core.settings import SplitSection
from stpipe.core.splits import Splits
from stpipe.io.compute import dask_context
from stpipe.io.settings import DaskSection
from stpipe.io.store import open_store, store_digest

log = logging.getLogger(__name__)

STATS_DIR = "stats"


@dataclass(frozen=True)
class NormStats:
    """Per-variable statistics over the train split, in physical units (float64 sums).

    ``std`` is the population standard deviation (ddof = 0) of the non-NaN values;
    ``count`` / ``nan_count`` are the numbers of non-NaN / NaN values; ``time_range`` is
    the first and last time step covered (ISO), ``n_steps`` how many.
    """

    variables: tuple[str, ...]
    mean: dict[str, float]
    std: dict[str, float]
    minimum: dict[str, float]
    maximum: dict[str, float]
    count: dict[str, int]
    nan_count: dict[str, int]
    time_range: tuple[str, str]
    n_steps: int
    store_digest: str

    def arrays(self, variables: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) float32 [V] in the order of ``variables`` (default: all).

        A constant variable (std 0) gets std 1, so normalising it cannot divide by zero.
        """
        names = list(variables or self.variables)
        missing = [v for v in names if v not in self.mean]
        if missing:
            raise StoreError(f"no statistics for {missing}; have {list(self.variables)}")
        mean = np.array([self.mean[v] for v in names], dtype=np.float32)
        std = np.array([self.std[v] or 1.0 for v in names], dtype=np.float32)
        return mean, std

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> NormStats:
        raw = json.loads(text)
        return cls(
            **{**raw, "variables": tuple(raw["variables"]), "time_range": tuple(raw["time_range"])}
        )


def compute_stats(
    store_path: str | Path,
    *,
    variables: Sequence[str],
    split: Splits | SplitSection,
    cache_dir: str | Path | None = None,
    dask: DaskSection | None = None,
) -> NormStats:
    """Statistics of ``variables`` over the train split of the store (cached).

    ``split`` gives the train range ``[train_start or first, val_start)``. ``cache_dir``
    defaults to ``<store_path>/../stats``. Raises StoreError if a variable is missing or the
    train split holds no time step.
    """
    ds = _open_variables(store_path, variables)
    times = ds["time"].values
    splits = split if isinstance(split, Splits) else Splits.from_settings(split, times=times)
    a, b = splits.index_range("train", times)
    if b <= a:
        span = f"{times[0]} … {times[-1]}" if len(times) else "no steps"
        raise StoreError(
            f"{store_path}: the train split (before {splits.val_start}) holds no time step; "
            f"the store has {span}"
        )
    digest = store_digest(store_path)
    time_range = (str(times[a]), str(times[b - 1]))
    key = {"digest": digest, "variables": list(variables), "range": time_range, "n": b - a}

    def compute() -> str:
        train = ds.isel(time=slice(a, b))
        # One compute for every variable and moment: Dask reads each chunk once.
        with dask_context(dask):
            (sums,) = dask_compute({v: _moments(train[v].data) for v in variables})
        values = {v: {k: float(x) for k, x in s.items()} for v, s in sums.items()}
        stats = NormStats(
            variables=tuple(variables),
            mean={v: values[v]["mean"] for v in variables},
            std={v: values[v]["std"] for v in variables},
            minimum={v: values[v]["min"] for v in variables},
            maximum={v: values[v]["max"] for v in variables},
            count={v: int(values[v]["count"]) for v in variables},
            nan_count={v: int(values[v]["nan_count"]) for v in variables},
            time_range=time_range,
            n_steps=b - a,
            store_digest=digest,
        )
        return stats.to_json()

    text = _cached(_cache_dir(store_path, cache_dir), "norm", key, compute)
    return NormStats.from_json(text)


def nan_steps(
    store_path: str | Path,
    *,
    variables: Sequence[str],
    cache_dir: str | Path | None = None,
    dask: DaskSection | None = None,
) -> np.ndarray:
    """bool [time]: whether any of ``variables`` holds a NaN anywhere at that step (cached)."""
    ds = _open_variables(store_path, variables)
    n_time = ds.sizes["time"]
    key = {"digest": store_digest(store_path), "variables": list(variables), "n": n_time}

    def compute() -> str:
        flags = [da.isnan(ds[v].data).any(axis=(1, 2)) for v in variables]
        with dask_context(dask):
            (any_nan,) = dask_compute(da.stack(flags).any(axis=0))
        return json.dumps({"n_time": n_time, "nan_steps": np.flatnonzero(any_nan).tolist()})

    raw = json.loads(_cached(_cache_dir(store_path, cache_dir), "nan-steps", key, compute))
    flags = np.zeros(n_time, dtype=bool)
    flags[raw["nan_steps"]] = True
    return flags


def _open_variables(store_path: str | Path, variables: Sequence[str]) -> xr.Dataset:
    ds = open_store(store_path)
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise StoreError(
            f"{store_path}: variables {missing} are not in the store; it has {list(ds.data_vars)}"
        )
    return ds


def _moments(x: da.Array) -> dict[str, da.Array]:
    return {
        "mean": da.nanmean(x, dtype=np.float64),
        "std": da.nanstd(x, dtype=np.float64),
        "min": da.nanmin(x),
        "max": da.nanmax(x),
        "count": da.count_nonzero(~da.isnan(x)),
        "nan_count": da.count_nonzero(da.isnan(x)),
    }


def _cache_dir(store_path: str | Path, cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else Path(store_path).parent / STATS_DIR


def _cached(
    directory: Path, prefix: str, key: dict[str, object], compute: Callable[[], str]
) -> str:
    """The JSON text cached under ``key``, or ``compute()`` stored there atomically."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = directory / f"{prefix}-{digest}.json"
    if path.is_file():
        log.debug("reusing %s", path)
        return path.read_text()
    text = compute()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    log.info("wrote %s", path)
    return text

"""One forecast of the whole grid: the input window, tiles through the model, stitched.

The *init time* of a forecast is the time of its last input step (CF
``forecast_reference_time``); lead ``k`` is valid ``k · step`` later. A window is complete
when the store holds all ``input_steps`` steps ending at the init time, one step apart.
Tiles of the model's patch size cover the grid with ``overlap`` cells shared between
neighbours (:func:`stpipe.forecast.tiling.tile_positions`); inputs are cut with the model's halo and
edge policy as in training, and the central outputs are blended back with a taper
(:func:`stpipe.forecast.tiling.stitch`). Everything the model needs to know about its inputs comes
from its :class:`~stpipe.tracking.model.ModelCard`, not from the pipeline config.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor

from stpipe.core.card import ModelCard
from stpipe.core.errors import StoreError
from stpipe.core.grid import spatial_dims
from stpipe.core.patches import axis_indices, static_coordinates, time_features
from stpipe.forecast.store import INIT, LEAD
from stpipe.forecast.tiling import cut_tiles, stitch, tile_positions

BATCH_SIZE = 32

Model = Callable[[dict[str, Tensor]], Tensor]


def input_window_end(
    times: np.ndarray, *, input_steps: int, step_s: int, init_time: np.datetime64 | None = None
) -> int:
    """Index in ``times`` of the init time: ``init_time``'s, or the latest complete window's.

    ``times`` datetime64 [time], ascending. StoreError (with the steps that are missing)
    when ``init_time`` is not in the store or its window is incomplete, or when no window
    is complete.
    """
    times = np.asarray(times, dtype="datetime64[ns]")
    step = np.timedelta64(step_s, "s")
    # The window ending at i is complete when its input_steps times (on the store's step
    # grid, increasing) span exactly input_steps - 1 steps.
    complete = np.zeros(len(times), dtype=bool)
    first = input_steps - 1
    if len(times) > first:
        complete[first:] = times[first:] - times[: len(times) - first] == step * first
    if init_time is None:
        found = np.flatnonzero(complete)
        if not len(found):
            raise StoreError(
                f"the store has no {input_steps} consecutive steps of {step_s} s "
                f"({len(times)} steps in all); ingest more data first"
            )
        return int(found[-1])
    init = np.datetime64(init_time, "ns")
    index = int(np.searchsorted(times, init))
    if index < len(times) and times[index] == init and complete[index]:
        return index
    wanted = init - step * np.arange(input_steps - 1, -1, -1)
    missing = np.setdiff1d(wanted, times)
    raise StoreError(
        f"no complete input window ends at {init}: the model needs {input_steps} steps "
        f"{wanted[0]} … {wanted[-1]}, the store lacks {len(missing)} of them "
        f"({', '.join(map(str, missing[:3]))}{' …' if len(missing) > 3 else ''}); the store "
        f"holds {times[0] if len(times) else '-'} … {times[-1] if len(times) else '-'}"
    )


def forecast_grid(
    model: Model,
    ds: xr.Dataset,
    *,
    card: ModelCard,
    end: int,
    overlap: tuple[int, int],
    batch_size: int = BATCH_SIZE,
) -> xr.Dataset:
    """Forecast every cell of ``ds`` (a canonical store) from the window ending at index ``end``.

    ``model`` maps a batch to [B, L, V_out, H, W] physical units; ``card`` says what it
    needs. Returns dims ``(init_time: 1, lead_time, <lat|y>, <lon|x>)``: one float32
    variable per target with the store's attributes; ``lead_time`` timedelta64.
    """
    rows, cols = spatial_dims(ds)
    grid = (ds.sizes[rows], ds.sizes[cols])
    size = _size(card)
    window = read_window(ds, card=card, end=end)
    positions = tile_positions(grid, size, overlap)
    outputs = []
    for start in range(0, len(positions), batch_size):
        batch = tile_batch(
            ds, window, card=card, end=end, positions=positions[start : start + batch_size]
        )
        with torch.no_grad():
            pred = model(batch).float().cpu().numpy()
        h = card.halo
        outputs.append(pred[..., h : h + size[0], h : h + size[1]])
    field = stitch(np.concatenate(outputs), positions, grid)  # [L, V_out, ny, nx]
    return _as_dataset(field, ds, init=ds["time"].values[end], card=card)


def read_window(ds: xr.Dataset, *, card: ModelCard, end: int) -> np.ndarray:
    """The input steps ending at index ``end``: float32 [T, V_in, ny, nx], physical units."""
    inputs = ds[list(card.input_variables)].isel(time=slice(end - card.input_steps + 1, end + 1))
    return np.stack([inputs[v].values.astype(np.float32) for v in card.input_variables], axis=1)


def tile_batch(
    ds: xr.Dataset, window: np.ndarray, *, card: ModelCard, end: int, positions: np.ndarray
) -> dict[str, Tensor]:
    """The model inputs of the tiles whose target areas start at ``positions`` [N, 2].

    Keys and layout as the training loader's batches (:mod:`stpipe.learn.loader`), built the same
    way: ``x`` cut with the card's halo and edge policy, time features of the input and
    valid times, static channels, and ``row0``/``col0`` of the top-left cell with the halo.
    """
    halo, n = card.halo, len(positions)
    times = ds["time"].values.astype("datetime64[ns]")
    in_times = times[end - card.input_steps + 1 : end + 1]
    out_times = times[end] + np.asarray(card.leads) * np.timedelta64(card.step_s, "s")
    static = _static_tiles(
        ds, positions, card.static_features, size=_size(card), halo=halo, edge=card.edge
    )
    return {
        "x": torch.from_numpy(
            cut_tiles(window, positions, size=_size(card), halo=halo, edge=card.edge)
        ),
        "x_time": _features(in_times, n, card.n_time_features),
        "y_time": _features(out_times, n, card.n_time_features),
        "x_times": _ns(in_times, n),
        "y_times": _ns(out_times, n),
        "static": torch.from_numpy(static),
        "row0": torch.from_numpy(positions[:, 0] - halo),
        "col0": torch.from_numpy(positions[:, 1] - halo),
    }


def _size(card: ModelCard) -> tuple[int, int]:
    """The target area of the card's patches (without the halo)."""
    return card.patch_shape[0] - 2 * card.halo, card.patch_shape[1] - 2 * card.halo


def _features(times: np.ndarray, n: int, count: int) -> Tensor:
    features = time_features(times)[:, :count]
    return torch.from_numpy(np.broadcast_to(features, (n, *features.shape)).copy())


def _ns(times: np.ndarray, n: int) -> Tensor:
    ns = times.astype("datetime64[ns]").astype(np.int64)
    return torch.from_numpy(np.broadcast_to(ns, (n, len(ns))).copy())


def _static_tiles(
    ds: xr.Dataset,
    positions: np.ndarray,
    features: tuple[str, ...],
    *,
    size: tuple[int, int],
    halo: int,
    edge: str,
) -> np.ndarray:
    """Static channels of each tile, float32 [N, S, H, W], built as the loader builds them:
    coordinates continue their edge value past the grid (wrapped columns are real cells),
    ``mask`` is 1 on cells inside the grid."""
    rows, cols = spatial_dims(ds)
    ny, nx = ds.sizes[rows], ds.sizes[cols]
    coords = static_coordinates(features, ds[rows].values, ds[cols].values, latlon=rows == "lat")
    sources = [f for f in features if f != "mask"]
    h, w = size[0] + 2 * halo, size[1] + 2 * halo
    row_cells = positions[:, 0, None] - halo + np.arange(h)
    col_cells = positions[:, 1, None] - halo + np.arange(w)
    wrap = edge == "wrap"
    row_idx = axis_indices(positions[:, 0] - halo, h, ny, "clip")
    col_idx = axis_indices(positions[:, 1] - halo, w, nx, "wrap" if wrap else "clip")
    row_in = (row_cells >= 0) & (row_cells < ny)
    col_in = np.ones_like(col_cells, dtype=bool) if wrap else (col_cells >= 0) & (col_cells < nx)
    out = np.empty((len(positions), len(features), h, w), dtype=np.float32)
    for k in range(len(positions)):
        for channel, name in enumerate(features):
            if name == "mask":
                out[k, channel] = row_in[k][:, None] & col_in[k][None, :]
            else:
                out[k, channel] = coords[sources.index(name)][row_idx[k]][:, col_idx[k]]
    return out


def _as_dataset(
    field: np.ndarray, ds: xr.Dataset, *, init: np.datetime64, card: ModelCard
) -> xr.Dataset:
    rows, cols = spatial_dims(ds)
    lead_time = pd.to_timedelta(np.asarray(card.leads) * card.step_s, unit="s").values
    data_vars = {}
    for j, name in enumerate(card.target_variables):
        attrs = {
            k: v for k, v in ds[name].attrs.items() if k in ("units", "standard_name", "long_name")
        }
        data_vars[name] = ((INIT, LEAD, rows, cols), field[None, :, j].astype(np.float32), attrs)
    return xr.Dataset(
        data_vars,
        coords={
            INIT: (
                INIT,
                np.array([init], dtype="datetime64[ns]"),
                {
                    "standard_name": "forecast_reference_time",
                    "long_name": "initialisation time (time of the last input step)",
                },
            ),
            LEAD: (LEAD, lead_time, {"standard_name": "forecast_period", "long_name": "lead time"}),
            rows: ds[rows].variable.to_base_variable(),
            cols: ds[cols].variable.to_base_variable(),
        },
    )

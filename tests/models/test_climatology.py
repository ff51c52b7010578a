"""Climatology: slots from UTC times, slot means fitted with xarray, the held-out baseline
blend per lag, and the per-patch lookup (NaN outside the grid)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from stpipe.core.errors import ConfigError, StoreError
from stpipe.models.climatology import (
    Climatology,
    ClimatologyLookup,
    climatology_period,
    slots_per_period,
    time_slots,
)
from stpipe.testing import make_dataset


def test_slots_match_pandas_hour_and_weekday_for_numpy_and_torch() -> None:
    times = pd.date_range("2023-12-30", periods=24 * 10, freq="30min")
    ns = times.as_unit("ns").asi8
    day = time_slots(ns, period="day", step_s=1800)
    week = time_slots(ns, period="week", step_s=1800)
    expected_day = times.hour * 2 + times.minute // 30
    assert np.array_equal(day, expected_day)
    assert np.array_equal(week, times.day_of_week * 48 + expected_day)
    assert torch.equal(
        time_slots(torch.from_numpy(ns), period="week", step_s=1800),
        torch.from_numpy(np.asarray(week)),
    )
    assert slots_per_period(period="week", step_s=1800) == 336
    assert slots_per_period(period="day", step_s=3600) == 24


def test_step_must_divide_a_day() -> None:
    with pytest.raises(ConfigError, match="step_s=7000"):
        slots_per_period(period="day", step_s=7000)


def test_fit_table_equals_hand_computed_slot_means() -> None:
    ds = make_dataset(nt=24 * 3 + 5, ny=3, nx=4, variables=("t2m", "u10"))
    clim = Climatology.fit(ds.chunk(time=10), variables=["u10", "t2m"], period="day", step_s=3600)
    assert clim.table.shape == (24, 2, 3, 4)
    assert clim.variables == ("u10", "t2m")
    hours = ds["time"].dt.hour.values
    for hour in (0, 4, 5, 23):
        expected = ds["t2m"].values[hours == hour].mean(axis=0)
        np.testing.assert_allclose(clim.table[hour, 1], expected, rtol=1e-6)
    np.testing.assert_allclose(
        clim.table[7, 0], ds["u10"].values[hours == 7].mean(axis=0), rtol=1e-6
    )


def test_fit_week_slots_and_empty_slots_are_nan() -> None:
    ds = make_dataset(
        nt=48 * 2, ny=2, nx=2, variables=("inflow",), step="30min", start="2024-03-04", latlon=False
    )  # a Monday and a Tuesday
    clim = Climatology.fit(ds, variables=["inflow"], period="week", step_s=1800)
    assert clim.table.shape == (336, 1, 2, 2)
    np.testing.assert_allclose(clim.table[48 + 3, 0], ds["inflow"].values[48 + 3], rtol=1e-6)
    assert np.isnan(clim.table[2 * 48 :, 0]).all(), "Wednesday to Sunday were never seen"
    assert climatology_period("auto", ds) == "week"
    assert climatology_period("auto", make_dataset(nt=2)) == "day"


def brute_force_blend(ds: xr.Dataset, name: str, lag: int) -> np.ndarray:
    """Least squares of x(t+lag) on (x(t), C̃(t+lag), C̃(t)) over all cells, C̃ leaving x out."""
    regular = pd.date_range(ds.time.values[0], ds.time.values[-1], freq="h")
    x = ds[name].reindex(time=regular).values.astype(np.float64)
    hour = regular.hour.to_numpy()
    table = np.stack([np.nanmean(x[hour == h], axis=0) for h in range(24)])
    count = np.stack([np.isfinite(x[hour == h]).sum(axis=0) for h in range(24)])
    held_out = (count[hour] * table[hour] - x) / (count[hour] - 1)
    centre = np.nanmean(x)
    f = np.stack([x[:-lag], held_out[lag:], held_out[:-lag]], axis=-1).reshape(-1, 3) - centre
    y = x[lag:].reshape(-1) - centre
    ok = np.isfinite(f).all(axis=1) & np.isfinite(y)
    return np.linalg.lstsq(f[ok], y[ok], rcond=None)[0]


def test_blend_equals_brute_force_least_squares_with_a_time_gap() -> None:
    ds = make_dataset(nt=24 * 5, ny=3, nx=4, variables=("t2m",), gap_after=40, gap_steps=3)
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.standard_normal(ds.sizes["time"]))[:, None, None]
    diurnal = np.sin(ds["time"].dt.hour.values * 2 * np.pi / 24)[:, None, None]
    ds["t2m"] = ds["t2m"] * 0.5 + walk + 3 * diurnal  # persistence, cycle and noise all matter
    clim = Climatology.fit(
        ds.chunk(time=17), variables=["t2m"], period="day", step_s=3600, max_lag=25
    )
    assert clim.blend_weights.shape == (1, 26, 3)
    assert clim.blend("t2m", 0) == (1.0, 0.0, 0.0)
    for lag in (1, 3, 24, 25):
        np.testing.assert_allclose(
            clim.blend("t2m", lag),
            brute_force_blend(ds, "t2m", lag),
            rtol=1e-4,
            atol=1e-6,
            err_msg=f"lag {lag}",
        )
    assert clim.blend("t2m", 99) == clim.blend("t2m", 25), "past max_lag: the last lag"


def test_blend_picks_persistence_for_a_random_walk_and_climatology_for_a_cycle() -> None:
    rng = np.random.default_rng(0)
    walk = make_dataset(nt=24 * 14, ny=2, nx=2, variables=("t2m",))
    walk["t2m"][:] = np.cumsum(rng.standard_normal((24 * 14, 2, 2)), axis=0)
    w = Climatology.fit(walk, variables=["t2m"], period="day", step_s=3600, max_lag=3)
    np.testing.assert_allclose(w.blend("t2m", 1), (1.0, 0.0, 0.0), atol=0.05)

    cycle = make_dataset(nt=24 * 14, ny=2, nx=2, variables=("t2m",))
    hours = cycle["time"].dt.hour.values[:, None, None]
    cycle["t2m"][:] = 5 * np.sin(hours * 2 * np.pi / 24) + rng.standard_normal((24 * 14, 2, 2))
    w = Climatology.fit(cycle, variables=["t2m"], period="day", step_s=3600, max_lag=3)
    np.testing.assert_allclose(w.blend("t2m", 3), (0.0, 1.0, 0.0), atol=0.05)


def test_fit_names_missing_variables() -> None:
    with pytest.raises(StoreError, match=r"\['msl'\] not in dataset"):
        Climatology.fit(make_dataset(nt=4), variables=["msl"], period="day", step_s=3600)


def _table_climatology() -> Climatology:
    table = np.arange(24 * 2 * 3 * 4, dtype=np.float32).reshape(24, 2, 3, 4)
    return Climatology(
        variables=("a", "b"),
        period="day",
        step_s=3600,
        table=table,
        blend_weights=np.ones((2, 3, 3), dtype=np.float32),
    )


def test_lookup_crops_patches_with_nan_outside_the_grid() -> None:
    clim = _table_climatology()
    lookup = ClimatologyLookup(clim, variables=["b"], step_s=3600)
    hour = 3600 * 10**9
    times = torch.tensor([[5 * hour, 30 * hour], [0, 23 * hour]])  # slots 5, 6 | 0, 23
    out = lookup(times, torch.tensor([-1, 1]), torch.tensor([2, -2]), height=3, width=3)
    assert out.shape == (2, 2, 1, 3, 3)
    first = out[0, 1, 0]  # slot 6, rows -1..1, cols 2..4
    assert torch.isnan(first[0]).all() and torch.isnan(first[:, 2]).all()
    assert torch.equal(first[1:, :2], torch.from_numpy(clim.table[6, 1, 0:2, 2:4]))
    second = out[1, 0, 0]  # slot 0, rows 1..3, cols -2..0
    assert torch.isnan(second[:, :2]).all() and torch.isnan(second[2]).all()
    assert torch.equal(second[:2, 2], torch.from_numpy(clim.table[0, 1, 1:3, 0]))


def test_lookup_refuses_other_variables_or_step() -> None:
    with pytest.raises(ConfigError, match=r"lacks variables \['c'\]"):
        ClimatologyLookup(_table_climatology(), variables=["c"], step_s=3600)
    with pytest.raises(ConfigError, match="step_s=3600, data has 1800"):
        ClimatologyLookup(_table_climatology(), variables=["a"], step_s=1800)

"""Climatology: slots from UTC times, slot means fitted with xarray, the held-out baseline
blend per lag, and the per-patch lookup (NaN outside the grid)."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from stpipe.core.errors import ConfigError, StoreError
from stpipe.models import climatology as climatology_module
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


def leap_calendar_day(times: pd.DatetimeIndex) -> np.ndarray:
    """pandas' day of year, counted in a leap year: Mar 1 is day 60 in every year."""
    late_in_common_year = ~times.is_leap_year & (times.day_of_year >= 60)
    return np.asarray(times.day_of_year - 1 + late_in_common_year)


def test_doy_slots_match_pandas_day_of_year_over_leap_and_common_years() -> None:
    rng = np.random.default_rng(0)
    days = pd.date_range("1899-12-25", "2101-01-05", freq="D")  # 1900, 2100 common; 2000 leap
    times = days + pd.to_timedelta(rng.integers(0, 48, len(days)) * 30, unit="min")
    ns = times.as_unit("ns").asi8
    expected = leap_calendar_day(times) * 48 + np.asarray(times.hour * 2 + times.minute // 30)
    slots = time_slots(ns, period="doy", step_s=1800)
    assert np.array_equal(slots, expected)
    assert torch.equal(
        time_slots(torch.from_numpy(ns), period="doy", step_s=1800), torch.from_numpy(expected)
    )
    assert slots.min() == 0 and slots.max() == 366 * 48 - 1
    assert slots_per_period(period="doy", step_s=3600) == 8784

    named = pd.DatetimeIndex(
        ["2023-02-28", "2023-03-01", "2024-02-29", "2024-03-01", "2024-12-31", "1900-03-01"]
    )
    days_of_year = time_slots(named.as_unit("ns").asi8, period="doy", step_s=86_400)
    assert list(days_of_year) == [58, 60, 59, 60, 365, 60], "Feb 29 has its own day"


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
    assert climatology_period("auto", ds, step_s=1800) == "week"
    assert climatology_period("auto", make_dataset(nt=2), step_s=3600) == "day"


def brute_force_blend(ds: xr.Dataset, name: str, lag: int) -> np.ndarray:
    """Least squares of x(t+lag) on (x(t), C̃(t+lag), C̃(t)) over all cells, C̃ leaving x out."""
    regular = pd.date_range(ds.time.values[0], ds.time.values[-1], freq="h")
    x = ds[name].reindex(time=regular).values.astype(np.float64)
    hour = regular.hour.to_numpy()
    table = np.stack([np.nanmean(x[hour == h], axis=0) for h in range(24)])
    count = np.stack([np.isfinite(x[hour == h]).sum(axis=0) for h in range(24)])
    return held_out_least_squares(x, table[hour], count[hour], lag)


def held_out_least_squares(
    x: np.ndarray, table: np.ndarray, count: np.ndarray, lag: int
) -> np.ndarray:
    """The blend by brute force, from the slot mean and count at each time [T, ...]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        held_out = (count * table - x) / (count - 1)
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


def brute_force_doy_means(
    x: np.ndarray, times: pd.DatetimeIndex, *, step_h: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loop over (day of year d, time of day h): mean and count of the finite values at h
    whose day of year lies within ±30 days of d, circular over 366 days. [366 × 24/step_h, ...]"""
    per_day = 24 // step_h
    day, tod = leap_calendar_day(times), times.hour.to_numpy() // step_h
    table = np.full((366 * per_day, *x.shape[1:]), np.nan)
    count = np.zeros((366 * per_day, *x.shape[1:]))
    for d in range(366):
        near = np.abs((day - d + 183) % 366 - 183) <= 30
        for h in range(per_day):
            values = x[near & (tod == h)]
            count[d * per_day + h] = np.isfinite(values).sum(axis=0)
            if values.size:
                with np.errstate(invalid="ignore"):
                    table[d * per_day + h] = np.nansum(values, axis=0) / count[d * per_day + h]
    return table, count


def test_doy_table_and_blend_equal_brute_force_smoothing_with_gaps_and_nans() -> None:
    ds = make_dataset(
        nt=4 * 730, ny=2, nx=3, variables=("t2m",), step="6h", start="2023-07-01", gap_after=900
    )  # two years over Feb 29 2024, six-hourly, five steps missing
    rng = np.random.default_rng(4)
    times = pd.DatetimeIndex(ds["time"].values)
    year = 2 * np.pi * times.day_of_year.to_numpy() / 365.25
    noise = np.cumsum(rng.standard_normal(len(times))) * 0.3
    diurnal = 2 * np.cos(times.hour.to_numpy() * np.pi / 12)
    ds["t2m"] = ds["t2m"] + (10 * np.cos(year) + noise + diurnal)[:, None, None]
    ds["t2m"][rng.integers(0, len(times), 300), 1, 2] = np.nan
    with dask.config.set({"array.chunk-size": "4KiB"}):  # one block per cell
        clim = Climatology.fit(
            ds.chunk(time=100), variables=["t2m"], period="doy", step_s=21_600, max_lag=6
        )
    regular = pd.date_range(times[0], times[-1], freq="6h")
    x = ds["t2m"].reindex(time=regular).values.astype(np.float64)
    table, count = brute_force_doy_means(x, regular, step_h=6)
    assert clim.table.shape == (366 * 4, 1, 2, 3)
    np.testing.assert_allclose(clim.table[:, 0], table, rtol=1e-6)
    assert not np.isnan(clim.table).any(), "Feb 29, seen once, is filled by its neighbours"
    slot = leap_calendar_day(regular) * 4 + regular.hour.to_numpy() // 6
    for lag in (1, 4, 6):
        np.testing.assert_allclose(
            clim.blend("t2m", lag),
            held_out_least_squares(x, table[slot], count[slot], lag),
            rtol=1e-4,
            atol=1e-6,
            err_msg=f"lag {lag}",
        )


def test_auto_is_doy_once_the_train_split_spans_a_year() -> None:
    year = make_dataset(nt=365 * 4, ny=1, nx=1, step="6h", start="2023-03-01")
    short = year.isel(time=slice(1, None))
    cells = make_dataset(nt=365 * 24, ny=1, nx=1, step="1h", latlon=False)
    assert climatology_period("auto", year, step_s=21_600) == "doy"
    assert climatology_period("auto", cells, step_s=3600) == "doy"
    assert climatology_period("auto", short, step_s=21_600) == "day"
    assert climatology_period("auto", cells.isel(time=slice(0, -1)), step_s=3600) == "week"
    assert climatology_period("doy", short, step_s=21_600) == "doy"


def test_description_names_the_slots() -> None:
    def described(period: str, step_s: int) -> str:
        table = np.zeros((slots_per_period(period=period, step_s=step_s), 1, 1, 1), np.float32)
        empty = np.zeros((1, 1, 3), np.float32)
        return Climatology(("a",), period, step_s, table, empty).description

    assert described("day", 3600) == "hour of day"
    assert described("week", 1800) == "day of week × 30-min slot"
    assert described("doy", 3600) == "day of year × hour, ±30-day smoothing"
    assert described("doy", 21_600) == "day of year × 6-h slot, ±30-day smoothing"


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


def test_lookup_by_day_of_year_in_torch() -> None:
    n_slots = slots_per_period(period="doy", step_s=3600)
    table = np.arange(n_slots, dtype=np.float32).reshape(n_slots, 1, 1, 1)
    clim = Climatology(("a",), "doy", 3600, table, np.ones((1, 2, 3), dtype=np.float32))
    lookup = ClimatologyLookup(clim, variables=["a"], step_s=3600)
    times = pd.DatetimeIndex(["2024-02-29 05:00", "2024-03-01 05:00", "2023-03-01 23:00"])
    ns = torch.from_numpy(times.as_unit("ns").asi8)[None]
    out = lookup(ns, torch.tensor([0]), torch.tensor([0]), height=1, width=1)
    assert out[0, :, 0, 0, 0].tolist() == [59 * 24 + 5, 60 * 24 + 5, 60 * 24 + 23]


def test_the_blend_weights_of_a_long_series_come_from_every_stride_th_origin(monkeypatch):
    # a year of a large grid: the lag moments sum at most MOMENT_PAIRS pairs a lag, taken at
    # every stride-th origin, and the weights stay those of the whole series
    rng = np.random.default_rng(3)
    hours = 24 * 40
    walk = np.zeros((hours, 4, 4))  # AR(1) about a daily cycle: well-determined weights
    cycle = 3 * np.sin(2 * np.pi * np.arange(hours) / 24)
    for t in range(1, hours):
        walk[t] = 0.9 * walk[t - 1] + rng.normal(size=(4, 4))
    walk += cycle[:, None, None]
    times = pd.date_range("2024-01-01", periods=hours, freq="h")
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), walk)},
        coords={"time": times, "lat": np.arange(4.0), "lon": np.arange(4.0)},
    )
    full = Climatology.fit(ds, variables=["t2m"], period="day", step_s=3600, max_lag=3)
    monkeypatch.setattr(climatology_module, "MOMENT_PAIRS", hours * 16 // 5)

    strided = Climatology.fit(ds, variables=["t2m"], period="day", step_s=3600, max_lag=3)

    np.testing.assert_array_equal(strided.table, full.table)
    assert not np.array_equal(strided.blend_weights, full.blend_weights), "fewer pairs summed"
    np.testing.assert_allclose(strided.blend_weights, full.blend_weights, atol=0.05)


def test_the_fit_in_small_blocks_of_cells_equals_the_fit_in_one(monkeypatch):
    # FIT_BLOCK_BYTES bounds the fit's memory; the blocks share one stride, so the table and
    # the blend weights do not depend on how the cells are blocked
    rng = np.random.default_rng(5)
    hours, side = 24 * 10, 8
    walk = np.zeros((hours, side, side))
    for t in range(1, hours):
        walk[t] = 0.8 * walk[t - 1] + rng.normal(size=(side, side))
    times = pd.date_range("2024-01-01", periods=hours, freq="h")
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), walk)},
        coords={"time": times, "lat": np.arange(float(side)), "lon": np.arange(float(side))},
    )
    monkeypatch.setattr(climatology_module, "MOMENT_PAIRS", hours * side * side // 3)
    whole = Climatology.fit(ds, variables=["t2m"], period="day", step_s=3600, max_lag=4)
    monkeypatch.setattr(climatology_module, "FIT_BLOCK_BYTES", hours * 8 * 4)  # 4 cells

    blocked = Climatology.fit(ds, variables=["t2m"], period="day", step_s=3600, max_lag=4)

    groups = climatology_module._SlotGroups.of(times.asi8, period="day", step_s=3600)
    blocks = climatology_module._fit_lazy(walk, groups, 4, 3)
    assert len(blocks) >= side * side // 4, "the cells were split into blocks of at most 4"
    np.testing.assert_array_equal(blocked.table, whole.table)
    np.testing.assert_allclose(blocked.blend_weights, whole.blend_weights, rtol=1e-9)


def test_blocks_are_cut_by_one_lags_temporaries_so_sampled_origins_keep_them_whole(monkeypatch):
    # a lag's pass holds four float64 values a pair: where every step is an origin, blocks
    # shrink until one pass fits LAG_PASS_BYTES; with origins sampled, they need not
    hours, side = 24 * 10, 8
    values = np.zeros((hours, side, side), dtype=np.float32)
    times = pd.date_range("2024-01-01", periods=hours, freq="h")
    groups = climatology_module._SlotGroups.of(times.asi8, period="day", step_s=3600)
    monkeypatch.setattr(climatology_module, "LAG_PASS_BYTES", 32 * hours * 4)  # 4 cells

    every_step = climatology_module._fit_lazy(values, groups, 4, 1)
    sampled = climatology_module._fit_lazy(values, groups, 4, hours // 4)

    assert len(every_step) >= side * side // 4, "blocks of at most 4 cells"
    assert len(sampled) == 1, "four origins a cell: every cell in one block"

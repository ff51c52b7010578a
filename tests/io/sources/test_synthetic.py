"""Synthetic feeds: deterministic per (seed, grid, date), continuous across days, in the exact
ERA5 / TaxiBJ file layouts, and physically plausible."""

from __future__ import annotations

import time
import warnings
from datetime import date, datetime, timedelta

import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr

from stpipe.core.errors import ConfigError
from stpipe.io.sources import synthetic as syn

SMALL = (32, 32)  # 8°×8° around 52 N, 0 E: land at the centre, sea at the edges (seed 0)


def hours_of(day: date, n: int) -> np.ndarray:
    return (day - date(1900, 1, 1)).days * 24 + np.arange(n)


def weather_days(first: date, n: int, *, grid=SMALL) -> xr.Dataset:
    days = [first + timedelta(days=i) for i in range(n)]
    return xr.concat([syn.weather_day(d, grid=grid) for d in days], "time")


# ------------------------------------------------------------------------- determinism


def test_weather_same_seed_same_values_other_seed_other_values():
    a = syn.weather_day("2024-01-05", seed=3, grid=(16, 16))
    b = syn.weather_day(date(2024, 1, 5), seed=3, grid=(16, 16))
    c = syn.weather_day("2024-01-05", seed=4, grid=(16, 16))

    xr.testing.assert_identical(a, b)
    for name in syn.WEATHER_VARIABLES:
        assert not np.allclose(a[name], c[name]), f"{name}: seeds 3 and 4 gave the same field"


def test_traffic_same_seed_same_counts_other_seed_other_counts():
    a = syn.traffic_day("2024-03-04", seed=1)
    b = syn.traffic_day("2024-03-04", seed=1)
    c = syn.traffic_day("2024-03-04", seed=2)

    xr.testing.assert_identical(a, b)
    assert (a["inflow"] != c["inflow"]).mean() > 0.5, "seeds 1 and 2 gave mostly equal counts"


@pytest.mark.parametrize(
    ("generate", "pattern"),
    [(syn.generate_weather_files, "era5_*.nc"), (syn.generate_traffic_files, "taxibj_*.h5")],
)
def test_files_are_the_same_bytes_whatever_the_range_and_run(tmp_path, generate, pattern):
    grid = (8, 8) if generate is syn.generate_weather_files else None
    generate(tmp_path / "split", days=2, start="2024-03-08", grid=grid, seed=5)
    generate(tmp_path / "split", days=2, start="2024-03-10", grid=grid, seed=5)
    time.sleep(1.1)  # HDF5 would store a different creation time now, unless told not to
    whole = generate(tmp_path / "whole", days=4, start="2024-03-08", grid=grid, seed=5)

    split = sorted((tmp_path / "split").glob(pattern))
    assert [p.name for p in split] == [p.name for p in whole]
    for a, b in zip(split, whole, strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between the two runs"


# -------------------------------------------------------------------------- continuity


def test_weather_midnight_step_is_an_ordinary_hourly_step():
    # Given six days evaluated hour by hour (each day also exactly what weather_day gives)
    first = date(2024, 1, 10)
    fields = syn.weather_fields(hours_of(first, 6 * 24), grid=SMALL)
    day2 = syn.weather_day(first + timedelta(days=1), grid=SMALL)
    np.testing.assert_allclose(day2["t2m"], fields["t2m"][24:48].astype(np.float32))

    for name, values in fields.items():
        # rms change of each hourly step, averaged per hour of day: step k is k → k+1 h
        steps = np.sqrt((np.diff(values, axis=0) ** 2).mean(axis=(1, 2)))
        by_hour = np.append(steps, np.nan).reshape(-1, 24)  # [day, hour of day]
        typical = np.median(np.nanmean(by_hour[:, :23], axis=0))
        ratio = np.nanmean(by_hour[:, 23]) / typical
        assert ratio < 1.3, f"{name}: midnight step {ratio:.2f}× a typical hourly step"


def test_traffic_intensity_is_continuous_across_midnight():
    # Friday → Saturday → Sunday → Monday: nightlife outflow peaks after midnight
    first = date(2024, 3, 8)
    lam = xr.concat([syn.traffic_intensity(first + timedelta(days=i)) for i in range(4)], "time")
    total = (lam["inflow"] + lam["outflow"]).sum(("y", "x")).values
    steps = np.abs(np.diff(total))
    for midnight in (47, 95, 143):
        around = max(steps[midnight - 1], steps[midnight + 1])
        assert steps[midnight] <= 1.5 * around + 1e-6 * total.mean(), (
            f"jump at midnight after slot {midnight}: {steps[midnight]:.0f} vs {around:.0f}"
        )


# ------------------------------------------------------------------------- file formats


def test_weather_file_has_the_era5_cds_layout(tmp_path):
    (path,) = syn.generate_weather_files(tmp_path, days=1, start="2024-01-15")
    expected = syn.weather_day("2024-01-15")

    assert path.name == "era5_20240115.nc"
    with netCDF4.Dataset(path) as nc:
        assert nc.data_model == "NETCDF3_64BIT_OFFSET"
        assert nc.Conventions == "CF-1.6" and "synthetic" in nc.history
        assert {d: len(v) for d, v in nc.dimensions.items()} == {
            "longitude": 64,
            "latitude": 64,
            "time": 24,
        }
        assert nc.dimensions["time"].isunlimited()
        lat, lon, t = nc["latitude"][:], nc["longitude"][:], nc["time"]
        assert lat.dtype == np.float32 and lon.dtype == np.float32
        np.testing.assert_array_equal(lat, 59.75 - 0.25 * np.arange(64))
        np.testing.assert_array_equal(lon[:32], 352.0 + 0.25 * np.arange(32))
        np.testing.assert_array_equal(lon[32:], 0.25 * np.arange(32))
        assert t.dtype == np.int32 and t.units == "hours since 1900-01-01 00:00:00.0"
        assert t.calendar == "gregorian"
        np.testing.assert_array_equal(t[:], hours_of(date(2024, 1, 15), 24))
        standard = {
            "t2m": ("K", "air_temperature"),
            "u10": ("m s**-1", "eastward_wind"),
            "v10": ("m s**-1", "northward_wind"),
            "msl": ("Pa", "air_pressure_at_mean_sea_level"),
        }
        for name, (units, standard_name) in standard.items():
            var = nc[name]
            var.set_auto_maskandscale(False)
            assert var.dimensions == ("time", "latitude", "longitude")
            assert var.dtype == np.int16
            assert var._FillValue == -32767 and var.missing_value == -32767
            assert (var.units, var.standard_name) == (units, standard_name)
            assert isinstance(var.scale_factor, np.float64) and var.scale_factor > 0
            packed = var[:]
            assert packed.min() >= -32766 and packed.max() <= 32766, f"{name} hits the fill"
            decoded = packed * var.scale_factor + var.add_offset
            np.testing.assert_allclose(
                decoded, expected[name].values, rtol=0, atol=0.51 * var.scale_factor + 1e-3
            )


def test_traffic_file_has_the_taxibj_layout(tmp_path):
    (path,) = syn.generate_traffic_files(tmp_path, days=1, start="2024-03-04")
    expected = syn.traffic_day("2024-03-04")

    assert path.name == "taxibj_20240304.h5"
    with h5py.File(path) as f:
        assert set(f) == {"data", "date"}
        assert f["data"].dtype == np.float64 and f["data"].shape == (48, 2, 32, 32)
        assert f["date"].dtype == np.dtype("S10")
        assert list(f["date"][:]) == [f"20240304{s:02d}".encode() for s in range(1, 49)]
        np.testing.assert_array_equal(f["data"][:, 0], expected["inflow"].values)
        np.testing.assert_array_equal(f["data"][:, 1], expected["outflow"].values)


def test_missing_slots_leave_runs_out_and_keep_the_other_counts(tmp_path):
    full = syn.traffic_day("2024-03-05", grid=(8, 8))
    gappy = syn.traffic_day("2024-03-05", grid=(8, 8), missing_slot_rate=1.0)
    assert syn.traffic_day("2024-03-05", grid=(8, 8), missing_slot_rate=0.0).sizes["time"] == 48

    kept = np.isin(full["time"].values, gappy["time"].values)
    lost = np.flatnonzero(~kept)
    assert 1 <= lost.size <= 3 and np.all(np.diff(lost) == 1), f"lost slots {lost}"
    xr.testing.assert_identical(full.isel(time=kept), gappy)

    paths = syn.generate_traffic_files(
        tmp_path, days=3, start="2024-03-05", grid=(8, 8), missing_slot_rate=1.0
    )
    with h5py.File(paths[0]) as f:
        slots = [int(s[-2:]) for s in f["date"][:]]
        assert f["data"].shape[0] == len(slots) == 48 - lost.size
    assert sorted(set(range(1, 49)) - set(slots)) == list(lost + 1)


# --------------------------------------------------------------------- weather physics


def test_january_weather_has_realistic_magnitudes():
    ds = weather_days(date(2024, 1, 14), 2, grid=None)
    t2m, msl = ds["t2m"].values, ds["msl"].values
    speed = np.hypot(ds["u10"], ds["v10"]).values

    assert t2m.min() > 255 and t2m.max() < 300, f"t2m {t2m.min():.1f}..{t2m.max():.1f} K"
    lo, hi = np.percentile(t2m, [1, 99])
    assert lo > 264 and hi < 292, f"t2m 1st..99th percentile {lo:.1f}..{hi:.1f} K"
    assert msl.min() > 96000 and msl.max() < 105500, f"msl {msl.min():.0f}..{msl.max():.0f} Pa"
    assert 2 < speed.mean() < 12 and speed.max() < 35, f"wind {speed.mean():.1f}, {speed.max():.1f}"


def test_diurnal_cycle_is_larger_over_land_and_peaks_in_the_afternoon():
    ds = weather_days(date(2024, 7, 1), 7)
    lsm = syn.land_sea_mask(grid=SMALL).values
    land, sea = lsm > 0.9, lsm < 0.1
    assert land.sum() > 50 and sea.sum() > 20, "the test grid should hold land and sea"

    cycle = ds["t2m"].values.reshape(7, 24, *SMALL).mean(axis=0)  # [hour UTC, y, x]
    amplitude = cycle.max(axis=0) - cycle.min(axis=0)
    assert amplitude[land].mean() > 3 * amplitude[sea].mean()
    assert 3 < amplitude[land].mean() < 12, f"land diurnal range {amplitude[land].mean():.1f} K"
    peak_hour = np.median(cycle.argmax(axis=0)[land])  # UTC ≈ local solar time near 0 E
    assert 12 <= peak_hour <= 17, f"land t2m peaks at {peak_hour} UTC"


def test_wind_follows_the_pressure_gradient_and_warm_sectors_follow_southerlies():
    ds = weather_days(date(2024, 1, 1), 5)
    msl = ds["msl"].values
    dp_east = np.gradient(msl, axis=2)
    dp_north = -np.gradient(msl, axis=1)  # rows run south

    def corr(a, b):
        return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]

    assert corr(ds["v10"], dp_east) > 0.5, "v10 should grow with ∂p/∂x (geostrophy)"
    assert corr(ds["u10"], -dp_north) > 0.5, "u10 should grow with −∂p/∂y (geostrophy)"
    t2m = ds["t2m"].values
    hour = np.arange(t2m.shape[0]) % 24
    anomaly = t2m - np.stack([t2m[hour == h].mean(axis=0) for h in range(24)])[hour]
    v_sum = np.cumsum(ds["v10"].values, axis=0)
    past_day_v = (v_sum[24:] - v_sum[:-24]) / 24
    assert corr(anomaly[24:], past_day_v) > 0.4, "southerly spells should bring warm air"


def test_weather_moves_east_with_the_westerlies():
    east, west = eastward_correlations(weather_days(date(2024, 1, 1), 5)["t2m"].values)
    assert east - west > 0.15, f"6 h later, corr 6 cells east {east:.2f}, west {west:.2f}"


def eastward_correlations(t2m: np.ndarray) -> tuple[float, float]:
    """corr(anomaly now, anomaly 6 h later 6 cells east), and 6 cells west."""
    anomaly = t2m - t2m.mean(axis=0)
    anomaly -= anomaly.mean(axis=(1, 2), keepdims=True)
    lag, nx = 6, t2m.shape[2]

    def lagged_corr(shift):  # corr(anomaly now, anomaly `lag` h later `shift` cells east)
        later = anomaly[lag:, :, max(shift, 0) : nx + min(shift, 0)]
        now = anomaly[:-lag, :, max(-shift, 0) : nx - max(shift, 0)]
        return np.corrcoef(later.ravel(), now.ravel())[0, 1]

    return lagged_corr(6), lagged_corr(-6)


def test_a_regime_change_cools_the_air_from_its_start_on_and_nothing_before():
    start = datetime(2024, 1, 3, 12)
    regime = syn.Regime(start=start, flow=(0.0, 0.0), t2m=-5.0, ramp_hours=6.0)
    hours = hours_of(date(2024, 1, 2), 72)
    base = syn.weather_fields(hours, grid=SMALL)
    changed = syn.weather_fields(hours, grid=SMALL, regime=regime)
    cooling = -5.0 * (0.6 + 0.4 * syn.land_sea_mask(grid=SMALL).values.astype(np.float64))
    since_start = hours - hours_of(date(2024, 1, 3), 1)[0] - 12
    before, after = since_start <= -12, since_start >= 12
    np.testing.assert_allclose(changed["t2m"][before], base["t2m"][before], atol=1e-5)
    np.testing.assert_allclose(
        changed["t2m"][after] - base["t2m"][after],
        np.broadcast_to(cooling, base["t2m"][after].shape),
        atol=1e-5,
    )
    half = since_start == 0
    np.testing.assert_allclose(
        changed["t2m"][half] - base["t2m"][half], 0.5 * cooling[None], atol=1e-9
    )
    for name in ("u10", "v10", "msl"):
        np.testing.assert_array_equal(changed[name], base[name])  # no change of flow


def test_a_regime_ramp_far_from_its_start_is_exactly_0_or_1_and_warns_nothing() -> None:
    regime = syn.Regime(start=datetime(2024, 2, 25))
    start_s = (datetime(2024, 2, 25) - datetime(1900, 1, 1)).total_seconds()
    seconds = start_s + np.array([-365, -1, 0, 1, 365]) * 86_400.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1 / (1 + e^-z) overflowed a year before the start
        ramp, integral = regime.ramp(seconds)
    np.testing.assert_array_equal(ramp[[0, 4]], [0.0, 1.0])
    np.testing.assert_allclose(ramp[[1, 2, 3]], [0.0, 0.5, 1.0], atol=1e-12)
    assert integral[0] == 0.0 and integral[4] > integral[3] > 0.0


def test_a_regime_change_turns_the_flow_that_carries_the_weather():
    westerlies = weather_days(date(2024, 1, 1), 5)
    regime = syn.Regime(start=datetime(2023, 12, 30), flow=(-16.0, 0.0), t2m=0.0)
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(5)]
    easterlies = xr.concat([syn.weather_day(d, grid=SMALL, regime=regime) for d in days], "time")
    assert "regime change at 2023-12-30T00:00" in easterlies.attrs["history"]
    assert float(easterlies["u10"].mean()) < 0 < float(westerlies["u10"].mean())
    east, west = eastward_correlations(easterlies["t2m"].values)
    assert west - east > 0.15, f"6 h later, corr 6 cells east {east:.2f}, west {west:.2f}"


def test_weather_is_predictable_beyond_persistence_and_hourly_climatology():
    # A local linear model on a neighbourhood's recent history, fit on 8 days, tested on 3.
    ds = weather_days(date(2024, 1, 1), 11, grid=(24, 24))
    fields = np.stack([ds[v].values for v in syn.WEATHER_VARIABLES])
    z = (fields - fields.mean(axis=(1, 2, 3), keepdims=True)) / fields.std(
        axis=(1, 2, 3), keepdims=True
    )
    t2m, lead, split = fields[0], 3, 8 * 24
    hour = np.arange(t2m.shape[0]) % 24
    clim = np.stack([t2m[:split][hour[:split] == h].mean(axis=0) for h in range(24)])
    times = np.arange(1, t2m.shape[0] - lead)
    x, y, c = [], [], []
    for i in range(6, 18, 2):
        for j in range(6, 18, 2):
            patch = z[:, :, i - 4 : i + 5 : 4, j - 4 : j + 5 : 4]
            lags = [
                patch[:, times - lag].transpose(1, 0, 2, 3).reshape(len(times), -1)
                for lag in (0, 1)
            ]
            to_clim = clim[hour[times + lead], i, j] - t2m[times, i, j]
            x.append(np.column_stack([*lags, to_clim, np.ones(len(times))]))
            y.append(t2m[times + lead, i, j] - t2m[times, i, j])
            c.append(to_clim)
    x, y, c = np.concatenate(x), np.concatenate(y), np.concatenate(c)
    train = np.tile(times + lead < split, 36)
    test = np.tile(times >= split, 36)
    w = np.linalg.lstsq(x[train], y[train], rcond=None)[0]

    def rmse(err):
        return float(np.sqrt(np.mean(err[test] ** 2)))

    model, persistence, climatology = rmse(y - x @ w), rmse(y), rmse(y - c)
    assert model < 0.7 * min(persistence, climatology), (
        f"3 h lead RMSE: model {model:.3f}, persistence {persistence:.3f}, "
        f"hour-of-day climatology {climatology:.3f} K"
    )
    assert model > 0.05, f"3 h lead RMSE {model:.3f} K: the fields are too predictable"


# --------------------------------------------------------------------- traffic behaviour


def test_counts_are_non_negative_whole_numbers_of_taxibj_size():
    days = [syn.traffic_day(date(2024, 3, 4) + timedelta(days=i)) for i in range(7)]
    counts = np.concatenate([np.stack([d["inflow"], d["outflow"]]) for d in days], axis=1)

    assert counts.dtype == np.float64
    assert counts.min() >= 0 and np.array_equal(counts, np.round(counts))
    assert 60 < counts.mean() < 160, f"mean count {counts.mean():.1f}"
    assert 700 < counts.max() < 2000, f"max count {counts.max():.0f}"


def test_morning_rush_flows_into_business_areas_and_out_of_residential_ones():
    city = syn.traffic_city()
    business = np.unravel_index(city["business"].values.argmax(), city["business"].shape)
    residential = np.unravel_index(city["residential"].values.argmax(), city["residential"].shape)
    lam = syn.traffic_intensity("2024-03-06")  # a Wednesday
    hour = np.arange(48) / 2  # slot start

    def peak(name, cell):
        return hour[lam[name].values[:, cell[0], cell[1]].argmax()]

    assert 7 <= peak("inflow", business) <= 9.5
    assert 16.5 <= peak("outflow", business) <= 19.5
    assert 6.5 <= peak("outflow", residential) <= 9
    assert 17 <= peak("inflow", residential) <= 20
    sunday = syn.traffic_intensity("2024-03-10")
    sunday_peak = hour[sunday["inflow"].values[:, business[0], business[1]].argmax()]
    assert sunday_peak >= 10.5, f"Sunday business inflow peaks at {sunday_peak} h, not later"


def test_weekends_are_quieter_and_holidays_behave_like_sundays():
    first = date(2024, 3, 4)
    totals = {}
    for i in range(21):
        day = first + timedelta(days=i)
        lam = syn.traffic_intensity(day)
        totals[day] = float(lam["inflow"].sum() + lam["outflow"].sum())
    weekday = np.mean([v for d, v in totals.items() if d.weekday() < 5])
    weekend = np.mean([v for d, v in totals.items() if d.weekday() >= 5])
    assert weekend < 0.9 * weekday, f"weekend/weekday = {weekend / weekday:.2f}"

    def profile(day):
        lam = syn.traffic_intensity(day)
        p = (lam["inflow"] + lam["outflow"]).sum(("y", "x")).values
        return p / p.sum()

    labour_day, sunday, wednesday = date(2024, 5, 1), date(2024, 5, 5), date(2024, 5, 8)
    assert syn.is_holiday(labour_day) and labour_day.weekday() == 2
    like_sunday = np.abs(profile(labour_day) - profile(sunday)).max()
    like_workday = np.abs(profile(labour_day) - profile(wednesday)).max()
    assert like_sunday < 0.3 * like_workday


def test_holiday_calendar():
    holidays = ["2024-01-01", "2024-02-10", "2024-02-12", "2024-10-07", "2024-12-25"]
    ordinary = ["2024-02-09", "2024-02-13", "2024-10-08", "2024-03-04"]
    assert all(syn.is_holiday(date.fromisoformat(d)) for d in holidays)
    assert not any(syn.is_holiday(date.fromisoformat(d)) for d in ordinary)


def test_an_event_brings_a_crowd_to_its_venue():
    first = date(2024, 3, 4)
    event_days = [
        d for d in (first + timedelta(days=i) for i in range(60)) if syn.traffic_events(d)
    ]
    assert 2 <= len(event_days) <= 20, f"{len(event_days)} events in 60 days"
    day = event_days[0]
    (event,) = syn.traffic_events(day)
    week_later = day + timedelta(days=7)
    assert not syn.traffic_events(week_later)
    slot = int(2 * (event.start_hour - 0.75))
    row, col = event.venue

    with_event = syn.traffic_intensity(day)["inflow"].values[slot, row, col]
    without = syn.traffic_intensity(week_later)["inflow"].values[slot, row, col]
    assert with_event > 2 * without, f"{with_event:.0f} vs {without:.0f} a week later"


# --------------------------------------------------------------- files, options, errors


def test_existing_files_are_kept_unless_overwrite(tmp_path):
    first = syn.generate_traffic_files(tmp_path, days=2, start="2024-03-04", grid=(8, 8))
    original = first[0].read_bytes()
    first[0].write_bytes(b"edited by hand")

    again = syn.generate_traffic_files(tmp_path, days=3, start="2024-03-04", grid=(8, 8))
    assert again[:2] == first and again[2].name == "taxibj_20240306.h5"
    assert first[0].read_bytes() == b"edited by hand"

    syn.generate_traffic_files(tmp_path, days=1, start="2024-03-04", grid=(8, 8), overwrite=True)
    assert first[0].read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in again], "leftovers"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 0}, r"synthetic days: expected an integer >= 1, got 0"),
        ({"days": 1, "start": "2024-13-01"}, r"synthetic start: expected a date YYYY-MM-DD"),
        ({"days": 1, "start": "1899-12-31"}, r"from 1900-01-01 on, got 1899-12-31"),
        ({"days": 1, "seed": -1}, r"synthetic seed: expected an integer >= 0, got -1"),
        ({"days": 1, "grid": (1, 8)}, r"synthetic grid: expected \(ny, nx\).*got \(1, 8\)"),
        ({"days": 1, "grid": (400, 8)}, r"does not fit on the globe"),
    ],
)
def test_bad_options_are_config_errors(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        syn.generate_weather_files(tmp_path, **kwargs)
    assert not list(tmp_path.glob("*.nc"))


def test_bad_missing_slot_rate_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"missing_slot_rate: expected 0..1, got 1.5"):
        syn.generate_traffic_files(tmp_path, days=1, missing_slot_rate=1.5)


def test_cli_generate_writes_the_daily_files(tmp_path):
    from stpipe.app.cli import main

    code = main(
        [
            "-q",
            "generate",
            "traffic",
            str(tmp_path),
            "--days",
            "2",
            "--start",
            "2024-03-04",
            "--seed",
            "7",
        ]
    )

    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "taxibj_20240304.h5",
        "taxibj_20240305.h5",
    ]
    assert main(["-q", "generate", "weather", str(tmp_path), "--days", "0"]) != 0


# ------------------------------------------------------------------------ with the readers


def test_files_decode_through_the_source_readers(tmp_path):
    sources = pytest.importorskip(
        "stpipe.io.sources", reason="the source readers are not there yet"
    )
    if not hasattr(sources, "read_source_file"):
        pytest.skip("stpipe.io.sources.read_source_file is not there yet")
    from stpipe.io.settings import SourceSection

    (nc,) = syn.generate_weather_files(tmp_path, days=1, start="2024-01-15", grid=(8, 12))
    (h5,) = syn.generate_traffic_files(
        tmp_path, days=1, start="2024-03-04", grid=(8, 8), missing_slot_rate=1.0
    )
    weather = sources.read_source_file(
        nc, SourceSection(kind="synthetic-weather", variables=list(syn.WEATHER_VARIABLES))
    ).to_dataset()
    traffic = sources.read_source_file(
        h5, SourceSection(kind="synthetic-traffic", variables=["inflow", "outflow"])
    ).to_dataset()

    expected = syn.weather_day("2024-01-15", grid=(8, 12))
    np.testing.assert_array_equal(weather["lat"], expected["latitude"].values[::-1])
    np.testing.assert_array_equal(weather["lon"], -1.5 + 0.25 * np.arange(12))
    # 358.5..359.75, 0..1.25 E in the file is already west to east: only the rows flip
    np.testing.assert_allclose(weather["t2m"].values, expected["t2m"].values[:, ::-1], atol=2e-3)
    np.testing.assert_array_equal(weather["time"].values, expected["time"].values)

    counts = syn.traffic_day("2024-03-04", grid=(8, 8), missing_slot_rate=1.0)
    np.testing.assert_array_equal(traffic["time"].values, counts["time"].values)
    np.testing.assert_array_equal(traffic["inflow"].values, counts["inflow"].values)
    assert traffic.attrs["time_step_s"] == 1800

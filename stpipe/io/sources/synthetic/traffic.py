"""Synthetic TaxiBJ-like crowd flows: ``taxibj_YYYYMMDD.h5``, 48 half-hour slots, 32×32 cells.

Poisson counts of an intensity built from a city (centre, ring roads, business and
residential hotspots): a daily base activity, rush hours (inflow to business districts in
the morning, outflow in the evening, reversed for residential ones), flatter and later peaks
at weekends, public holidays behaving like Sundays, seeded concerts at a venue, and a smooth
day-to-day multiplicative "weather" factor. Day-type effects are bumps in absolute time
summed over neighbouring days, so Friday night's outflow continues after midnight.

Public pieces besides :func:`generate_traffic_files`: :func:`traffic_day` (one day in
memory, as the file decodes), :func:`traffic_intensity` (the Poisson means),
:func:`traffic_city` (static maps), :func:`traffic_events` and :func:`is_holiday`. The HDF5
datasets are written with ``track_times=False``, so files are byte-reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import xarray as xr

from stpipe.core.errors import ConfigError
from stpipe.io.sources.synthetic.common import (
    CITY_STREAM,
    COUNTS_STREAM,
    EVENT_STREAM,
    MISSING_STREAM,
    Grid,
    as_date,
    check_grid,
    history_attr,
    stream_rng,
    write_daily_files,
)

TRAFFIC_GRID: Grid = (32, 32)
SLOTS_PER_DAY = 48

# Chinese New Year (day 1 of the 3-day Spring Festival holiday), by year.
_SPRING_FESTIVAL_DATES = """
    2013-02-10 2014-01-31 2015-02-19 2016-02-08 2017-01-28 2018-02-16 2019-02-05 2020-01-25
    2021-02-12 2022-02-01 2023-01-22 2024-02-10 2025-01-29 2026-02-17 2027-02-06 2028-01-26
    2029-02-13 2030-02-03
"""
_SPRING_FESTIVAL = {d.year: d for d in map(date.fromisoformat, _SPRING_FESTIVAL_DATES.split())}
_FIXED_HOLIDAYS = frozenset(
    {(1, 1), (5, 1), (5, 2), (5, 3), (12, 25)} | {(10, d) for d in range(1, 8)}
)

# Bumps of intensity per day type: (channel 0 inflow / 1 outflow, area, centre h, width h,
# strength). Inflow bumps have outflow partners, so a day's flows roughly balance. Weekends
# sleep in (negative bumps in the morning), go out later and do not commute.
_BUMPS = {
    "workday": (
        (0, "density", 8.25, 1.0, 0.25),
        (1, "density", 8.0, 1.0, 0.25),
        (0, "density", 18.0, 1.3, 0.25),
        (1, "density", 18.0, 1.3, 0.25),
        (0, "business", 8.25, 1.0, 1.0),
        (1, "business", 18.0, 1.2, 1.0),
        (1, "residential", 7.75, 1.0, 1.0),
        (0, "residential", 18.5, 1.3, 1.0),
    ),
    "saturday": (
        (0, "density", 8.5, 1.2, -0.08),
        (1, "density", 8.5, 1.2, -0.08),
        (0, "density", 14.0, 2.5, 0.15),
        (1, "density", 16.5, 2.5, 0.15),
        (0, "business", 11.0, 1.8, 0.3),
        (1, "business", 17.5, 1.8, 0.3),
        (1, "residential", 10.5, 1.8, 0.25),
        (0, "residential", 18.5, 1.8, 0.25),
    ),
    "sunday": (
        (0, "density", 8.5, 1.2, -0.1),
        (1, "density", 8.5, 1.2, -0.1),
        (0, "density", 14.0, 2.5, 0.1),
        (1, "density", 16.0, 2.5, 0.1),
        (0, "business", 11.5, 2.0, 0.15),
        (1, "business", 17.0, 2.0, 0.15),
        (1, "residential", 11.0, 2.0, 0.15),
        (0, "residential", 17.5, 2.0, 0.15),
    ),
}
# Weekends are quieter overall: log-factor on the whole intensity, peaking at 13 h.
_QUIET = {"workday": 0.0, "saturday": -0.1, "sunday": -0.15}
# Friday and Saturday nights out: into the centre late evening, out after midnight.
_NIGHTLIFE = ((0, "density", 22.0, 1.2, 0.2), (1, "density", 25.0, 1.0, 0.2))
_TRAFFIC_SCALE = 480.0  # expected count per 30 min at unit intensity
_EVENT_RATE = 0.12


@dataclass(frozen=True)
class TrafficEvent:
    """A concert at ``venue`` (row, col): a crowd flows in before ``start_hour`` and out
    after it ends 2.5 h later; ``strength`` is in units of the city's unit intensity."""

    venue: tuple[int, int]
    start_hour: float
    strength: float


@dataclass(frozen=True)
class _City:
    areas: dict[str, np.ndarray]  # density, business, residential: (ny, nx) intensities
    venues: tuple[tuple[int, int], ...]
    mood: np.ndarray  # (3, J): amplitude, omega (rad day-1), psi of the day-to-day factor


def is_holiday(day: date) -> bool:
    """A public holiday (New Year, Spring Festival 3 days, Labour Day 3 days, National Day
    week, Christmas); traffic on these days follows the Sunday pattern."""
    if (day.month, day.day) in _FIXED_HOLIDAYS:
        return True
    new_year = _SPRING_FESTIVAL.get(day.year)
    return new_year is not None and 0 <= (day - new_year).days < 3


def _day_type(day: date) -> str:
    if is_holiday(day) or day.weekday() == 6:
        return "sunday"
    return "saturday" if day.weekday() == 5 else "workday"


@lru_cache(maxsize=8)
def _city(seed: int, grid: Grid) -> _City:
    ny, nx = grid
    rng = stream_rng(seed, CITY_STREAM)
    yy = ((np.arange(ny) + 0.5) / ny)[:, None]
    xx = ((np.arange(nx) + 0.5) / nx)[None, :]
    cy, cx = 0.5 + rng.normal(0.0, 0.03, 2)
    r = np.hypot(yy - cy, xx - cx)
    rings = sum(
        a * np.exp(-0.5 * ((r - radius) / 0.02) ** 2) for a, radius in ((0.3, 0.17), (0.2, 0.32))
    )
    density = 0.12 + np.exp(-0.5 * (r / 0.2) ** 2) + rings

    def spots(
        n: int,
        radius: tuple[float, float],
        width: tuple[float, float],
        strength: tuple[float, float],
    ) -> np.ndarray:
        out = np.zeros((ny, nx))
        for _ in range(n):
            rad, angle = rng.uniform(*radius), rng.uniform(0, 2 * np.pi)
            d2 = (yy - cy - rad * np.sin(angle)) ** 2 + (xx - cx - rad * np.cos(angle)) ** 2
            out += rng.uniform(*strength) * np.exp(-0.5 * d2 / rng.uniform(*width) ** 2)
        return out

    business = spots(4, (0.0, 0.18), (0.03, 0.06), (0.8, 1.3))
    # Commuters leave the residential areas and arrive at work: equal totals, so the city's
    # inflow and outflow balance in every slot.
    residential = spots(6, (0.22, 0.42), (0.05, 0.09), (0.5, 1.0))
    residential *= business.sum() / residential.sum()
    rad, angle = rng.uniform(0.08, 0.35, 3), rng.uniform(0, 2 * np.pi, 3)
    venues = tuple(
        (
            int(np.clip((cy + a * np.sin(b)) * ny, 0, ny - 1)),
            int(np.clip((cx + a * np.cos(b)) * nx, 0, nx - 1)),
        )
        for a, b in zip(rad, angle, strict=True)
    )
    mood = np.stack(
        [
            rng.standard_normal(4),
            2 * np.pi / rng.uniform(2.0, 14.0, 4),
            rng.uniform(0, 2 * np.pi, 4),
        ]
    )
    mood[0] *= np.sqrt(2 / np.sum(mood[0] ** 2))
    return _City(
        {"density": density, "business": business, "residential": residential}, venues, mood
    )


def traffic_city(*, seed: int = 0, grid: Grid | None = None) -> xr.Dataset:
    """The city's static maps on (y, x), fixed per seed, in units of intensity: ``density``
    (overall activity: centre, ring roads, suburbs), ``business`` and ``residential``
    hotspots (rush-hour destinations and origins)."""
    grid = check_grid(seed, grid, TRAFFIC_GRID)
    return xr.Dataset(
        {
            name: (("y", "x"), values, {"units": "1"})
            for name, values in _city(seed, grid).areas.items()
        },
        coords={"y": np.arange(grid[0]), "x": np.arange(grid[1])},
    )


def traffic_events(
    day: str | date, *, seed: int = 0, grid: Grid | None = None
) -> list[TrafficEvent]:
    """The events of ``day`` (none on most days, seeded by date)."""
    grid = check_grid(seed, grid, TRAFFIC_GRID)
    day = as_date(day, what="day")
    rng = stream_rng(seed, EVENT_STREAM, day.toordinal())
    happens, venue, start, strength = (
        rng.random(),
        rng.integers(3),
        rng.uniform(18.5, 20.5),
        rng.uniform(1.2, 2.0),
    )
    if happens >= _EVENT_RATE:
        return []
    return [TrafficEvent(_city(seed, grid).venues[int(venue)], float(start), float(strength))]


def _slot_times(day: date) -> np.ndarray:
    start = np.datetime64(day, "ns")
    return start + np.arange(SLOTS_PER_DAY) * np.timedelta64(30, "m")


def traffic_intensity(day: str | date, *, seed: int = 0, grid: Grid | None = None) -> xr.Dataset:
    """Expected inflow and outflow per cell and 30-minute slot of ``day`` (the Poisson means
    of :func:`traffic_day`): dims (time, y, x), time = slot start, float64."""
    grid = check_grid(seed, grid, TRAFFIC_GRID)
    day = as_date(day, what="day")
    city = _city(seed, grid)
    hour = 0.25 + 0.5 * np.arange(SLOTS_PER_DAY)  # slot centres
    phase = 2 * np.pi * (hour - 15.0) / 24
    activity = 0.45 + 0.45 * np.cos(phase) + 0.1 * np.cos(2 * phase)  # night low, 15 h high
    lam = np.repeat((activity[:, None, None] * city.areas["density"])[None], 2, axis=0)
    rows, cols = np.arange(grid[0])[:, None], np.arange(grid[1])[None, :]
    # Day-to-day "weather" (a smooth mood of the city) and quiet weekends multiply it all.
    days = day.toordinal() + hour / 24
    amp, omega, psi = city.mood
    log_factor = 0.07 * np.sum(amp * np.sin(omega * days[:, None] + psi), axis=1)
    # Bumps of the neighbouring days reach across midnight, so sum them too.
    for offset in (-1, 0, 1):
        other = day + timedelta(days=offset)
        kind = _day_type(other)
        log_factor += _QUIET[kind] * np.exp(-0.5 * ((hour - 24 * offset - 13.0) / 4.5) ** 2)
        bumps = list(_BUMPS[kind])
        if other.weekday() in (4, 5):
            bumps += _NIGHTLIFE
        areas = dict(city.areas)
        for i, event in enumerate(traffic_events(other, seed=seed, grid=grid)):
            d2 = (rows - event.venue[0]) ** 2 + (cols - event.venue[1]) ** 2
            areas[f"venue{i}"] = np.exp(-0.5 * d2 / 0.8**2)
            bumps += [
                (0, f"venue{i}", event.start_hour - 0.75, 0.5, event.strength),
                (1, f"venue{i}", event.start_hour + 2.75, 0.5, event.strength),
            ]
        for channel, area, centre, width, strength in bumps:
            shape = strength * np.exp(-0.5 * ((hour - 24 * offset - centre) / width) ** 2)
            lam[channel] += shape[:, None, None] * areas[area]
    lam *= _TRAFFIC_SCALE * np.exp(log_factor)[None, :, None, None]
    return _traffic_dataset(day, lam, seed, grid, "expected taxi")


def _traffic_dataset(day: date, flows: np.ndarray, seed: int, grid: Grid, what: str) -> xr.Dataset:
    dims = ("time", "y", "x")
    return xr.Dataset(
        {
            name: (dims, flows[i], {"units": "1", "long_name": f"{what} {name} per 30 minutes"})
            for i, name in enumerate(("inflow", "outflow"))
        },
        coords={
            "time": (
                "time",
                _slot_times(day),
                {"standard_name": "time", "comment": "start of the 30-minute slot"},
            )
        },
        attrs={"history": history_attr("traffic", seed, grid)},
    )


def traffic_day(
    day: str | date, *, seed: int = 0, grid: Grid | None = None, missing_slot_rate: float = 0.0
) -> xr.Dataset:
    """One day of TaxiBJ-like crowd flows: Poisson counts (whole numbers, float64) of
    :func:`traffic_intensity`, dims (time, y, x). With ``missing_slot_rate`` > 0 that
    fraction of days lacks a run of 1–3 slots, as real TaxiBJ days sometimes do."""
    if not 0.0 <= missing_slot_rate <= 1.0:
        raise ConfigError(f"synthetic missing_slot_rate: expected 0..1, got {missing_slot_rate!r}")
    grid = check_grid(seed, grid, TRAFFIC_GRID)
    day = as_date(day, what="day")
    expected = traffic_intensity(day, seed=seed, grid=grid)
    lam = np.stack([expected["inflow"].values, expected["outflow"].values])
    counts = stream_rng(seed, COUNTS_STREAM, day.toordinal()).poisson(lam).astype(np.float64)
    ds = _traffic_dataset(day, counts, seed, grid, "taxi")
    rng = stream_rng(seed, MISSING_STREAM, day.toordinal())
    draw, length = rng.random(), int(rng.integers(1, 4))
    first = int(rng.integers(0, SLOTS_PER_DAY - length + 1))
    if draw < missing_slot_rate:
        ds = ds.drop_isel(time=np.arange(first, first + length))
    return ds


def _write_taxibj(ds: xr.Dataset, path: Path) -> None:
    """TaxiBJ layout: ``data`` [slot, (inflow, outflow), y, x] float64 and ``date`` byte
    strings YYYYMMDDSS with SS = 01..48 (slot 01 starts at 00:00)."""
    data = np.stack([ds["inflow"].values, ds["outflow"].values], axis=1)
    times = pd.DatetimeIndex(ds["time"].values)
    slots = (times.hour * 2 + times.minute // 30 + 1).to_numpy()
    dates = np.array(
        [f"{t:%Y%m%d}{s:02d}".encode() for t, s in zip(times, slots, strict=True)], dtype="S10"
    )
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, track_times=False)
        f.create_dataset("date", data=dates, track_times=False)


def generate_traffic_files(
    outdir: Path,
    *,
    days: int,
    start: str | date = "2024-01-01",
    seed: int = 0,
    grid: Grid | None = None,
    overwrite: bool = False,
    missing_slot_rate: float = 0.0,
) -> list[Path]:
    """Write ``taxibj_YYYYMMDD.h5`` (TaxiBJ layout, see :func:`traffic_day`) for each day from
    ``start``; return the paths in time order. Existing files are kept unless ``overwrite``."""
    grid = check_grid(seed, grid, TRAFFIC_GRID)
    return write_daily_files(
        outdir,
        kind="traffic",
        days=days,
        start=start,
        overwrite=overwrite,
        filename=lambda d: f"taxibj_{d:%Y%m%d}.h5",
        write=lambda d, p: _write_taxibj(
            traffic_day(d, seed=seed, grid=grid, missing_slot_rate=missing_slot_rate), p
        ),
    )

"""Synthetic daily feeds that look like the real ones: ERA5 NetCDF weather, TaxiBJ HDF5 traffic.

Both generators are *closed-form functions of absolute time*: any hour (weather) or 30-minute
slot (traffic) is computed from ``(seed, grid, timestamp)`` alone, without simulating from an
epoch. So generating days 1–10 and then 11–20 writes the same bytes as days 1–20 at once, and
day k+1 continues day k across midnight.

Weather (``era5_YYYYMMDD.nc``, 24 hourly steps, default 64×64 at 0.25° around 52 N, 0 E):

- msl: a background pressure gradient (the mean flow, slowly varying) plus synoptic
  anomalies, a sum of plane waves (wavelengths 300–5000 km, damped below ~300 km as by
  diffusion) advected by the mean flow (phase shift k·D(t), D = ∫U dt) with amplitudes that
  are sums of seeded sinusoids of 2–10 day periods.
- u10, v10: the geostrophic wind of that pressure (u ∝ −∂p/∂y, v ∝ ∂p/∂x, exact for plane
  waves), slowed and turned toward low pressure by surface friction (more over land).
- t2m: climate (latitude gradient, seasonal cycle, colder winters over land) + a diurnal
  cycle peaking at 14:30 local solar time (large over land, small over sea, damped by a
  cloudiness proxy: low pressure) + warm/cold sectors, the exact linear solution of
  ∂T'/∂t + U·∇T' = −v'·∂T̄/∂y − T'/τ for each wave (damped over sea).
- Noise: smooth small-scale fields seeded per 6-hour knot (cubic B-spline in time) plus white
  noise seeded per hour. A land/sea mask (smooth noise around a central island, fixed per
  seed) shapes the climate.

Traffic (``taxibj_YYYYMMDD.h5``, 48 half-hour slots, 32×32 cells): Poisson counts of an
intensity built from a city (centre, ring roads, business and residential hotspots): a daily
base activity, rush hours (inflow to business districts in the morning, outflow in the
evening, reversed for residential ones), flatter and later peaks at weekends, public holidays
behaving like Sundays, seeded concerts at a venue, and a smooth day-to-day multiplicative
"weather" factor. Day-type effects are bumps in absolute time summed over neighbouring days,
so Friday night's outflow continues after midnight.

Public pieces besides the two file writers: :func:`weather_day` / :func:`traffic_day` (one
day in memory, as the file decodes), :func:`weather_fields` (any hours), :func:`land_sea_mask`,
:func:`traffic_intensity` (the Poisson means), :func:`traffic_city` (static maps),
:func:`traffic_events` and :func:`is_holiday`.

Files are byte-reproducible: the NetCDF is NETCDF3 64-bit offset (as legacy CDS ERA5
downloads; no timestamps in the format) and the HDF5 datasets are written with
``track_times=False``; ``history`` is fixed. Values use numpy's float64 ``sin``/``exp``, so
another platform may differ in the last bit, which int16 packing almost always absorbs.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pandas as pd
import xarray as xr

from stpipe.core.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

Grid = tuple[int, int]

GENERATOR_VERSION = 1  # bump when the values for a given (seed, grid, date) change
WEATHER_GRID: Grid = (64, 64)
TRAFFIC_GRID: Grid = (32, 32)
WEATHER_VARIABLES = ("t2m", "u10", "v10", "msl")
SLOTS_PER_DAY = 48

_EPOCH = datetime(1900, 1, 1)  # ERA5's time origin; also the phase origin of every sinusoid
_R_EARTH = 6.371e6  # m
_LAT0, _RES = 52.0, 0.25  # grid centre (deg N, at 0 E) and spacing (deg)
_F0 = 2 * 7.292e-5 * np.sin(np.deg2rad(_LAT0))  # Coriolis parameter, s-1
_RHO = 1.25  # air density, kg m-3
_TAU = 36 * 3600.0  # relaxation time of temperature anomalies, s
_DTDY = -0.7e-5  # effective meridional temperature gradient of the air masses, K m-1
_PACKED_FILL = -32767
# Noise amplitudes of t2m (K), u10, v10 (m s-1), msl (Pa): (smooth 6-hourly, white hourly).
_NOISE = np.array([(0.5, 0.1), (0.8, 0.25), (0.8, 0.25), (20.0, 2.0)])

# Independent random streams per component, so adding one never shifts another.
_MASK, _WAVES, _FLOW, _KNOT, _WHITE, _CITY, _EVENT, _COUNTS, _MISSING = range(9)

_ATTRS = {
    "t2m": {"units": "K", "long_name": "2 metre temperature", "standard_name": "air_temperature"},
    "u10": {
        "units": "m s**-1",
        "long_name": "10 metre U wind component",
        "standard_name": "eastward_wind",
    },
    "v10": {
        "units": "m s**-1",
        "long_name": "10 metre V wind component",
        "standard_name": "northward_wind",
    },
    "msl": {
        "units": "Pa",
        "long_name": "Mean sea level pressure",
        "standard_name": "air_pressure_at_mean_sea_level",
    },
}


# ---------------------------------------------------------------------------- common helpers


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def _as_date(value: str | date, *, what: str) -> date:
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    else:
        try:
            day = date.fromisoformat(str(value))
        except ValueError:
            raise ConfigError(
                f"synthetic {what}: expected a date YYYY-MM-DD, got {value!r}"
            ) from None
    if day < _EPOCH.date():
        raise ConfigError(f"synthetic {what}: expected a date from 1900-01-01 on, got {day}")
    return day


def _check(seed: int, grid: Grid | None, default: Grid) -> Grid:
    """Validate ``seed`` and ``grid``; return the grid as (ny, nx) Python ints."""
    try:
        ok_seed = operator.index(seed) >= 0
    except TypeError:
        ok_seed = False
    if not ok_seed:
        raise ConfigError(f"synthetic seed: expected an integer >= 0, got {seed!r}")
    if grid is None:
        return default
    try:
        ny, nx = (operator.index(n) for n in grid)
    except (TypeError, ValueError):
        ny = nx = 0
    if min(ny, nx) < 2:
        raise ConfigError(f"synthetic grid: expected (ny, nx), integers >= 2, got {grid!r}")
    return ny, nx


def _plane_waves(coef: np.ndarray, ey: np.ndarray, ex: np.ndarray) -> np.ndarray:
    """Re Σ_k coef[t, k]·ey[k, y]·ex[k, x] → [t, y, x], as one real matrix product."""
    cx = coef[:, :, None] * ex[None]  # [t, k, x]
    rows = np.concatenate([ey.real, -ey.imag]).T  # [y, 2k]
    cols = np.concatenate([cx.real, cx.imag], axis=1).transpose(1, 0, 2)  # [2k, t, x]
    out = rows @ cols.reshape(cols.shape[0], -1)
    return out.reshape(ey.shape[1], coef.shape[0], ex.shape[1]).transpose(1, 0, 2)


@dataclass(frozen=True)
class _Waves:
    """Random plane waves exp(i(kx·x + ky·y)) on a grid, as separable factors."""

    kx: np.ndarray  # (K,) rad m-1
    ky: np.ndarray
    ex: np.ndarray  # (K, nx) complex
    ey: np.ndarray  # (K, ny) complex


def _random_waves(
    rng: np.random.Generator, n: int, km: tuple[float, float], y: np.ndarray, x: np.ndarray
) -> _Waves:
    """n waves of log-uniform wavelength in ``km`` and uniform direction; x, y in metres."""
    k = 2 * np.pi / (1e3 * np.exp(rng.uniform(np.log(km[0]), np.log(km[1]), n)))
    angle = rng.uniform(0, 2 * np.pi, n)
    kx, ky = k * np.cos(angle), k * np.sin(angle)
    return _Waves(kx, ky, np.exp(1j * np.outer(kx, x)), np.exp(1j * np.outer(ky, y)))


def _smooth_noise(
    rng: np.random.Generator,
    waves_per_field: int,
    km: tuple[float, float],
    y: np.ndarray,
    x: np.ndarray,
    count: int,
) -> np.ndarray:
    """``count`` smooth random fields [count, y, x] of unit mean square."""
    fields = []
    for _ in range(count):
        w = _random_waves(rng, waves_per_field, km, y, x)
        coef = rng.standard_normal(waves_per_field) * np.exp(
            1j * rng.uniform(0, 2 * np.pi, waves_per_field)
        )
        coef *= np.sqrt(2 / np.sum(np.abs(coef) ** 2))
        fields.append(_plane_waves(coef[None], w.ey, w.ex)[0])
    return np.stack(fields)


def _generate_files(
    outdir: Path,
    *,
    kind: str,
    days: int,
    start: str | date,
    overwrite: bool,
    filename: Callable[[date], str],
    write: Callable[[date, Path], None],
) -> list[Path]:
    """Write one file per day (atomically: a temp name, then rename); keep existing files."""
    from rich.progress import track

    if not isinstance(days, int) or days < 1:
        raise ConfigError(f"synthetic days: expected an integer >= 1, got {days!r}")
    first = _as_date(start, what="start")
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(outdir, f"cannot create the output directory: {exc.strerror}") from None
    planned = [
        (first + timedelta(days=i), outdir / filename(first + timedelta(days=i)))
        for i in range(days)
    ]
    todo = [(day, path) for day, path in planned if overwrite or not path.exists()]
    for day, path in track(
        todo, description=f"generating {kind}", disable=len(todo) <= 3, transient=True
    ):
        partial = path.with_name(f".{path.name}.partial")
        try:
            write(day, partial)
            os.replace(partial, path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise SourceError(path, f"cannot write: {exc}") from None
        log.debug("wrote %s", path)
    log.info(
        "%s: wrote %d daily %s file(s), kept %d existing, %s to %s",
        outdir,
        len(todo),
        kind,
        len(planned) - len(todo),
        planned[0][0],
        planned[-1][0],
    )
    return [path for _, path in planned]


# ------------------------------------------------------------------------------------ weather


@dataclass(frozen=True)
class _Weather:
    lat: np.ndarray  # (ny,) deg N, descending
    lon: np.ndarray  # (nx,) deg E, signed (−180..180), ascending
    y: np.ndarray  # (ny,) m north of the centre
    x: np.ndarray  # (nx,) m east of the centre
    lsm: np.ndarray  # (ny, nx) land fraction, 0..1
    waves: _Waves  # synoptic pressure waves
    phase: np.ndarray  # (K,)
    amp: np.ndarray  # (K, J) Pa
    omega: np.ndarray  # (K, J) rad s-1
    psi: np.ndarray  # (K, J)
    flow: np.ndarray  # (2, 4): per component (mean, swing, omega, psi), m s-1


def _latlon(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(latitude descending, longitude −180..180 ascending), deg, centred on 52 N, 0 E."""
    ny, nx = grid
    lat = _LAT0 - _RES * (ny // 2) + _RES * np.arange(ny)[::-1]
    lon = -_RES * (nx // 2) + _RES * np.arange(nx)
    if lat[0] > 90 or nx * _RES > 360:
        raise ConfigError(f"synthetic grid: {grid} at {_RES}° does not fit on the globe")
    return lat, lon


@lru_cache(maxsize=8)
def _weather(seed: int, grid: Grid) -> _Weather:
    lat, lon = _latlon(grid)
    y = _R_EARTH * np.deg2rad(lat - _LAT0)
    x = _R_EARTH * np.cos(np.deg2rad(_LAT0)) * np.deg2rad(lon)

    # Land: a UK-sized island at the centre with noisy coasts, and other land by chance.
    island = np.exp(-0.5 * ((y[:, None] / 450e3) ** 2 + (x[None, :] / 250e3) ** 2))
    relief = _smooth_noise(_rng(seed, _MASK), 24, (250.0, 1500.0), y, x, 1)[0]
    lsm = 1 / (1 + np.exp(-(0.5 * relief + 1.6 * island - 0.8) / 0.12))

    rng = _rng(seed, _WAVES)
    n_waves, n_sines = 48, 3
    waves = _random_waves(rng, n_waves, (300.0, 5000.0), y, x)
    k = np.hypot(waves.kx, waves.ky)
    wavelength = 2 * np.pi / k
    spectrum = (wavelength / 1e6) ** 1.8 * np.exp(-((300e3 / wavelength) ** 2))
    amp = spectrum[:, None] * rng.standard_normal((n_waves, n_sines))
    # Normalise so the geostrophic wind of the anomalies has an rms of 9 m s-1.
    grad2 = np.sum(k[:, None] ** 2 * amp**2) / 4
    amp *= 9.0 * _RHO * _F0 / np.sqrt(grad2)
    omega = 2 * np.pi / (3600 * 24 * rng.uniform(2.0, 10.0, (n_waves, n_sines)))
    psi = rng.uniform(0, 2 * np.pi, (n_waves, n_sines))
    phase = rng.uniform(0, 2 * np.pi, n_waves)

    r = _rng(seed, _FLOW)
    periods = 2 * np.pi / (3600 * 24 * r.uniform(4.0, 20.0, 2))
    flow = np.array(
        [
            [r.uniform(6.0, 10.0), r.uniform(2.0, 5.0), periods[0], r.uniform(0, 2 * np.pi)],
            [r.uniform(-1.0, 2.0), r.uniform(2.0, 4.0), periods[1], r.uniform(0, 2 * np.pi)],
        ]
    )
    return _Weather(lat, lon, y, x, lsm, waves, phase, amp, omega, psi, flow)


def _relaxed(amp: np.ndarray, omega: np.ndarray, arg: np.ndarray) -> np.ndarray:
    """R(t) solving dR/dt = Σ amp·sin(arg) − R/τ (the periodic solution), summed over the
    last axis; arg = omega·t + psi."""
    return np.sum(amp * np.imag(np.exp(1j * arg) / (1j * omega + 1 / _TAU)), axis=-1)


def _knot_noise(seed: int, model: _Weather, hours: np.ndarray) -> np.ndarray:
    """Smooth noise [4, t, y, x] of unit variance: a cubic B-spline through fields seeded per
    6-hour knot, so any hour needs only its four knots."""
    knot, frac = np.divmod(hours, 6)
    u = frac / 6.0
    weights = (
        np.stack([(1 - u) ** 3, 3 * u**3 - 6 * u**2 + 4, -3 * u**3 + 3 * u**2 + 3 * u + 1, u**3])
        / 6
    )
    weights /= np.sqrt(np.sum(weights**2, axis=0))
    fields = {
        n: _smooth_noise(
            _rng(seed, _KNOT, int(n) + 1),
            16,
            (80.0, 300.0),
            model.y,
            model.x,
            len(WEATHER_VARIABLES),
        )
        for n in range(int(knot.min()) - 1, int(knot.max()) + 3)
    }
    out = np.zeros((len(WEATHER_VARIABLES), len(hours), model.y.size, model.x.size))
    for i, n in enumerate(knot):
        for j in range(4):
            out[:, i] += weights[j, i] * fields[int(n) - 1 + j]
    return out


def weather_fields(
    hours: Iterable[int], *, seed: int = 0, grid: Grid | None = None
) -> dict[str, np.ndarray]:
    """The weather at whole ``hours`` since 1900-01-01 00 UTC: arrays [time, latitude,
    longitude] (latitude descending, as :func:`weather_grid`) of t2m (K), u10 and v10
    (m s-1), msl (Pa), float64."""
    grid = _check(seed, grid, WEATHER_GRID)
    m = _weather(seed, grid)
    h = np.asarray(list(hours), dtype=np.int64)
    t = h * 3600.0

    # Mean flow U(t) = mean + swing·sin(ωt + ψ) and its displacement D(t) = ∫U dt.
    mean, swing, om, ps = m.flow.T
    arg = om[None] * t[:, None] + ps[None]
    flow = mean + swing * np.sin(arg)  # [t, (u, v)]
    shift = mean * t[:, None] - swing / om * np.cos(arg)

    arg = m.omega[None] * t[:, None, None] + m.psi[None]
    amp = np.sum(m.amp * np.sin(arg), axis=-1)  # [t, K] Pa
    lag = _relaxed(m.amp, m.omega, arg)  # [t, K] Pa s
    wv = m.waves
    carrier = np.exp(1j * (m.phase - np.outer(shift[:, 0], wv.kx) - np.outer(shift[:, 1], wv.ky)))
    # Pressure, its gradient (exact for plane waves) and the warm/cold sectors: −v'·∂T̄/∂y
    # relaxed and carried with the waves; plus the same for the mean meridional flow (a
    # southerly spell warms the whole region).
    p_anom, dpdx, dpdy, t_waves = np.split(
        _plane_waves(
            np.concatenate(
                [
                    amp * carrier,
                    1j * wv.kx * amp * carrier,
                    1j * wv.ky * amp * carrier,
                    -1j * wv.kx * _DTDY / (_RHO * _F0) * lag * carrier,
                ]
            ),
            wv.ey,
            wv.ex,
        ),
        4,
    )
    v_lag = _relaxed(swing[1], om[1], (om[1] * t + ps[1])[:, None])
    t_adv = t_waves - _DTDY * v_lag[:, None, None]

    yy, xx = m.y[None, :, None], m.x[None, None, :]
    msl = 101300.0 - _RHO * _F0 * (flow[:, 0, None, None] * yy - flow[:, 1, None, None] * xx)
    ug = flow[:, 0, None, None] - dpdy / (_RHO * _F0)
    vg = flow[:, 1, None, None] + dpdx / (_RHO * _F0)

    land = m.lsm[None]
    solar = (h[:, None] % 24) + m.lon[None, :] / 15.0  # local solar time, h
    diurnal = np.cos(2 * np.pi * (solar - 14.5) / 24)[:, None, :]  # [t, 1, x]
    days = t / 86400.0
    summer = 0.5 * (1 - np.cos(2 * np.pi * (days + 10) / 365.2425))[:, None, None]  # 0 at solstice
    cold_season = np.cos(2 * np.pi * (days[:, None, None] - 20 - 25 * (1 - land)) / 365.2425)
    cloud = 1 / (1 + np.exp(p_anom / 800.0))

    # Surface friction: weaker wind turned toward low pressure, more so over land, where
    # daytime mixing brings stronger wind down.
    speed = (0.75 - 0.3 * land) * (1 + 0.15 * land * diurnal)
    turn = np.deg2rad(15 + 20 * land)
    smooth = _NOISE[:, 0, None, None, None] * _knot_noise(seed, m, h)
    white = _NOISE[:, 1, None, None, None] * np.stack(
        [_rng(seed, _WHITE, int(i)).standard_normal((4, m.y.size, m.x.size)) for i in h], axis=1
    )
    noise = smooth + white
    t2m = (
        283.0
        - 0.55 * (m.lat[None, :, None] - _LAT0)
        - (4.5 + 2.5 * land) * cold_season
        + (0.3 + 4.0 * land) * (0.55 + 0.6 * summer) * (1 - 0.6 * cloud) * diurnal
        + (0.4 + 0.45 * land) * t_adv
        + noise[0]
    )
    u10 = speed * (ug * np.cos(turn) - vg * np.sin(turn)) + noise[1]
    v10 = speed * (ug * np.sin(turn) + vg * np.cos(turn)) + noise[2]
    msl = msl + p_anom + noise[3]
    return {"t2m": t2m, "u10": u10, "v10": v10, "msl": msl}


def _hours_since_epoch(day: date) -> int:
    return (day - _EPOCH.date()).days * 24


def weather_grid(grid: Grid | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(latitude descending, longitude in 0..360) of the weather grid, deg, float32."""
    lat, lon = _latlon(_check(0, grid, WEATHER_GRID))
    return lat.astype(np.float32), np.mod(lon, 360.0).astype(np.float32)


def land_sea_mask(*, seed: int = 0, grid: Grid | None = None) -> xr.DataArray:
    """Land fraction (0 sea, 1 land) on (latitude, longitude), fixed per seed."""
    grid = _check(seed, grid, WEATHER_GRID)
    lat, lon = weather_grid(grid)
    return xr.DataArray(
        _weather(seed, grid).lsm.astype(np.float32),
        dims=("latitude", "longitude"),
        coords={"latitude": lat, "longitude": lon},
        name="lsm",
        attrs={"units": "1", "long_name": "Land-sea mask", "standard_name": "land_binary_mask"},
    )


def weather_day(day: str | date, *, seed: int = 0, grid: Grid | None = None) -> xr.Dataset:
    """One day of hourly weather, laid out as an ERA5 CDS file decodes: dims (time, latitude,
    longitude), latitude descending, longitude 0..360; t2m (K), u10, v10 (m s**-1), msl (Pa),
    float32."""
    grid = _check(seed, grid, WEATHER_GRID)
    day = _as_date(day, what="day")
    hours = _hours_since_epoch(day) + np.arange(24)
    fields = weather_fields(hours, seed=seed, grid=grid)
    lat, lon = weather_grid(grid)
    dims = ("time", "latitude", "longitude")
    return xr.Dataset(
        {name: (dims, fields[name].astype(np.float32), _ATTRS[name]) for name in WEATHER_VARIABLES},
        coords={
            "time": (
                "time",
                np.datetime64(_EPOCH, "ns") + hours.astype("timedelta64[h]"),
                {"standard_name": "time"},
            ),
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": (
                "longitude",
                lon,
                {"units": "degrees_east", "standard_name": "longitude"},
            ),
        },
        attrs={"Conventions": "CF-1.6", "history": _history("weather", seed, grid)},
    )


def _history(kind: str, seed: int, grid: Grid) -> str:
    return (
        f"synthetic {kind} by stpipe.io.sources.synthetic v{GENERATOR_VERSION} "
        f"(seed={seed}, grid={grid[0]}x{grid[1]}); not real data"
    )


def _pack(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """int16 packing as ERA5 files have it: per-file scale_factor and add_offset, values in
    ±32766 so none collides with the fill value −32767."""
    lo, hi = float(values.min()), float(values.max())
    scale = (hi - lo) / 65532 if hi > lo else 1.0
    offset = (hi + lo) / 2
    return np.round((values - offset) / scale).astype(np.int16), scale, offset


def _write_era5(ds: xr.Dataset, path: Path) -> None:
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as nc:
        nc.set_fill_off()  # every value is written; pre-filling records only costs time
        nc.createDimension("longitude", ds.sizes["longitude"])
        nc.createDimension("latitude", ds.sizes["latitude"])
        nc.createDimension("time", None)
        for name, long_name in (("longitude", "longitude"), ("latitude", "latitude")):
            var = nc.createVariable(name, "f4", (name,))
            var.units = ds[name].attrs["units"]
            var.long_name = long_name
            var.standard_name = long_name
            var[:] = ds[name].values
        var = nc.createVariable("time", "i4", ("time",))
        var.units = "hours since 1900-01-01 00:00:00.0"
        var.long_name = "time"
        var.standard_name = "time"
        var.calendar = "gregorian"
        var[:] = ((ds["time"].values - np.datetime64(_EPOCH)) // np.timedelta64(1, "h")).astype(
            np.int32
        )
        for name in WEATHER_VARIABLES:
            packed, scale, offset = _pack(ds[name].values.astype(np.float64))
            var = nc.createVariable(
                name, "i2", ("time", "latitude", "longitude"), fill_value=np.int16(_PACKED_FILL)
            )
            var.set_auto_maskandscale(False)
            var.scale_factor = np.float64(scale)
            var.add_offset = np.float64(offset)
            var.missing_value = np.int16(_PACKED_FILL)
            for key, value in _ATTRS[name].items():
                var.setncattr(key, value)
            var[:] = packed
        nc.Conventions = ds.attrs["Conventions"]
        nc.history = ds.attrs["history"]


def generate_weather_files(
    outdir: Path,
    *,
    days: int,
    start: str | date = "2024-01-01",
    seed: int = 0,
    grid: Grid | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``era5_YYYYMMDD.nc`` (ERA5 CDS NetCDF layout, see :func:`weather_day`) for each
    day from ``start``; return the paths in time order. Existing files are kept unless
    ``overwrite``."""
    grid = _check(seed, grid, WEATHER_GRID)
    return _generate_files(
        outdir,
        kind="weather",
        days=days,
        start=start,
        overwrite=overwrite,
        filename=lambda d: f"era5_{d:%Y%m%d}.nc",
        write=lambda d, p: _write_era5(weather_day(d, seed=seed, grid=grid), p),
    )


# ------------------------------------------------------------------------------------ traffic

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
    rng = _rng(seed, _CITY)
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
    grid = _check(seed, grid, TRAFFIC_GRID)
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
    grid = _check(seed, grid, TRAFFIC_GRID)
    day = _as_date(day, what="day")
    rng = _rng(seed, _EVENT, day.toordinal())
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
    grid = _check(seed, grid, TRAFFIC_GRID)
    day = _as_date(day, what="day")
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
        attrs={"history": _history("traffic", seed, grid)},
    )


def traffic_day(
    day: str | date, *, seed: int = 0, grid: Grid | None = None, missing_slot_rate: float = 0.0
) -> xr.Dataset:
    """One day of TaxiBJ-like crowd flows: Poisson counts (whole numbers, float64) of
    :func:`traffic_intensity`, dims (time, y, x). With ``missing_slot_rate`` > 0 that
    fraction of days lacks a run of 1–3 slots, as real TaxiBJ days sometimes do."""
    if not 0.0 <= missing_slot_rate <= 1.0:
        raise ConfigError(f"synthetic missing_slot_rate: expected 0..1, got {missing_slot_rate!r}")
    grid = _check(seed, grid, TRAFFIC_GRID)
    day = _as_date(day, what="day")
    expected = traffic_intensity(day, seed=seed, grid=grid)
    lam = np.stack([expected["inflow"].values, expected["outflow"].values])
    counts = _rng(seed, _COUNTS, day.toordinal()).poisson(lam).astype(np.float64)
    ds = _traffic_dataset(day, counts, seed, grid, "taxi")
    rng = _rng(seed, _MISSING, day.toordinal())
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
    grid = _check(seed, grid, TRAFFIC_GRID)
    return _generate_files(
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

"""Synthetic ERA5-like weather: ``era5_YYYYMMDD.nc``, 24 hourly steps, default 64×64 at 0.25°
around 52 N, 0 E.

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
- A regime change (:class:`Regime`, optional): from a given time on, the mean flow turns
  and the air mass cools (or warms), reached smoothly over a few hours and kept after.
  It tests forecasts whose validation days came before it (climatology fitted before a
  cold spell is off by its anomaly; persistence is not).
- Noise: smooth small-scale fields seeded per 6-hour knot (cubic B-spline in time) plus white
  noise seeded per hour. A land/sea mask (smooth noise around a central island, fixed per
  seed) shapes the climate.

Public pieces besides :func:`generate_weather_files`: :func:`weather_day` (one day in
memory, as the file decodes), :func:`weather_fields` (any hours), :func:`weather_grid` and
:func:`land_sea_mask`. The NetCDF is NETCDF3 64-bit offset (as legacy CDS ERA5 downloads;
no timestamps in the format), int16-packed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

from stpipe.core.errors import ConfigError
from stpipe.io.sources.synthetic.common import (
    EPOCH,
    FLOW_STREAM,
    KNOT_STREAM,
    MASK_STREAM,
    WAVES_STREAM,
    WHITE_STREAM,
    Grid,
    as_date,
    check_grid,
    history_attr,
    stream_rng,
    write_daily_files,
)

WEATHER_GRID: Grid = (64, 64)
WEATHER_VARIABLES = ("t2m", "u10", "v10", "msl")

_R_EARTH = 6.371e6  # m
_LAT0, _RES = 52.0, 0.25  # grid centre (deg N, at 0 E) and spacing (deg)
_F0 = 2 * 7.292e-5 * np.sin(np.deg2rad(_LAT0))  # Coriolis parameter, s-1
_RHO = 1.25  # air density, kg m-3
_TAU = 36 * 3600.0  # relaxation time of temperature anomalies, s
_DTDY = -0.7e-5  # effective meridional temperature gradient of the air masses, K m-1
_PACKED_FILL = -32767
# Noise amplitudes of t2m (K), u10, v10 (m s-1), msl (Pa): (smooth 6-hourly, white hourly).
_NOISE = np.array([(0.5, 0.1), (0.8, 0.25), (0.8, 0.25), (20.0, 2.0)])

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


@dataclass(frozen=True)
class Regime:
    """A lasting change of regime from ``start`` (UTC): the mean flow changes by ``flow``
    (Δu, Δv, m s-1) and t2m by ``t2m`` K over land (60 % of it over sea), both reached
    along a logistic ramp centred on ``start`` that takes ``ramp_hours`` from 2 % to 98 %."""

    start: datetime
    flow: tuple[float, float] = (-4.0, -4.0)
    t2m: float = -4.0
    ramp_hours: float = 6.0

    def ramp(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ramp s(t) (0 before, 1 after) and its integral ∫s dt (s), at ``t`` seconds
        since 1900-01-01, both closed-form (the integral is τ·log(1 + e^(t−t0)/τ))."""
        tau = self.ramp_hours * 3600.0 / 8
        z = (t - (self.start - EPOCH).total_seconds()) / tau
        # the logistic as tanh: 1 / (1 + e^−z) overflows (a warning) far from the start
        return 0.5 * (1 + np.tanh(z / 2)), tau * np.logaddexp(0.0, z)

    def describe(self) -> str:
        return (
            f"regime change at {self.start:%Y-%m-%dT%H:%M}: flow {self.flow[0]:+g}, "
            f"{self.flow[1]:+g} m/s, t2m {self.t2m:+g} K"
        )


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
    relief = _smooth_noise(stream_rng(seed, MASK_STREAM), 24, (250.0, 1500.0), y, x, 1)[0]
    lsm = 1 / (1 + np.exp(-(0.5 * relief + 1.6 * island - 0.8) / 0.12))

    rng = stream_rng(seed, WAVES_STREAM)
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

    r = stream_rng(seed, FLOW_STREAM)
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
            stream_rng(seed, KNOT_STREAM, int(n) + 1),
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


def _noise(seed: int, model: _Weather, hours: np.ndarray) -> np.ndarray:
    """Noise [4, t, y, x] of t2m, u10, v10, msl in their units: smooth 6-hourly + white hourly."""
    smooth = _NOISE[:, 0, None, None, None] * _knot_noise(seed, model, hours)
    white = _NOISE[:, 1, None, None, None] * np.stack(
        [
            stream_rng(seed, WHITE_STREAM, int(i)).standard_normal((4, model.y.size, model.x.size))
            for i in hours
        ],
        axis=1,
    )
    return smooth + white


def _mean_flow(
    m: _Weather, t: np.ndarray, regime: Regime | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At ``t`` seconds: the mean flow U(t) = mean + swing·sin(ωt + ψ) [t, (u, v)] m s-1, its
    displacement D(t) = ∫U dt [t, 2] m, and the regime's t2m change [t] K (0 without one)."""
    mean, swing, om, ps = m.flow.T
    arg = om[None] * t[:, None] + ps[None]
    flow = mean + swing * np.sin(arg)
    shift = mean * t[:, None] - swing / om * np.cos(arg)
    if regime is None:
        return flow, shift, np.zeros_like(t)
    ramp, ramp_integral = regime.ramp(t)
    flow = flow + np.outer(ramp, regime.flow)
    shift = shift + np.outer(ramp_integral, regime.flow)
    return flow, shift, regime.t2m * ramp


def weather_fields(
    hours: Iterable[int],
    *,
    seed: int = 0,
    grid: Grid | None = None,
    regime: Regime | None = None,
) -> dict[str, np.ndarray]:
    """The weather at whole ``hours`` since 1900-01-01 00 UTC: arrays [time, latitude,
    longitude] (latitude descending, as :func:`weather_grid`) of t2m (K), u10 and v10
    (m s-1), msl (Pa), float64; with ``regime``, changed from its start on."""
    grid = check_grid(seed, grid, WEATHER_GRID)
    m = _weather(seed, grid)
    h = np.asarray(list(hours), dtype=np.int64)
    t = h * 3600.0

    flow, shift, cooling = _mean_flow(m, t, regime)
    _, swing, om, ps = m.flow.T
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
    noise = _noise(seed, m, h)
    t2m = (
        283.0
        - 0.55 * (m.lat[None, :, None] - _LAT0)
        - (4.5 + 2.5 * land) * cold_season
        + (0.3 + 4.0 * land) * (0.55 + 0.6 * summer) * (1 - 0.6 * cloud) * diurnal
        + (0.4 + 0.45 * land) * t_adv
        + (0.6 + 0.4 * land) * cooling[:, None, None]
        + noise[0]
    )
    u10 = speed * (ug * np.cos(turn) - vg * np.sin(turn)) + noise[1]
    v10 = speed * (ug * np.sin(turn) + vg * np.cos(turn)) + noise[2]
    msl = msl + p_anom + noise[3]
    return {"t2m": t2m, "u10": u10, "v10": v10, "msl": msl}


def _hours_since_epoch(day: date) -> int:
    return (day - EPOCH.date()).days * 24


def weather_grid(grid: Grid | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(latitude descending, longitude in 0..360) of the weather grid, deg, float32."""
    lat, lon = _latlon(check_grid(0, grid, WEATHER_GRID))
    return lat.astype(np.float32), np.mod(lon, 360.0).astype(np.float32)


def land_sea_mask(*, seed: int = 0, grid: Grid | None = None) -> xr.DataArray:
    """Land fraction (0 sea, 1 land) on (latitude, longitude), fixed per seed."""
    grid = check_grid(seed, grid, WEATHER_GRID)
    lat, lon = weather_grid(grid)
    return xr.DataArray(
        _weather(seed, grid).lsm.astype(np.float32),
        dims=("latitude", "longitude"),
        coords={"latitude": lat, "longitude": lon},
        name="lsm",
        attrs={"units": "1", "long_name": "Land-sea mask", "standard_name": "land_binary_mask"},
    )


def weather_day(
    day: str | date, *, seed: int = 0, grid: Grid | None = None, regime: Regime | None = None
) -> xr.Dataset:
    """One day of hourly weather, laid out as an ERA5 CDS file decodes: dims (time, latitude,
    longitude), latitude descending, longitude 0..360; t2m (K), u10, v10 (m s**-1), msl (Pa),
    float32 (with ``regime``: :func:`weather_fields`)."""
    grid = check_grid(seed, grid, WEATHER_GRID)
    day = as_date(day, what="day")
    hours = _hours_since_epoch(day) + np.arange(24)
    fields = weather_fields(hours, seed=seed, grid=grid, regime=regime)
    history = history_attr("weather", seed, grid)
    if regime is not None:
        history += f"; {regime.describe()}"
    lat, lon = weather_grid(grid)
    dims = ("time", "latitude", "longitude")
    return xr.Dataset(
        {name: (dims, fields[name].astype(np.float32), _ATTRS[name]) for name in WEATHER_VARIABLES},
        coords={
            "time": (
                "time",
                np.datetime64(EPOCH, "ns") + hours.astype("timedelta64[h]"),
                {"standard_name": "time"},
            ),
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": (
                "longitude",
                lon,
                {"units": "degrees_east", "standard_name": "longitude"},
            ),
        },
        attrs={"Conventions": "CF-1.6", "history": history},
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
        var[:] = ((ds["time"].values - np.datetime64(EPOCH)) // np.timedelta64(1, "h")).astype(
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
    regime: Regime | None = None,
) -> list[Path]:
    """Write ``era5_YYYYMMDD.nc`` (ERA5 CDS NetCDF layout, see :func:`weather_day`) for each
    day from ``start``, with ``regime`` if given; return the paths in time order. Existing
    files are kept unless ``overwrite``."""
    grid = check_grid(seed, grid, WEATHER_GRID)
    return write_daily_files(
        outdir,
        kind="weather",
        days=days,
        start=start,
        overwrite=overwrite,
        filename=lambda d: f"era5_{d:%Y%m%d}.nc",
        write=lambda d, p: _write_era5(weather_day(d, seed=seed, grid=grid, regime=regime), p),
    )

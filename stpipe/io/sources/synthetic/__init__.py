"""Synthetic daily feeds that look like the real ones: ERA5 NetCDF weather
(:mod:`~stpipe.io.sources.synthetic.weather`) and TaxiBJ HDF5 traffic
(:mod:`~stpipe.io.sources.synthetic.traffic`).

Both generators are *closed-form functions of absolute time*: any hour (weather) or 30-minute
slot (traffic) is computed from ``(seed, grid, timestamp)`` alone, without simulating from an
epoch. So generating days 1–10 and then 11–20 writes the same bytes as days 1–20 at once, and
day k+1 continues day k across midnight.

Files are byte-reproducible: the NetCDF is NETCDF3 64-bit offset (as legacy CDS ERA5
downloads; no timestamps in the format) and the HDF5 datasets are written with
``track_times=False``; ``history`` is fixed. Values use numpy's float64 ``sin``/``exp``, so
another platform may differ in the last bit, which int16 packing almost always absorbs.
"""

from stpipe.io.sources.synthetic.common import GENERATOR_VERSION, Grid
from stpipe.io.sources.synthetic.traffic import (
    SLOTS_PER_DAY,
    TRAFFIC_GRID,
    TrafficEvent,
    generate_traffic_files,
    is_holiday,
    traffic_city,
    traffic_day,
    traffic_events,
    traffic_intensity,
)
from stpipe.io.sources.synthetic.weather import (
    WEATHER_GRID,
    WEATHER_VARIABLES,
    Regime,
    generate_weather_files,
    land_sea_mask,
    weather_day,
    weather_fields,
    weather_grid,
)

__all__ = [
    "GENERATOR_VERSION",
    "SLOTS_PER_DAY",
    "TRAFFIC_GRID",
    "WEATHER_GRID",
    "WEATHER_VARIABLES",
    "Grid",
    "Regime",
    "TrafficEvent",
    "generate_traffic_files",
    "generate_weather_files",
    "is_holiday",
    "land_sea_mask",
    "traffic_city",
    "traffic_day",
    "traffic_events",
    "traffic_intensity",
    "weather_day",
    "weather_fields",
    "weather_grid",
]

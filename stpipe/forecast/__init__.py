"""Batch forecasts: the champion over the whole grid, into a crash-safe forecast store.

- :mod:`~stpipe.forecast.predict`: the input window, tiling, stitching (torch);
- :mod:`~stpipe.forecast.store`: the forecast Zarr store and its commit protocol;
- :mod:`~stpipe.forecast.verify`: scoring past forecasts once their truth has arrived.

The names below are imported on first use, so reading or writing the store does not load
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "forecast_grid": "predict",
    "input_window_end": "predict",
    "ForecastWrite": "store",
    "forecast_attrs": "store",
    "open_forecasts": "store",
    "write_forecast": "store",
    "Verification": "verify",
    "verifiable_inits": "verify",
    "verify_forecast": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""stpipe: spatiotemporal forecasting on gridded data.

Stages, one module each, data flowing one way: ``sources`` → ``store`` → ``patches`` →
``loader`` → ``models`` → ``train`` → ``evaluate`` → ``tracking`` → ``forecast``.
The names below are imported lazily so that ``import stpipe`` stays cheap and the core
works without prefect or mlflow installed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "stpipe.config",
    "Config": "stpipe.config",
    "open_store": "stpipe.store",
    "ingest": "stpipe.store",
    "read_source_file": "stpipe.sources",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stpipe' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""All of stpipe's MLflow use: runs, logged models, the registry and its aliases.

- :mod:`~stpipe.tracking.client`: the tracking URI, retries, errors, no leaked global state;
- :mod:`~stpipe.tracking.runs`: what a training run logs;
- :mod:`~stpipe.tracking.model`: pickle-free logged models and loading them back;
- :mod:`~stpipe.tracking.card`: what a logged model was trained for (no MLflow needed);
- :mod:`~stpipe.tracking.registry`: versions, the champion, promotion;
- :mod:`~stpipe.tracking.compare`: the versions side by side.

The names below are imported on first use, so importing :mod:`stpipe.tracking.card` (as
the forecast code does) does not load MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Grid": "card",
    "ModelCard": "card",
    "card_for": "card",
    "Tracking": "client",
    "connect": "client",
    "tracking_uri": "client",
    "VersionTable": "compare",
    "version_table": "compare",
    "RegisteredForecaster": "model",
    "load_model": "model",
    "log_model": "model",
}
_MODULES = ("card", "client", "compare", "model", "registry", "runs")

__all__ = sorted([*_EXPORTS, "registry", "runs"])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

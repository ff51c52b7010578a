"""Forecasters by name: the learned models and the baselines, one interface.

``build_model(cfg, ...)`` returns a :class:`~stpipe.models.common.Forecaster` whose
``forward(batch)`` gives [B, L, V_out, H, W] in physical units (batch contract in
:mod:`stpipe.models.common`). ``[model] name`` picks a row of the model table
(:data:`~stpipe.models.registry.MODELS`: settings class and builder):

- ``scnn_lstm``, ``scnn_gru``: :class:`~stpipe.models.scnn.ScnnRnn` (the model family);
- ``convlstm``: :class:`~stpipe.models.convlstm.ConvLSTM` (Shi et al. 2015 reference);
- ``persistence``, ``climatology``, ``persistence_clim_change``:
  :class:`~stpipe.models.baselines.Baseline`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MODELS": "stpipe.models.registry",
    "ModelEntry": "stpipe.models.registry",
    "ModelInputs": "stpipe.models.registry",
    "build_model": "stpipe.models.registry",
    "model_settings": "stpipe.models.registry",
    "Climatology": "stpipe.models.climatology",
    "ClimatologyLookup": "stpipe.models.climatology",
    "climatology_period": "stpipe.models.climatology",
    "Batch": "stpipe.models.common",
    "Forecaster": "stpipe.models.common",
    "count_parameters": "stpipe.models.common",
    "flops_per_sample": "stpipe.models.common",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The package's names, each imported from its module when first used: the
    configuration's schema imports :mod:`~stpipe.models.settings` and
    :mod:`~stpipe.models.registry`, which must not bring torch with this package."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

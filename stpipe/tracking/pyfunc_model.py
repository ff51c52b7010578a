"""The ``python_function`` model of a logged stpipe forecaster (MLflow "models from code").

:func:`stpipe.tracking.model.log_model` logs this file as the model's code, with the
``torch.export`` program as the artifact ``program``. Its ``model_config`` names the
program's positional inputs (``"inputs"``) and gives, for those that are empty, the shape
past the batch dimension and the dtype (``"empty_inputs"``: JSON cannot carry an array with
a zero-size dimension, so they are neither in the signature nor in a request).

MLflow runs this file whenever it loads the model as pyfunc (``mlflow.pyfunc.load_model``,
``mlflow models serve``), in an environment that need not have stpipe: it imports only
torch, numpy and mlflow. Nothing of it is pickled (MLflow copies the file next to the
MLmodel), and the program is checked pickle-free before ``torch.export.load`` reads it,
whatever ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` says.

Input: a dict of named numpy arrays, one per tensor of the model's signature (``x``
[B, T_in, V_in, H, W] physical units, ``x_time`` [B, T_in, F], ``y_time`` [B, L, F],
``x_times`` [B, T_in] and ``y_times`` [B, L] int64 ns since the epoch, ``static``
[B, S, H, W], ``row0`` and ``col0`` [B] int64 grid offsets of the patches), less the
empty ones (e.g. ``static`` for a model without static fields); served as
``{"inputs": {name: nested lists}}``. Output: the forecast, float32 [B, L, V_out, H, W] in
physical units.
"""

from __future__ import annotations

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext

# MLflow's check that a PT2 archive holds no pickle payload (stpipe's own loader runs it too).
from mlflow.pytorch import _validate_pt2_archive_is_pickle_free


class ExportedForecaster(PythonModel):
    """The exported program behind MLflow's pyfunc interface."""

    def load_context(self, context: PythonModelContext) -> None:
        archive = context.artifacts["program"]
        _validate_pt2_archive_is_pickle_free(archive)
        self.program = torch.export.load(archive).module()
        self.inputs = tuple(context.model_config["inputs"])
        self.empty = context.model_config["empty_inputs"]

    # ``model_input`` has no type hint: MLflow's hint-based validation has no form for a dict
    # of arrays; the model's TensorSpec signature validates it. MLflow checks for the hint
    # when the class is defined and warns on every load unless told this model skips it.
    _skip_type_hint_validation = True

    def predict(self, context: PythonModelContext, model_input, params=None) -> np.ndarray:
        """``model_input``: dict of named numpy arrays (module docstring) → [B, L, V_out, H, W]."""
        batch = len(next(iter(model_input.values())))
        arrays = {
            name: np.empty((batch, *spec["shape"]), dtype=spec["dtype"])
            for name, spec in self.empty.items()
        } | dict(model_input)
        tensors = [torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in self.inputs]
        with torch.no_grad():
            return self.program(*tensors).numpy()


set_model(ExportedForecaster())

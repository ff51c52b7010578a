"""Logged models: ``torch.export`` programs that load without unpickling, forecast without
stpipe's config, and serve through MLflow's ``python_function`` interface.

:func:`log_model` exports ``forward`` with ``torch.export`` into a PT2 archive: the graph as
JSON, every weight and buffer (normalisation statistics, climatology) as raw tensor bytes,
and the sample inputs as a ``torch.save`` record. It logs that archive as the artifact of a
pyfunc model from code, :mod:`stpipe.tracking.pyfunc_model` (MLflow copies the file, it
pickles nothing), so that ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` call it
with a dict of named arrays (that module's docstring gives the format).

stpipe itself never goes through pyfunc: :func:`load_model` reads the archive directly and
never unpickles, whatever ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` says (MLflow unpickles
unless it is false, and it defaults to true). It refuses a model directory holding any data
but the archive (:data:`PROGRAM_FILE`, or :data:`LEGACY_PROGRAM_FILE` for models logged
with the pytorch flavour before; a pickled ``data/model.pth`` runs arbitrary code when
loaded), checks every record of the archive with MLflow's own validator (only JSON, raw
tensors, and records that torch's restricted ``weights_only`` unpickler reads: tensors and
primitive containers), and only then hands it to ``torch.export.load``, which would
otherwise fall back to unrestricted unpickling.

``torch.export`` takes positional tensors, not the batch dict of
:mod:`stpipe.models.common`, so the logged program is the forecaster behind
:class:`_TensorInputs` (the batch keys of :data:`BATCH_INPUTS` in that order, batch
dimension dynamic), and :class:`RegisteredForecaster` turns it back into a forecaster with
``forward(batch)``. What the program was trained for (variables, leads, step, patch shape,
grid) travels as the :class:`~stpipe.core.card.ModelCard` in the MLmodel ``metadata``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature

# MLflow's check that a PT2 archive holds no pickle payload; its public loader runs it only
# when MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false, stpipe runs it always.
from mlflow.pytorch import _validate_pt2_archive_is_pickle_free
from mlflow.types.schema import Schema, TensorSpec
from torch import Tensor, nn
from torch.export import ExportedProgram
from torch.export.passes import move_to_device_pass

from stpipe.core.card import ModelCard
from stpipe.core.errors import TrackingError
from stpipe.tracking.client import Tracking, fluent_scope, tracking_errors

BATCH_INPUTS = ("x", "x_time", "y_time", "x_times", "y_times", "static", "row0", "col0")
MODEL_ARTIFACT = "model"
# The pyfunc model's code (MLflow runs it to load the model as pyfunc; stpipe never does).
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
PROGRAM_FILE = "artifacts/model.pt2"
# Where models logged with the pytorch flavour (before the pyfunc model) keep the archive.
LEGACY_PROGRAM_FILE = "data/model.pt2"
PROGRAM_FILES = (PROGRAM_FILE, LEGACY_PROGRAM_FILE)
# torch.export.load keeps its deserializer in a global: two loads at once (flows run in
# threads) fail with "_CURRENT_DESERIALIZER is already set".
_export_load_lock = threading.Lock()
# Programs loaded in this process, by the SHA-256 of their archive (most recent last). A
# night loads the champion up to three times (fine-tuning, promotion, the forecast) and
# torch.export.load spends seconds on each in pure-Python deserialisation, on any device;
# a key of the archive's bytes cannot hand back a model other than the one stored.
_loaded_programs: OrderedDict[str, tuple[nn.Module, ExportedProgram]] = OrderedDict()
LOADED_PROGRAMS_KEPT = 4
CARD_KEY = "stpipe"

Batch = dict[str, Tensor]


class _TensorInputs(nn.Module):
    """The forecaster with positional tensor inputs (:data:`BATCH_INPUTS`), for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        x: Tensor,
        x_time: Tensor,
        y_time: Tensor,
        x_times: Tensor,
        y_times: Tensor,
        static: Tensor,
        row0: Tensor,
        col0: Tensor,
    ) -> Tensor:
        return self.model(
            {
                "x": x,
                "x_time": x_time,
                "y_time": y_time,
                "x_times": x_times,
                "y_times": y_times,
                "static": static,
                "row0": row0,
                "col0": col0,
            }
        )


class RegisteredForecaster(nn.Module):
    """A loaded program as a forecaster: ``forward(batch)`` → [B, L, V_out, H, W] physical.

    Carries the card's variables, leads, step and input steps as attributes, like the
    trained model. The exported graph is fixed in eval mode, so ``train()`` changes only
    the flag. ``.to(device)`` moves the program (:func:`program_on`); ``forward`` takes a
    batch on any device and returns the forecast on the batch's device.
    """

    def __init__(self, program: nn.Module, card: ModelCard, exported: ExportedProgram) -> None:
        super().__init__()
        self.program = program
        # the program as loaded (shared, never changed): the graph that .to(device) moves
        self.exported = exported
        self.program_device = torch.device("cpu")
        self.card = card
        self.input_variables = card.input_variables
        self.target_variables = card.target_variables
        self.input_steps = card.input_steps
        self.leads = card.leads
        self.step_s = card.step_s
        self.training = False

    def forward(self, batch: Batch) -> Tensor:
        device = batch["x"].device
        inputs = (batch[k].to(self.program_device) for k in BATCH_INPUTS)
        return self.program(*inputs).to(device)

    def train(self, mode: bool = True) -> RegisteredForecaster:
        self.training = mode
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> RegisteredForecaster:
        # .to(), .cuda(), .cpu() and dtype casts all come here with a function of a tensor.
        # The exported graph holds constants and device arguments of its own (e.g. index
        # ranges built on the CPU), so moving only its weights would break it; a dtype
        # cast would change numerics the graph was exported with, so only a move is done
        # (.half() on a moved program keeps its device: the probe starts on that device).
        device = fn(torch.empty(0, device=self.program_device)).device
        if device != self.program_device:
            self.program = program_on(self.exported, self.program, device)
            self.program_device = device
        return self


def program_on(exported: ExportedProgram, program: nn.Module, device: torch.device) -> nn.Module:
    """``program`` (the module of ``exported``, its weights possibly changed since) on
    ``device``: a copy of ``exported`` moved there by torch's own pass (weights, constants and
    the devices written into the graph), holding ``program``'s current weights.

    Only the moved module's own state is taken from ``program``: a deep copy of a loaded module
    (what :func:`load_model` hands out) also lists the graph's constants and non-persistent
    buffers in its state, which the moved graph holds already."""
    with _export_load_lock:  # _copy changes the process's warning filters
        moved = move_to_device_pass(_copy(exported), device).module()
    state = program.state_dict()
    moved.load_state_dict({name: state[name] for name in moved.state_dict()})
    return moved


@dataclass(frozen=True)
class LoggedModel:
    """A model logged to a run: its MLflow model id and URI."""

    model_id: str
    uri: str


def export_inputs(batch: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
    """The :data:`BATCH_INPUTS` of ``batch`` (CPU) with at least two samples.

    ``torch.export`` fixes size-1 dimensions, so a single sample is repeated to keep the
    batch dimension dynamic.
    """
    missing = [k for k in BATCH_INPUTS if k not in batch]
    if missing:
        raise TrackingError(f"example batch lacks {missing}; it has {sorted(batch)}")
    tensors = tuple(batch[k].detach().cpu() for k in BATCH_INPUTS)
    if tensors[0].shape[0] < 2:
        tensors = tuple(torch.cat([t, t]) for t in tensors)
    return tuple(t[:2] for t in tensors)


def log_model(
    tracking: Tracking,
    run_id: str,
    model: nn.Module,
    *,
    example: Mapping[str, Tensor],
    card: ModelCard,
) -> LoggedModel:
    """Export ``model`` (put in eval mode on the CPU) and log it to run ``run_id`` as the
    pyfunc model :data:`MODEL_ARTIFACT`; ``example`` is a batch of the training loader's.

    The signature names the input tensors (batch dimension -1) and the output
    ``forecast``; the input example is two samples of ``example`` as named numpy arrays,
    what ``mlflow.pyfunc`` predicts from (MLflow stores it as JSON, with the request body
    ``mlflow models serve`` answers: ``serving_input_example.json``).
    """
    model = model.cpu().eval()
    inputs = export_inputs(example)
    with torch.no_grad():
        output = model(dict(zip(BATCH_INPUTS, inputs, strict=True)))
    signature, input_example, model_config = _pyfunc_interface(inputs, output)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / Path(PROGRAM_FILE).name
        _export(model, inputs, archive)
        with (
            tracking_errors(tracking.uri, f"log the model of run {run_id}"),
            fluent_scope(tracking.uri),
            mlflow.start_run(run_id=run_id),
        ):
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=PYFUNC_CODE,
                artifacts={"program": str(archive)},
                model_config=model_config,
                signature=signature,
                input_example=input_example,
                metadata={CARD_KEY: card.to_json()},
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}",
                ],
            )
    # Leaving the fluent run marked it FINISHED; the job ends the run itself.
    with tracking_errors(tracking.uri, f"reopen run {run_id}"):
        tracking.client.update_run(run_id, status="RUNNING")
    return LoggedModel(model_id=info.model_id, uri=info.model_uri)


def _export(model: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> None:
    """Save ``model`` traced on ``inputs`` (positional, :data:`BATCH_INPUTS`) as a PT2
    archive at ``path``, the batch dimension of every input dynamic."""
    batch = {0: torch.export.Dim.AUTO}
    program = torch.export.export(
        _TensorInputs(model).eval(), inputs, dynamic_shapes=[batch] * len(inputs)
    )
    torch.export.save(program, str(path))


def _pyfunc_interface(
    inputs: tuple[Tensor, ...], output: Tensor
) -> tuple[ModelSignature, dict[str, np.ndarray], dict[str, Any]]:
    """The pyfunc model's signature, input example and ``model_config`` for the export
    ``inputs`` (:data:`BATCH_INPUTS`) and their ``output``.

    JSON (the stored input example, a served request) cannot hold an array with a
    zero-size dimension, e.g. ``static`` [B, 0, H, W] of a model without static fields:
    such inputs are left out of the signature and the example, and ``model_config``
    ``"empty_inputs"`` gives their shape past the batch dimension and dtype, from which
    :mod:`stpipe.tracking.pyfunc_model` makes them.
    """
    arrays = {k: t.numpy() for k, t in zip(BATCH_INPUTS, inputs, strict=True)}
    empty = {
        k: {"shape": list(a.shape[1:]), "dtype": str(a.dtype)}
        for k, a in arrays.items()
        if 0 in a.shape[1:]
    }
    example = {k: a for k, a in arrays.items() if k not in empty}
    signature = ModelSignature(
        inputs=Schema([_spec(k, a) for k, a in example.items()]),
        outputs=Schema([_spec("forecast", output.numpy())]),
    )
    return signature, example, {"inputs": list(BATCH_INPUTS), "empty_inputs": empty}


def _spec(name: str, array: np.ndarray) -> TensorSpec:
    return TensorSpec(array.dtype, (-1, *array.shape[1:]), name)


def load_model(tracking: Tracking, uri: str) -> RegisteredForecaster:
    """Load a logged or registered model (``models:/...`` URI) as a forecaster.

    Never unpickles (see the module docstring): a model directory whose data is anything
    but one PT2 archive of :data:`PROGRAM_FILES`, or an archive with a record that is not
    pickle-free, is refused with a TrackingError naming ``uri`` and the file. An archive
    this process loaded before is not deserialised again (:func:`_load_program`).
    """
    with tempfile.TemporaryDirectory() as tmp, tracking_errors(tracking.uri, f"load {uri}"):
        with fluent_scope(tracking.uri):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        program, exported = _load_program(_pickle_free_program(uri, local))
        card = read_card(local)
    return RegisteredForecaster(program, card, exported)


def _load_program(archive: Path) -> tuple[nn.Module, ExportedProgram]:
    """The checked PT2 ``archive`` as a module of its own, with the exported program it came
    from: a copy of the one loaded before from the same bytes (:data:`_loaded_programs`),
    else freshly deserialised. Callers may change the module's weights (fine-tuning starts
    from them): the kept module is never handed out, the kept program is never changed."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with _export_load_lock:
        loaded = _loaded_programs.pop(digest, None)
        if loaded is None:
            exported = torch.export.load(str(archive))
            loaded = (exported.module(), exported)
        _loaded_programs[digest] = loaded
        while len(_loaded_programs) > LOADED_PROGRAMS_KEPT:
            _loaded_programs.popitem(last=False)
        program, exported = loaded
        return _copy(program), exported


def _copy(value: Any) -> Any:
    """A deep copy of a loaded module or exported program."""
    with warnings.catch_warnings():
        # torch's own deepcopy of the graph's input spec calls a deprecated isinstance
        warnings.filterwarnings("ignore", "`isinstance\\(treespec, LeafSpec\\)`", FutureWarning)
        return copy.deepcopy(value)


def _pickle_free_program(uri: str, model_dir: Path) -> Path:
    """The checked PT2 archive of the downloaded model ``model_dir``; TrackingError if the
    model holds any other data file or the archive a record that would be unpickled."""
    data_files = sorted(
        str(p.relative_to(model_dir))
        for folder in ("artifacts", "data")
        for p in (model_dir / folder).rglob("*")
        if p.is_file()
    )
    others = [name for name in data_files if name not in PROGRAM_FILES]
    if others:
        raise TrackingError(
            f"{uri}: refusing to load {', '.join(others)}: stpipe loads only the "
            f"torch.export archive {PROGRAM_FILE} that it logs (a pickled model, "
            "data/model.pth, runs any code it holds); train the model again with "
            "`stpipe train CONFIG`"
        )
    if len(data_files) != 1:
        held = ", ".join(data_files) or "no data"
        raise TrackingError(f"{uri}: the model's artifacts hold {held}, not one {PROGRAM_FILE}")
    (program,) = data_files
    try:
        _validate_pt2_archive_is_pickle_free(str(model_dir / program))
    except MlflowException as exc:
        record = re.search(r"record '([^']+)'", exc.message)
        what = f"its record {record.group(1)}" if record else "it"
        raise TrackingError(
            f"{uri}: refusing to load {program}: {what} would be unpickled (not JSON, raw "
            "tensors or tensors in plain containers); train the model again with "
            "`stpipe train CONFIG`"
        ) from None
    return model_dir / program


def read_card(model_dir: str | Path) -> ModelCard:
    """The :class:`ModelCard` in the MLmodel file of a downloaded model directory."""
    metadata = Model.load(str(model_dir)).metadata or {}
    if CARD_KEY not in metadata:
        raise TrackingError(
            f"{model_dir}: the model has no {CARD_KEY!r} metadata; it was not logged by stpipe"
        )
    raw = metadata[CARD_KEY]
    return ModelCard.from_json(json.loads(raw) if isinstance(raw, str) else raw)

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

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from stpipe.models.climatology import Climatology, ClimatologyLookup, climatology_period
from stpipe.models.common import Batch, Forecaster
from stpipe.models.registry import MODELS, ModelEntry, ModelInputs, build_model, model_settings

__all__ = [
    "MODELS",
    "Climatology",
    "ClimatologyLookup",
    "Forecaster",
    "ModelEntry",
    "ModelInputs",
    "build_model",
    "climatology_period",
    "count_parameters",
    "flops_per_sample",
    "model_settings",
]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as the climatology table excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_sample(model: nn.Module, batch: Batch) -> int:
    """Forward FLOPs per sample (a multiply-add counts 2), eval mode, no grad.

    Convolutions and matmuls are counted by ``torch.utils.flop_counter.FlopCounterMode``.
    It sees RNNs only when they decompose into matmuls (GRU on CPU, not LSTM, not cuDNN),
    so each LSTM/GRU layer's count is replaced by 2·gates·(n_in + n_hidden)·n_hidden per
    sequence element and layer (gates: 4 LSTM, 3 GRU). Elementwise work (activations,
    norms, gate non-linearities) is not counted, as in FlopCounterMode.
    """
    counter = FlopCounterMode(display=False)
    correction: list[int] = []

    def before_rnn(_module: nn.Module, _inputs: tuple[Tensor, ...]) -> None:
        correction.append(counter.get_total_flops())

    def after_rnn(module: nn.RNNBase, inputs: tuple[Tensor, ...], _output: object) -> None:
        shape = inputs[0].shape
        n_seq, n_steps = (shape[0], shape[1]) if module.batch_first else (shape[1], shape[0])
        gates = 4 if isinstance(module, nn.LSTM) else 3
        sizes = [module.input_size] + [module.hidden_size] * (module.num_layers - 1)
        per_step = sum(
            2 * gates * (n_in + module.hidden_size) * module.hidden_size for n_in in sizes
        )
        correction[-1] += n_seq * n_steps * per_step - counter.get_total_flops()

    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    hooks = [m.register_forward_pre_hook(before_rnn) for m in rnns]
    hooks += [m.register_forward_hook(after_rnn) for m in rnns]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(batch)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return (counter.get_total_flops() + sum(correction)) // batch["x"].shape[0]

"""SCNN + RNN forecaster (``scnn_lstm``, ``scnn_gru``): direct multi-horizon, residual on a baseline.

Stages (dims: B batch, T input steps, L leads, C channels, H × W patch, h × w latent):

1. Encoder, shared across time: per frame [normalised inputs (the targets less their
   recent level: below), their finite-mask, time features, static fields, climatology at
   that time] → 3×3 conv → ``encoder_layers`` ×
   (stride-2 conv, conv), batch norm and GELU each: [B·T, C, h, w], h = H / 2^layers.
2. SCNN: a residual temporal convolution (kernel ``temporal_kernel`` along time, 1×1 in space)
   over the encoded sequence [B, C, T, h, w].
3. RNN: an LSTM or GRU over time at every latent location (B·h·w sequences of length T);
   the last state plus the last SCNN frame is the latent [B, C, h, w].
4. Decoder per lead (leads folded into the batch): latent + lead embedding + projected
   valid-time features, up-sampled stage by stage with skips from the last input frame's
   encoder maps; at full resolution it also sees the baseline fields of that lead (among
   them the advected persistence A: the last input moved with the motion the input steps
   show, :mod:`stpipe.models.advection`) and the last one-step changes of the targets and
   of their climatology (the tendency that short leads extrapolate).
   A zero-initialised 1×1 head gives the residual r [B, L, V_out, H, W].

Level shifts: the encoder and the decoder's maps see the targets less their mean anomaly
over the input steps and the patch (:meth:`ScnnRnn._recent_level`), so a shift of the whole
patch against the climatology (a cold spell, a new air mass: weather the train days never
had) leaves the residual r as trained. Where the patch is the whole grid, so that its
mean anomaly is the field's, and the climatology is of a few weeks, the mean of those
weeks' weather rather than the climate (:func:`~stpipe.models.climatology.is_the_climate`),
the blend (``baseline = "auto"``) keeps that level too (``keeps_level``, decided in
:mod:`stpipe.models.registry`): it starts at the ``advection`` baseline, which keeps the
whole anomaly and moves it with the inputs' motion, and as training moves its weights it
keeps the level in the term w_m·m, w_m = 1 − w_p − w_a, so such a shift moves the whole
forecast by the shift (it is equivariant to it) instead of being damped back towards the
train days' mean. Otherwise, and for the baselines, the forecast keeps the blend's share
w_p + w_a of the shift (persistence all, climatology none).
Measured on the ``regional`` and ``regime`` cases' fields without any network
(``benchmarks/bench_references.py``, 5 seeds × 2 split positions × 4 leads, against the
best of the four baselines): the fitted blend damped about the climatology fell more than
2 % behind in 66 of 80, damped about the recent level in 59, about the level of 8×8
patches (a twelfth of the grid: local weather, which moves on) in 62, and the
``advection`` baseline in 4. With the day-of-year climatology (the ``longclim`` case of
``benchmarks/bench_quality.py``), keeping the level lost 45–56 % to climatology at 24 h;
in ``stpipe demo`` (16×16 patches on a 64×64 grid) the champion went from 8–12 % ahead
of the best baseline to 14 % behind it at 6 h.

Output (normalised units, then physical): with ``residual``,
ŷ = w_p·p + w_c·C(t) + w_0·C(t0) + w_a·A + w_m·m + r, where p is persistence, C the
climatology, A the advected persistence (which carries a level shift as p does), m the
recent level (w_m = 1 − w_p − w_a where the blend keeps the level, else 0), and the
per-lead,
per-variable weights start at the chosen baseline
(:func:`stpipe.models.baselines.baseline_weights`) and are learned as offsets from it, so
weight decay pulls the model back towards the baseline. Untrained, the model *is* that
baseline; with little data it degrades to it rather than below it.

Calibration (:func:`stpipe.learn.train.calibrate`, after training): per lead and variable,
ŷ' = a + s·(ŷ − a) in physical units, with a the reference (a baseline) and s ∈ [0, 1]
the weight the model keeps, both chosen after training. At a lead where the
network has learned little beyond the baselines (long leads on a few weeks of data) s is
small or 0; where it has learned a lot, s ≈ 1. Until calibrated s = 1 and a = 0.
The reference is computed from the baseline terms by
:func:`stpipe.models.baselines.reference_forecast`, as the baselines are, so at s = 0 on
a baseline the forecast *is* that baseline, bit for bit. Where the reference has no value
(a climatology slot the train split never saw) the forecast is ŷ. (A free least-squares
fit of ŷ, p, C(t), C(t0) was tried: C(t) and C(t0) are nearly collinear, and its large
opposite weights failed badly out of sample.)
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpipe.models.baselines import (
    N_TERMS,
    Terms,
    baseline_terms,
    reference_forecast,
    reference_terms,
)
from stpipe.models.climatology import Climatology, ClimatologyLookup
from stpipe.models.common import Batch, Forecaster, conv_block


class ScnnRnn(Forecaster):
    """Per-frame CNN encoder → temporal conv → per-location RNN → per-lead decoder (see module)."""

    calibratable = True

    def __init__(
        self,
        *,
        cell: Literal["lstm", "gru"],
        hidden: int,
        encoder_layers: int,
        temporal_kernel: int,
        rnn_layers: int,
        dropout: float,
        residual: bool,
        blend: np.ndarray,
        keeps_level: bool,
        climatology: Climatology | None,
        n_time_features: int,
        n_static: int,
        **forecaster_args,
    ) -> None:
        super().__init__(**forecaster_args)
        n_in, n_out, n_leads = (
            len(self.input_variables),
            len(self.target_variables),
            len(self.leads),
        )
        self.climatology = (
            None
            if climatology is None
            else ClimatologyLookup(climatology, variables=self.target_variables, step_s=self.step_s)
        )
        self.residual = residual
        self.keeps_level = keeps_level
        self.n_time_features = n_time_features
        n_clim = n_out if self.climatology is not None else 0
        widths = [max(8, hidden >> (encoder_layers - k)) for k in range(encoder_layers)] + [hidden]

        self.static_norm = nn.BatchNorm2d(n_static, affine=False) if n_static else None
        self.stem = conv_block(2 * n_in + n_time_features + n_static + n_clim, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(conv_block(c_in, c_out, stride=2), conv_block(c_out, c_out))
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.temporal = nn.Sequential(
            nn.Conv3d(hidden, hidden, (temporal_kernel, 1, 1), padding="same", bias=False),
            nn.BatchNorm3d(hidden),
            nn.GELU(),
        )
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(
            hidden,
            hidden,
            num_layers=rnn_layers,
            batch_first=True,
            dropout=dropout if rnn_layers > 1 else 0.0,
        )
        self.lead_embedding = nn.Parameter(torch.randn(n_leads, hidden))
        self.time_projection = nn.Linear(n_time_features, hidden) if n_time_features else None
        self.tendency = self.input_steps > 1
        # blend, persistence, advected persistence, C(t), C(t0), and the last one-step
        # changes of input and C
        n_baseline_maps = 3 * n_out + 2 * n_clim + (n_out + n_clim if self.tendency else 0)
        self.up = nn.ModuleList(
            _UpStage(widths[k + 1], widths[k], n_extra=n_baseline_maps if k == 0 else 0)
            for k in reversed(range(encoder_layers))
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Conv2d(widths[0], n_out, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("blend_init", torch.as_tensor(blend, dtype=torch.float32))
        self.blend_delta = nn.Parameter(torch.zeros(n_leads, n_out, N_TERMS))
        # The reference a as weights of p, C(t), C(t0), A [L, V, 4], and s [L, V].
        self.register_buffer("anchor", torch.zeros(n_leads, n_out, N_TERMS))
        self.register_buffer("shrink", torch.ones(n_leads, n_out))

    def reset_calibration(self) -> None:
        """Back to the uncalibrated forecast (before training or fine-tuning on new data)."""
        self.anchor.zero_()
        self.shrink.fill_(1.0)

    def load_calibration(self, calibrated: Forecaster) -> None:
        """``calibrated``'s reference and model weight per lead and variable."""
        self.anchor.copy_(calibrated.get_buffer("anchor"))
        self.shrink.copy_(calibrated.get_buffer("shrink"))

    def forward(self, batch: Batch) -> Tensor:
        return self.forecast_and_reference(batch)[0]

    def forecast_and_reference(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The calibrated forecast a + s·(ŷ − a) (ŷ where a is not finite) and a."""
        forecast, terms = self.uncalibrated_forecast(batch)
        reference = reference_forecast(terms, self.anchor)
        calibrated = reference + self.shrink[..., None, None] * (forecast - reference)
        return torch.where(torch.isfinite(reference), calibrated, forecast), reference

    def _recent_level(self, x: Tensor, clim_inputs: Tensor | None) -> Tensor:
        """The targets' mean anomaly over the input steps and the patch, normalised, at the
        targets' places among the inputs (0 elsewhere, and without a climatology):
        [B, 1, V_in, 1, 1]. The encoder and the decoder's maps see the targets less this
        level, so a shift of the whole patch against the climatology (a cold spell, a new
        air mass) leaves the residual as it was; the blend still sees it."""
        shift = x.new_zeros(x.shape[0], 1, x.shape[2], 1, 1)
        if clim_inputs is None:
            return shift
        anomaly = x[:, :, self.target_index] - clim_inputs  # [B, T, V, H, W]
        finite = torch.isfinite(anomaly)
        total = torch.where(finite, anomaly, 0.0).sum((1, 3, 4), keepdim=True)
        level = total / finite.sum((1, 3, 4), keepdim=True).clamp_min(1)
        level = level / self.target_std[:, None, None]
        return shift.index_copy(2, self.target_index, level.to(shift.dtype))

    def uncalibrated_forecast(self, batch: Batch) -> tuple[Tensor, Terms]:
        """The network's forecast [B, L, V, H, W] (float32, physical units) and the terms
        of the references (:func:`~stpipe.models.baselines.reference_terms`)."""
        x = batch["x"]
        b, t, _, height, width = x.shape
        n_leads = len(self.leads)
        persistence, clim_inputs, clim_valid = baseline_terms(
            batch, target_index=self.target_index, climatology=self.climatology
        )
        inputs = x[:, :, self.target_index]
        terms = reference_terms(
            persistence, clim_inputs, clim_valid, inputs=inputs, leads=self.leads
        )
        z_last = torch.nan_to_num(self.normalise_targets(persistence), nan=0.0)  # [B, 1, V, H, W]
        z_moved = torch.nan_to_num(self.normalise_targets(terms[3]), nan=0.0)  # [B, L, V, H, W]
        z = self.normalise_inputs(x)
        level = self._recent_level(x, clim_inputs)  # [B, 1, V_in, 1, 1], normalised
        z = torch.where(torch.isfinite(x), z - level, 0.0)
        z_level = level[:, :, self.target_index]
        frames = [z, torch.isfinite(x).to(x.dtype)]
        if self.n_time_features:
            frames.append(batch["x_time"][..., None, None].expand(-1, -1, -1, height, width))
        if self.static_norm is not None:
            static = self.static_norm(torch.nan_to_num(batch["static"], nan=0.0))
            frames.append(static[:, None].expand(-1, t, -1, -1, -1))
        w = self.blend_init + self.blend_delta  # [L, V, 4]
        w_p, w_a = w[None, :, :, 0, None, None], w[None, :, :, 3, None, None]
        # the share of a level shift the forecast keeps (p and A carry it): all of it about
        # the recent level
        kept = torch.ones_like(w_p) if self.keeps_level else w_p + w_a
        blend = w_p * z_last + w_a * z_moved + (kept - w_p - w_a) * z_level
        maps = [(z_last - z_level).expand(-1, n_leads, -1, -1, -1), z_moved - z_level]
        if clim_inputs is not None and clim_valid is not None:
            z_clim_inputs = torch.nan_to_num(self.normalise_targets(clim_inputs), nan=0.0)
            z_clim_valid = torch.nan_to_num(self.normalise_targets(clim_valid), nan=0.0)
            z_clim_init = z_clim_inputs[:, -1:]
            frames.append(z_clim_inputs)
            blend = (
                blend
                + w[None, :, :, 1, None, None] * z_clim_valid
                + w[None, :, :, 2, None, None] * z_clim_init
            )
            maps += [z_clim_valid, z_clim_init.expand(-1, n_leads, -1, -1, -1)]
            if self.tendency:
                maps.append((z_clim_init - z_clim_inputs[:, -2:-1]).expand(-1, n_leads, -1, -1, -1))
        if self.tendency:
            step = z[:, -1:, self.target_index] - z[:, -2:-1, self.target_index]
            maps.append(step.expand(-1, n_leads, -1, -1, -1))
        maps.insert(0, blend - kept * z_level)  # less its level

        h = self.stem(torch.cat(frames, dim=2).flatten(0, 1))  # [B·T, C0, H, W]
        skips = [h]
        for stage in self.down:
            h = stage(h)
            skips.append(h)
        seq = h.unflatten(0, (b, t)).transpose(1, 2)  # [B, C, T, h, w]
        seq = seq + self.temporal(seq)
        c, lh, lw = seq.shape[1], seq.shape[3], seq.shape[4]
        states = run_rnn(self.rnn, seq.permute(0, 3, 4, 2, 1).reshape(b * lh * lw, t, c))
        latent = states[:, -1].reshape(b, lh, lw, c).permute(0, 3, 1, 2) + seq[:, :, -1]

        cond = self.lead_embedding[None]  # [1, L, C]
        if self.time_projection is not None:
            cond = cond + self.time_projection(batch["y_time"])
        d = self.dropout(latent[:, None] + cond[..., None, None]).flatten(0, 1)  # [B·L, C, h, w]
        extra = torch.cat(maps, dim=2).flatten(0, 1)  # [B·L, n_maps, H, W]
        for stage, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            d = stage(d, skip.unflatten(0, (b, t))[:, -1], extra, n_leads=n_leads)
        r = self.head(self.dropout(d)).unflatten(0, (b, n_leads)).float()
        return self.denormalise_targets(blend + r if self.residual else r), terms


def run_rnn(rnn: nn.LSTM | nn.GRU, seq: Tensor) -> Tensor:
    """The outputs [N, T, C] of a batch-first, one-way ``rnn`` over ``seq`` [N, T, C] from zero
    states.

    While ``torch.export`` traces, the weights go to the op by name (``all_weights``): the
    module's own forward would re-assign its cached flat weights to the traced stand-ins,
    which export reports as attributes that should have been buffers. The op and the
    numbers are the same either way."""
    if not torch.compiler.is_exporting():
        return rnn(seq)[0]
    weights = [w for layer in rnn.all_weights for w in layer]
    h0 = seq.new_zeros(rnn.num_layers, seq.shape[0], rnn.hidden_size)
    args = (weights, rnn.bias, rnn.num_layers, rnn.dropout, rnn.training, False, True)
    if isinstance(rnn, nn.LSTM):
        return torch.lstm(seq, (h0, h0), *args)[0]
    return torch.gru(seq, h0, *args)[0]


class _UpStage(nn.Module):
    """1×1 conv at low resolution, bilinear up-sampling, + 3×3 conv of the skip (and of the
    per-lead baseline maps at full resolution), norm, GELU, then a 3×3 conv block.

    Skips are shared by all leads, so their conv runs once per sample, not once per lead.
    """

    def __init__(self, c_low: int, c_out: int, *, n_extra: int) -> None:
        super().__init__()
        self.from_low = nn.Conv2d(c_low, c_out, 1, bias=False)
        self.from_skip = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.from_extra = nn.Conv2d(n_extra, c_out, 3, padding=1, bias=False) if n_extra else None
        self.post = nn.Sequential(nn.BatchNorm2d(c_out), nn.GELU())
        self.refine = conv_block(c_out, c_out)

    def forward(self, low: Tensor, skip: Tensor, extra: Tensor, *, n_leads: int) -> Tensor:
        up = F.interpolate(
            self.from_low(low), size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        s = (up.unflatten(0, (-1, n_leads)) + self.from_skip(skip)[:, None]).flatten(0, 1)
        if self.from_extra is not None:
            s = s + self.from_extra(extra)
        return self.refine(self.post(s))

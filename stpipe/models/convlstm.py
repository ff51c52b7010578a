"""ConvLSTM reference (Shi et al., 2015, arXiv:1506.04214), as OpenSTL configures it.

Frames are normalised and folded by space-to-depth (``patch`` p: [V, H, W] → [V·p², H/p,
W/p]); a stack of ConvLSTM cells (hidden sizes ``hidden``, kernel ``filter_size``) reads the
T input frames, then rolls forward on its own predictions (a 1×1 conv of the top state
predicts the next frame of every input variable) for max(leads) steps; the frames at the
requested leads are returned. That is OpenSTL's ConvLSTM at test time (T + max(lead) − 1
cell steps, no scheduled sampling), trained here end to end through the roll-out.

Like OpenSTL's it sees only the input frames: no time features, static fields or
climatology, and no residual connection (a plain reference). OpenSTL's cells also define
``conv_o`` and ``conv_last`` layers they never use; their parameter counts include them
(14.9M for 4×128, filter 5, patch 2, one variable), this one does not (11.5M).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpipe.models.common import Batch, Forecaster


class ConvLSTMCell(nn.Module):
    """i, f, g, o = conv([x, h]); c' = σ(f)·c + σ(i)·tanh(g); h' = σ(o)·tanh(c')."""

    def __init__(self, c_in: int, hidden: int, *, filter_size: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(c_in + hidden, 4 * hidden, filter_size, padding=filter_size // 2)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = torch.split(self.conv(torch.cat([x, h], dim=1)), self.hidden, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTM(Forecaster):
    """Stacked ConvLSTM encoder–forecaster over space-to-depth frames (see module doc)."""

    def __init__(
        self, *, hidden: Sequence[int], filter_size: int, patch: int, **forecaster_args
    ) -> None:
        super().__init__(**forecaster_args)
        self.patch = patch
        frame_channels = len(self.input_variables) * patch * patch
        sizes = [frame_channels, *hidden]
        self.cells = nn.ModuleList(
            ConvLSTMCell(c_in, c_out, filter_size=filter_size)
            for c_in, c_out in itertools.pairwise(sizes)
        )
        self.head = nn.Conv2d(hidden[-1], frame_channels, 1)

    def forward(self, batch: Batch) -> Tensor:
        x = batch["x"]
        b, t = x.shape[:2]
        frames = F.pixel_unshuffle(self.normalise_inputs(x).flatten(0, 1), self.patch)
        frames = frames.unflatten(0, (b, t))  # [B, T, V·p², H/p, W/p]
        h = [frames.new_zeros(b, cell.hidden, *frames.shape[-2:]) for cell in self.cells]
        c = [state.clone() for state in h]

        def advance(frame: Tensor) -> Tensor:
            """One cell step of the stack; returns the predicted next frame."""
            for k, cell in enumerate(self.cells):
                h[k], c[k] = cell(frame, h[k], c[k])
                frame = h[k]
            return self.head(frame)

        for step in range(t):
            prediction = advance(frames[:, step])  # predicts lead 1 at the last step
        predictions = [prediction]
        for _ in range(max(self.leads) - 1):
            predictions.append(advance(predictions[-1]))
        outputs = torch.stack([predictions[lead - 1] for lead in self.leads], dim=1)
        z = F.pixel_shuffle(outputs.flatten(0, 1), self.patch)
        z = z.unflatten(0, (b, len(self.leads)))[:, :, self.target_index].float()
        return self.denormalise_targets(z)

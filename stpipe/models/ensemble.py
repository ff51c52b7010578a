"""The mean of several forecasters for the same inputs: a seed ensemble (``[train] members``).

A few weeks of data leave one model's forecast at the mercy of its training seed: on the
``regional`` and ``regime`` cases of ``benchmarks/bench_ensemble.py`` (20 runs, 80
(run, lead) cases each), single models trained with seeds 0–3 fell more than 2 % behind the
best baseline in 4, 4, 6 and 7 cases, down to −6.7 % at 1–6 h; the means of the first 2, 3
and 4 of them in 4 each, no worse than −0.0 % at 1–6 h (benchmarks/QUALITY.md).

Each member is calibrated on its own (its reference a_m and weight s_m,
:mod:`stpipe.learn.train.calibration`), and the mean is taken about the first member's
reference a: a + mean_m(c_m − a), c_m the members' calibrated forecasts. That is their mean
to rounding, and where every member forecasts a (each fell back to the same reference) it
is a bit for bit, every c_m − a being 0: the fallback to a baseline survives the averaging.
Where a is not finite (no climatology value, outside the grid) it is the plain mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from stpipe.core.errors import ConfigError
from stpipe.models.common import Batch, Forecaster

# What every member must share: the forecast each gives is for the same inputs and outputs.
_SHARED = ("input_variables", "target_variables", "input_steps", "leads", "step_s")


class MemberMean(Forecaster):
    """The mean of ``members`` (module docstring); its variables, leads, time step and
    normalisation are the first member's, which every member must share."""

    def __init__(self, members: Sequence[Forecaster]) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        first = members[0]
        for index, member in enumerate(members[1:], start=1):
            differ = [k for k in _SHARED if getattr(member, k) != getattr(first, k)]
            if differ:
                raise ConfigError(
                    f"ensemble member {index} differs from member 0 in {', '.join(differ)}"
                )
        super().__init__(
            input_variables=first.input_variables,
            target_variables=first.target_variables,
            input_steps=first.input_steps,
            leads=first.leads,
            step_s=first.step_s,
            norm_mean=first.norm_mean.detach().cpu().numpy(),
            norm_std=first.norm_std.detach().cpu().numpy(),
        )
        self.members = nn.ModuleList(members)

    def forward(self, batch: Batch) -> Tensor:
        forecasts = []
        reference: Tensor | None = None
        for member in self.members:
            forecast, member_reference = member.forecast_and_reference(batch)
            forecasts.append(forecast)
            reference = member_reference if reference is None else reference
        stacked = torch.stack(forecasts)
        if reference is None:
            return stacked.mean(0)
        # about 0 where a is not finite: 0 + mean(c_m − 0) is the plain mean
        about = torch.where(torch.isfinite(reference), reference, 0.0)
        return about + (stacked - about).mean(0)

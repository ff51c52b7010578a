"""Per-lead calibration after training: blend the model with a reference, robustly.

A forecaster takes part when its ``calibratable`` is true
(:class:`stpipe.models.common.Forecaster`): it then has ``uncalibrated_forecast(batch)`` and
the ``anchor`` [L, V, 4] and ``shrink`` [L, V] buffers that :func:`calibrate` sets (as
:class:`stpipe.models.scnn.ScnnRnn` does): ŷ' = a + s·(ŷ − a), per lead and variable.

The validation split is a few days, and the days after it are often another regime: a
baseline that wins there by a hair can lose the next week to another, and the model,
early-stopped on those days, looks better there than it is. So:

1. the reference a is the baseline with the least squared error over the train split (one
   fixed sample of it where ``[train] max_batches_per_epoch`` caps an epoch, the same for
   every member and for a resumed run), among those :func:`reference_names` allows. The
   validation split is too short to choose on: three days hold 6 forecasts whose errors do
   not overlap at 12 h, 3 at 24 h (rule 3), while the train split holds weeks to years of
   them. (The baselines are not fitted to the train days, but for the climatology being
   their slot mean.) Measured without a model, from the baselines' errors on each split, as
   the calibration computes them: ``benchmarks/bench_references.py`` (80 regional and regime
   cases, a climatology of a few weeks) and a throwaway script on the ``longclim`` feed of
   ``bench_quality.py`` (5 seeds × 2 split positions × 4 leads, day-of-year climatology).
   The reference chosen before (among the baselines and the means of two of them that did at
   least as well as the best baseline on the validation days, the one whose worse period,
   validation or train, was closest to that period's best) fell more than 2 % behind the
   best baseline on the test days in 5 of the 80 and 16 of the 40 (worst −134 %: persistence
   at 24 h); this rule in 4 and 6 (worst −38.6 %). Choosing on the train days among the
   references within 2 % of the best baseline on the validation days: 4 and 14; among the
   baselines and the means as well: 4 and 14 (the train days flatter a mean with their own
   climatology). The price: at s = 0 the calibrated model can trail the best baseline on the
   validation days, which promotion's check against every baseline then reports (by more
   than 2 % at 12 of the 40 ``longclim`` leads, none of the 80 others). A climatology of a
   few weeks is the mean of those weeks' weather, not the climate: a reference that leans on
   it (climatology, or a mean with it) bets that the coming days are like the train days,
   and loses heavily where they are not. Measured
   (``benchmarks/results/bench_quality_full_h200.log``, the ``regional`` and ``regime``
   cases, 5 seeds × 2 split positions, at 6 and 12 h): climatology was the best baseline on
   the test days in 5 of the 40, where persistence + the climatological change trailed it by
   at most 35 %; in the other 35, climatology trailed the best by up to 481 % (the
   baselines' scores are the same in every run of the benchmark), and before this rule the
   calibration, choosing on validation days that favoured it or a mean with it, lost down to
   −165 % at 12 h. So with such a climatology the references are the baselines that keep the
   current anomaly, persistence, persistence + the climatological change and advection,
   which a level shift of the whole field (a cold spell, a new air mass) leaves as good as
   before; where climatology does better on validation, promotion's check against every
   baseline says so. The day-of-year climatology of a year or more is the climate: every
   baseline.
2. the model's weight s is the least-squares weight over the validation split,
   Σ(ŷ−a)(y−a) / Σ(ŷ−a)², clipped to [0, 1]. At s = 0 the model forecasts a, which at a
   baseline is that baseline bit for bit (:func:`stpipe.models.baselines.reference_forecast`).
   Until this rule's measurement below, s was also lowered until the blend lost to a on
   none of the split's days (s ≤ 2·min_b s_b, s_b a day's own weight). A day holds two
   forecasts of 12 h whose errors do not overlap, so one noisy day sent the weight of a
   lead to 0 where the test days wanted it near 1.
3. then s is shrunk toward the reference by how little the split says at that lead:
   s·n / (n + :data:`PRIOR_WINDOWS`), n the number of its forecasts whose errors do not
   overlap: the split's duration / the lead, times the patches of the grid that do not
   overlap (:func:`independent_forecasts`). The same days chose the epoch (early
   stopping), so the model's edge there is optimistic, the more so the fewer independent
   forecasts there are: three days over one patch hold 72 at 1 h (s·0.92) and 6 at 12 h
   (s·0.5). It is the posterior mean of s under a prior at s = 0
   worth ``PRIOR_WINDOWS`` such forecasts. Shrinking is as safe as the reference: with a
   few weeks' climatology the references keep the current anomaly, and advection was
   within 2 % of the best baseline in 76 of 80 test cases
   (``benchmarks/bench_references.py``). With the day-of-year climatology as well: three
   validation days hold 3 forecasts of 24 h and 1.5 of 48 h whose errors do not overlap
   (s·0.33 and s·0.2). Measured on the ``longclim`` feed of ``bench_quality.py`` with the
   default ensemble (3 feed seeds × 2 split positions, a throwaway script), leads more
   than 2 % behind the best baseline: 7 of 24 unshrunk (worst −26.0 % at 24 h, −45.4 % at
   48 h), 6 shrunk (−8.5 % and −38.0 %, the latter where the reference, climatology,
   itself trails persistence by that); mean margins at 1/6/24/48 h
   +19.4/+19.1/+6.8/−18.7 % unshrunk, +19.0/+16.7/+1.5/−8.2 % shrunk. (Tried while rule
   1 still chose on the validation days, it had shrunk toward mean(persistence,
   climatology) and lost 24.6 % to climatology at 24 h.)

Rule 3, measured on the ``regional`` and ``regime`` cases (5 seeds × 2 split positions, 3
validation days) with 5 training seeds each, on an H200, by scaling each calibrated s by a
factor f: leads more than 2 % behind the best baseline on the test days, of 80 per
training seed, 9.4 on average at f = 1 (8 to 12), 6.8 at 0.75, 5.2 at 0.5; the mean
margin at 1/3/6/12 h +5.5/+4.9/+2.3/−5.9 % at f = 1, +5.1/+4.8/+3.1/−4.3 % at 0.75,
+4.0/+3.9/+3.0/−3.3 % at 0.5: the best f falls with the lead, as n does. With rule 3,
``bench_quality.py`` on the H200: the 12 h margin of seed 3 at the end +7.5 % (regional)
and +9.9 % (regime), −8.5 % and −10.1 % before; 6 cases below −2 % in all, 8 before. With
rule 1 on the train days as well (``benchmarks/results/bench_quality_full_h200.log``): 4,
the four 12 h test days where climatology wins, which no reference that keeps the anomaly
reaches; the ``weather`` case (two validation days, four patches) within 1.2 points of the
last log before both rules at 1–6 h.

All of the above was measured on 3 validation and 3 test days, and this paragraph too with
the every-day cap of rule 2. On 5 and 7 (a month, the folds the benchmark now uses,
``benchmarks/results/bench_quality_default_cpu2.log``), with 3 members: 1 of the 80
regional and regime leads more than 2 % behind (a reference's floor: climatology wins that
week at 12 h), 3 of the 24 ``longclim`` leads (at 24 and 48 h; one
is the reference's floor), and mean margins at 1/3/6/12 h +17.2/+17.6/+10.5/+2.3 %
(regional) and +13.7/+14.5/+8.5/+2.3 % (regime). ``longclim`` on 14 validation days before
the same 7 test days (what a year's archive affords): 1 of the 24 (at 48 h), the weights
at 6 h 0.71–0.90 instead of 0.15–0.77, mean margins at 1/6/24/48 h +35.6/+41.4/+6.6/−0.9 %
(+33.3/+33.0/−1.1/−0.6 % on 5 days). With early stopping on the capped score of
:func:`stpipe.learn.train.passes.validate`
(``benchmarks/results/bench_quality_earlystop_clamp_cpu2.log``): 2 of the 80, both the
reference's floor (every member's weight 0 at 12 h, climatology ahead by 9.1 % and 2.0 %),
mean margins +20.2/+20.3/+11.7/+2.3 % (regional) and +15.8/+16.5/+9.6/+2.3 % (regime);
``longclim`` 1 of the 24, +35.9/+40.8/+6.5/−0.9 %.

Rule 2 without the every-day cap, measured on the 20 ``regional`` and ``regime`` runs of
``bench_quality.py`` (5 validation and 7 test days, the default 3 members, 2 CPU cores, fp32;
a throwaway script that trained each run as the benchmark does and scored its test days with
each rule's weights on the same members; its margins with the cap match
``benchmarks/results/bench_quality_earlystop_clamp_cpu2.log`` in every run; log
``benchmarks/results/bench_calibration_rules_cpu2.log``). Leads more than 2 % behind the
best baseline: 2 of the 80 with the cap, 1 without (regional seed 4 a week earlier at 12 h,
−8.7 %, where the weight fitted on the test days themselves still trails by 4.0 %). Mean
margins at 1/3/6/12 h, regional +20.2/+20.3/+11.7/+2.3 % → +20.9/+21.5/+14.6/+5.5 %,
regime +15.8/+16.4/+9.6/+2.3 % → +16.3/+17.2/+11.5/+5.4 %; paired, no regional run lower
at any lead, five leads of three regime runs lower by 0.1–0.8 points. Without rule 3 as
well: 5 cases (down to −8.4 %); the model alone (s = 1): 9 (down to −30.6 % at 12 h in the
regime's new air mass). On the year (``longclim``, feed seeds 1–2, 14 validation days;
``benchmarks/results/bench_quality_lsweight_cpu2.log``): 1 and 6 h unchanged, the 24 h mean
margin +10.2 → +15.5 %, and at 48 h two cases instead of one (−2.8 % and −8.5 %, where the
cap had sent the weights to 0: fourteen days hold seven 48 h forecasts whose errors do not
overlap), the 48 h mean −1.1 → −1.0 %.

Other rules on every case of ``bench_quality.py``, the same members, on an H100 in bf16
(``benchmarks/results/bench_calibration_rules_h100.log``, the same kind of throwaway
script). This rule: 4 leads more than 2 % behind the best baseline, 1 on a few weeks of
data (regional seed 4 a week earlier at 12 h) and 3 on the year (at 24 and 48 h, a week
earlier). Trusting the validation split less, as the weight maximising the mean gain over
blocks of start times one lead long less one (or half a) standard error, or as the
least-squares weight scaled by 1 − se²/s² (se its jackknife error over those blocks),
keeps the same 4 and lowers the means (regional at 12 h +5.4 → +3.8 to +4.7 %). A weight
on the climatology as well, a + s·(ŷ − a) + c·(C − a) fitted the same way, lifts the
regional 12 h mean to +8.2 % but loses 33 % at 12 h where the regime's new air mass
arrives. The weights fitted on the test days themselves leave none of the 4: there the
validation days disagree with the test days, which no rule on the validation days reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from stpipe.learn.context import Distributed, iterate_on_device
from stpipe.learn.train.distributed import all_reduce
from stpipe.learn.train.loss import lead_var_shape
from stpipe.models import Forecaster
from stpipe.models.baselines import (
    BASELINE_WEIGHTS,
    Terms,
    baseline_terms,
    reference_forecast,
    reference_terms,
)
from stpipe.models.climatology import Period, is_the_climate

# References a calibration may lean on, as weights of p, C(t), C(t0), A: the baselines.
REFERENCES = dict(BASELINE_WEIGHTS)
# The prior weight of the reference in the model's weight s, as this many forecasts whose
# errors do not overlap (module docstring, rule 3).
PRIOR_WINDOWS = 6.0


@torch.no_grad()
def calibrate(
    model: Forecaster,
    loader: Any,
    *,
    independent: Tensor,
    history: Any,
    precision: torch.dtype,
    device: torch.device,
    dist: Distributed | None = None,
) -> str:
    """Fit a calibratable ``model``'s calibration (module docstring): the reference on the
    train split of ``history``, the model's weight on the validation split of ``loader``,
    which holds ``independent`` [L] forecasts per lead whose errors do not overlap
    (:func:`independent_forecasts`). Returns the choice per lead, for the log."""
    model.eval()
    model.reset_calibration()
    period = None if model.climatology is None else model.climatology.period
    names = reference_names(period)
    references = torch.tensor([REFERENCES[n] for n in names], device=device)  # [K, 4]
    # the mean: a reference without a value somewhere counts fewer cells
    total, count = all_reduce(reference_errors(model, history, references), dist)
    best = choose_reference(total / count.clamp_min(1.0))
    model.anchor.copy_(references[best])
    sums = all_reduce(weight_sums(model, loader, precision=precision), dist)
    shrink = model_weight(sums, independent.to(device))
    model.shrink.copy_(shrink)
    return "; ".join(
        f"lead {lead} {var}: {float(shrink[i, j]):.2f}·model + "
        f"{1 - float(shrink[i, j]):.2f}·{names[int(best[i, j])]}"
        for i, lead in enumerate(model.leads)
        for j, var in enumerate(model.target_variables)
    )


def independent_forecasts(
    span_s: float, *, step_s: int, leads: Sequence[int], grid: Sequence[int], patch: Sequence[int]
) -> Tensor:
    """Per lead (in steps of ``step_s`` seconds), how many forecasts of a split ``span_s``
    seconds long have errors that do not overlap: windows of the lead end to end, times the
    ``patch``-sized tiles that fit side by side on the ``grid`` (at least one): float64 [L]."""
    tiles = max(1, (grid[0] // patch[0]) * (grid[1] // patch[1]))
    return torch.tensor([tiles * span_s / (lead * step_s) for lead in leads], dtype=torch.float64)


def reference_names(period: Period | None) -> list[str]:
    """The :data:`REFERENCES` a calibration may choose with a climatology of ``period``
    (None: no climatology): every baseline for the day-of-year climatology of a year or
    more; for a climatology of a few weeks (``"day"``, ``"week"``) only those that keep the
    current anomaly (weight 1 on p and A together, see the module docstring); persistence
    alone without one."""
    if period is None:
        return ["persistence"]
    if is_the_climate(period):
        return list(REFERENCES)
    return [name for name, w in REFERENCES.items() if w[0] + w[3] == 1.0]


def weight_sums(model: Forecaster, loader: Any, *, precision: torch.dtype) -> Tensor:
    """Σ(ŷ−a)(y−a) and Σ(ŷ−a)² per lead and variable, a the reference ``model.anchor``
    holds, in normalised units over the real target cells: float64 [2, L, V]."""
    device = model.anchor.device
    sums = torch.zeros(2, *lead_var_shape(model), dtype=torch.float64, device=device)
    for batch, _ in iterate_on_device(loader, device):
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            forecast, terms = model.uncalibrated_forecast(batch)
        a = reference_forecast(terms, model.anchor)
        counted = _counted(batch, a, forecast)
        dy = _normalised(model, torch.where(counted, batch["y"] - a, 0.0))
        dz = _normalised(model, torch.where(counted, forecast - a, 0.0))
        sums += torch.stack([dz * dy, dz * dz]).sum((1, 4, 5)).double()
    return sums


def reference_errors(model: Forecaster, loader: Any, references: Tensor) -> Tensor:
    """Σ(y−a)² and the number of cells counted, per reference, lead and variable over
    ``loader`` (normalised units, real target cells where the reference has a value):
    float64 [2, K, L, V]. The references need no forward pass of the model."""
    device = references.device
    errors = torch.zeros(2, len(references), *lead_var_shape(model), dtype=torch.float64)
    errors = errors.to(device)
    for batch, _ in iterate_on_device(loader, device):
        parts = baseline_terms(
            batch, target_index=model.target_index, climatology=model.climatology
        )
        inputs = batch["x"][:, :, model.target_index]
        terms = reference_terms(*parts, inputs=inputs, leads=model.leads)
        for k, weights in enumerate(references):
            a = _reference(model, terms, weights)
            counted = _counted(batch, a)
            dy = _normalised(model, torch.where(counted, batch["y"] - a, 0.0))
            errors[0, k] += dy.square().sum((0, 3, 4)).double()
            errors[1, k] += counted.sum((0, 3, 4)).double()
    return errors


def _reference(model: Forecaster, terms: Terms, weights: Tensor) -> Tensor:
    """The reference of ``weights`` [4] at every lead and variable: [B, L, V, H, W]."""
    return reference_forecast(terms, weights.expand(*lead_var_shape(model), len(weights)))


def _counted(batch: dict[str, Tensor], *forecasts: Tensor) -> Tensor:
    """The cells that count: a real, finite target and a finite value of every forecast."""
    counted = (batch["mask"] > 0) & torch.isfinite(batch["y"])
    for forecast in forecasts:
        counted &= torch.isfinite(forecast)
    return counted


def _normalised(model: Forecaster, difference: Tensor) -> Tensor:
    """A difference of targets [..., V, H, W] in units of the targets' train std."""
    return difference / model.target_std[:, None, None]


def choose_reference(errors: Tensor) -> Tensor:
    """The reference (index [L, V]) with the least of ``errors`` [K, L, V], each reference's
    mean squared error on the train split (module docstring, rule 1)."""
    return errors.nan_to_num(nan=torch.inf).argmin(0)


def model_weight(sums: Tensor, independent: Tensor) -> Tensor:
    """The model's weight s [L, V] (module docstring, rules 2 and 3) from the validation
    :func:`weight_sums` [2, L, V] and ``independent`` [L] (:func:`independent_forecasts`;
    inf: no shrinking). A lead without data keeps none."""
    zy, zz = sums
    fitted = (zy / zz.clamp_min(1e-300)).clamp(0.0, 1.0)
    prior = 1.0 / (1.0 + PRIOR_WINDOWS / independent.double())  # n / (n + PRIOR_WINDOWS)
    return (fitted * prior[:, None]).float()

"""Learned models: shapes over leads, patch sizes and variable subsets; start at the baseline;
overfit one batch; bf16 autocast; torch.export; parameter and FLOP counts; bad arguments."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from stpipe.core.errors import ConfigError
from stpipe.models import build_model, count_parameters, flops_per_sample, model_settings
from stpipe.models.climatology import Climatology

from . import make_batch
from .test_baselines import climatology, expected_clim

LEARNED = ["scnn_lstm", "scnn_gru", "convlstm"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops run faster on one thread, and do not stall when other processes load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = {
    "scnn_lstm": dict(hidden=16),
    "scnn_gru": dict(hidden=16),
    "convlstm": dict(hidden=(8, 8), filter=3),
}


def model(
    name: str,
    *,
    leads=(1, 3),
    inputs=("a", "b"),
    targets=("b",),
    steps: int = 4,
    shape=(8, 8),
    n_time: int = 4,
    n_static: int = 0,
    clim=None,
    **cfg,
) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        model_settings({"name": name, **SMALL.get(name, {}), **cfg}),
        input_variables=list(inputs),
        target_variables=list(targets),
        input_steps=steps,
        leads=list(leads),
        patch_shape=shape,
        n_time_features=n_time,
        n_static=n_static,
        norm_mean=[10.0] * len(inputs),
        norm_std=[2.0] * len(inputs),
        climatology=clim,
        step_s=3600,
    )


def batch_for(
    *,
    leads=(1, 3),
    inputs=("a", "b"),
    targets=("b",),
    steps: int = 4,
    shape=(8, 8),
    n_time: int = 4,
    n_static: int = 0,
    batch: int = 2,
    **kw,
):
    return make_batch(
        batch=batch,
        steps=steps,
        leads=leads,
        n_vars=len(inputs),
        target_index=[list(inputs).index(t) for t in targets],
        shape=shape,
        n_time_features=n_time,
        n_static=n_static,
        **kw,
    )


CASES = [
    dict(),
    dict(leads=(1, 2, 3, 4), inputs=("a",), targets=("a",), steps=3, n_time=0),
    dict(leads=(2, 6), inputs=("a", "b", "c"), targets=("c", "a"), shape=(12, 16), n_static=2),
    dict(leads=(1,), shape=(10, 14), steps=2),
]


@pytest.mark.parametrize("name", LEARNED)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_output_shape_dtype_and_finite(name: str, case: int) -> None:
    kw = CASES[case]
    if name == "convlstm" and kw.get("shape") == (10, 14):
        kw = {**kw, "patch": 1}
    cfg = {k: kw[k] for k in ("patch",) if k in kw}
    data = {k: v for k, v in kw.items() if k not in cfg}
    m = model(name, **data, **cfg)
    out = m(batch_for(batch=3, **data))
    leads, targets, shape = (
        data.get("leads", (1, 3)),
        data.get("targets", ("b",)),
        data.get("shape", (8, 8)),
    )
    assert out.shape == (3, len(leads), len(targets), *shape)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["scnn_lstm", "scnn_gru"])
def test_scnn_works_with_a_climatology_and_padded_edges(name: str) -> None:
    m = model(name, clim=climatology())
    batch = batch_for(row0=[-3, 5], col0=[6, -1])
    batch["x"][0, :, :, :3] = float("nan")  # what the loader gives outside the grid
    out = m(batch)
    assert out.shape == (2, 2, 1, 8, 8)
    assert torch.isfinite(out).all(), "NaN inputs become the mean, not NaN outputs"


@pytest.mark.parametrize("name", ["scnn_lstm", "scnn_gru"])
@pytest.mark.parametrize("base", ["persistence", "climatology", "persistence_clim_change"])
def test_untrained_residual_model_equals_its_baseline(name: str, base: str) -> None:
    clim = climatology()
    batch = batch_for(start="2024-01-01T21:00", row0=[0, 2], col0=[1, 4])
    learned = model(name, clim=clim, baseline=base).eval()
    reference = model(base, clim=clim)
    torch.testing.assert_close(learned(batch), reference(batch), rtol=0, atol=1e-5)


def test_a_level_shift_of_the_targets_passes_through_a_trained_residual_unchanged() -> None:
    # the residual sees the targets less their recent mean anomaly: shifting every input
    # of the target by δ moves the forecast by (w_p + w_a)·δ, the blend's share (p and the
    # advected p carry it), and no more
    clim = climatology()
    m = model("scnn_lstm", clim=clim, baseline="persistence_clim_change").eval()
    with torch.no_grad():
        for parameter in m.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # a residual that is not 0
    batch = batch_for(start="2024-01-01T21:00", row0=[0, 2], col0=[1, 4])
    shifted = dict(batch, x=batch["x"].clone())
    shifted["x"][:, :, 1] -= 4.0  # the target "b": a cold spell of 4 units everywhere
    with torch.no_grad():
        before, after = m(batch), m(shifted)
        w = (m.blend_init + m.blend_delta)[:, 0]
        unshifted = model("scnn_lstm", clim=clim, baseline="persistence_clim_change").eval()
    assert not torch.allclose(before, unshifted(batch), atol=1e-3), "the residual is not 0"
    expected = before - 4.0 * (w[:, 0] + w[:, 3])[None, :, None, None, None]
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-4)


def recent_level(clim: Climatology, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The target "b"'s mean anomaly over the input steps and the 8×8 patch at (0, 0), by
    hand: [B, 1, 1, 1, 1]."""
    c = np.stack([expected_clim(clim, times, 0, 0) for times in batch["x_times"]])
    return (batch["x"][:, :, 1] - torch.from_numpy(c)).mean((1, 2, 3))[:, None, None, None, None]


def test_untrained_auto_model_is_advection_where_it_keeps_the_level() -> None:
    # the 8×8 patch is the whole grid and the climatology of a few weeks: the blend starts
    # at the advection baseline, whatever the fitted damping
    clim = climatology(grid=(8, 8))
    batch = batch_for(leads=(1, 6))
    batch["x"][:, :, 1] += 3.0  # a warm spell
    learned = model("scnn_lstm", leads=(1, 6), clim=clim).eval()
    advection = model("advection", leads=(1, 6), clim=clim)(batch)
    assert recent_level(clim, batch).min() > 2.5, "the warm spell's level"
    torch.testing.assert_close(learned(batch), advection, rtol=0, atol=1e-4)


def test_untrained_auto_model_is_the_fitted_blend_where_the_patch_is_smaller_than_the_grid():
    # blend: damped anomaly persistence, r(k) = 1 − k/12, about the climatology
    clim = climatology(grid=(8, 9))
    batch = batch_for(leads=(1, 6))
    learned = model("scnn_lstm", leads=(1, 6), clim=clim).eval()
    p = model("persistence", leads=(1, 6))(batch)
    c = model("climatology", leads=(1, 6), clim=clim)(batch)
    change = model("persistence_clim_change", leads=(1, 6), clim=clim)(batch) - p  # C(t) − C(t0)
    r = torch.tensor([11 / 12, 0.5])[None, :, None, None, None]
    expected = c + r * (p - (c - change))
    torch.testing.assert_close(learned(batch), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("period", "grid", "keeps"),
    [("day", (8, 8), True), ("doy", (8, 8), False), ("day", (8, 9), False)],
)
def test_a_level_shift_moves_a_trained_auto_model_by_all_of_it_where_the_patch_is_the_field(
    period: str, grid: tuple[int, int], keeps: bool
) -> None:
    # about a few weeks' climatology, with the 8×8 patch the whole grid, the fitted blend
    # keeps a shift of the field, and the residual does not see it: the forecast moves by
    # the shift, not back towards the train days' mean. The day-of-year climatology is the
    # climate, which anomalies revert to, and a patch's mean anomaly on a larger grid is
    # local weather: there the blend keeps only its share w_p
    m = model("scnn_lstm", leads=(1, 6), clim=climatology(period=period, grid=grid)).eval()
    with torch.no_grad():
        for parameter in m.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # a residual that is not 0
    batch = batch_for(leads=(1, 6), start="2024-01-01T21:00")
    shifted = dict(batch, x=batch["x"].clone())
    shifted["x"][:, :, 1] -= 4.0
    with torch.no_grad():
        w = (m.blend_init + m.blend_delta)[:, 0]
        w_p = w[:, 0] + w[:, 3]  # the weights of p and of the advected p: both carry it
        moved = m(shifted) - m(batch)
    if not keeps:
        assert (w_p < 0.95).all(), "a damped blend, which moves by w_p·4"
    share = torch.ones_like(w_p) if keeps else w_p
    expected = (-4.0 * share)[None, :, None, None, None].expand_as(moved)
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-4)


def test_non_residual_model_does_not_start_at_the_baseline() -> None:
    batch = batch_for()
    out = model("scnn_lstm", residual=False).eval()(batch)
    assert torch.allclose(out, torch.full_like(out, 10.0)), "zero head: the train mean"


def overfit(m: nn.Module, batch: dict[str, torch.Tensor], steps: int) -> tuple[float, float]:
    """Train on one batch with the normalised masked MSE; return first and last loss."""
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    target = m.normalise_targets(batch["y"])
    losses = []
    for _ in range(steps):
        loss = ((m.normalise_targets(m(batch)) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], min(losses[-10:])


@pytest.mark.parametrize(("name", "steps"), [("scnn_lstm", 300), ("convlstm", 300)])
def test_model_overfits_one_small_batch(name: str, steps: int) -> None:
    torch.manual_seed(0)
    m = model(name, **(dict(hidden=(16,)) if name == "convlstm" else dict(dropout=0.0)))
    batch = batch_for(batch=2, shape=(8, 8))
    first, last = overfit(m, batch, steps)
    assert last < first / 100, f"{name}: loss {first:.3g} → {last:.3g}, not 100× lower"


@pytest.mark.parametrize("name", LEARNED)
def test_bf16_autocast_forward_and_backward_on_cpu(name: str) -> None:
    m = model(name, clim=climatology() if name != "convlstm" else None)
    batch = batch_for()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(batch)
    assert out.dtype == torch.float32, "outputs stay float32 under autocast"
    assert torch.isfinite(out).all()
    out.mean().backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    reference = m.eval()(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(batch)
    assert (low - reference).abs().max() < 0.5, "bf16 stays close to float32 (2 K scale)"


@pytest.mark.parametrize("name", [*LEARNED, "persistence_clim_change"])
def test_torch_export_matches_eager(name: str) -> None:
    clim = climatology() if name != "convlstm" else None
    m = model(name, clim=clim).eval()
    batch = batch_for(row0=[-1, 3], col0=[2, -2])
    with warnings.catch_warnings():
        # nn.LSTM's own forward re-assigned its flat weights while export traced, which
        # torch reported on every logged model ("... must be registered as buffers")
        warnings.simplefilter("error")
        exported = torch.export.export(m, (batch,))
    other = batch_for(seed=5, row0=[1, 0], col0=[0, 1])
    torch.testing.assert_close(exported.module()(other), m(other), equal_nan=True)


def test_convlstm_parameter_count_and_flops_by_hand() -> None:
    # one variable, patch 2 → 4 frame channels; cells 4→8, 8→8 with 3×3 kernels; head 8→4
    m = model(
        "convlstm",
        inputs=("a",),
        targets=("a",),
        leads=(1, 2),
        steps=3,
        hidden=(8, 8),
        filter=3,
        patch=2,
    )
    cell1, cell2 = (4 + 8) * 32 * 9 + 32, (8 + 8) * 32 * 9 + 32
    assert count_parameters(m) == cell1 + cell2 + 8 * 4 + 4
    positions = 4 * 4  # 8×8 patch folded by 2
    per_step = 2 * positions * ((4 + 8) * 32 * 9 + (8 + 8) * 32 * 9 + 8 * 4)
    steps = 3 - 1 + 2
    assert (
        flops_per_sample(
            m, batch_for(inputs=("a",), targets=("a",), leads=(1, 2), steps=3, batch=4)
        )
        == steps * per_step
    )


def test_flops_count_rnns_that_the_flop_counter_misses() -> None:
    class Wrapper(nn.Module):
        def __init__(self, rnn: nn.RNNBase) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.rnn(batch["x"])[0]

    batch = {"x": torch.randn(3, 5, 6)}
    for rnn, gates in (
        (nn.LSTM(6, 4, num_layers=2, batch_first=True), 4),
        (nn.GRU(6, 4, batch_first=True), 3),
    ):
        layers = [(6 + 4) * 4] + [(4 + 4) * 4] * (rnn.num_layers - 1)
        expected = 5 * sum(2 * gates * n for n in layers)
        assert flops_per_sample(Wrapper(rnn), batch) == expected, type(rnn).__name__


def test_scnn_is_much_cheaper_than_the_convlstm_reference() -> None:
    scnn = model(
        "scnn_lstm",
        inputs=("a",),
        targets=("a",),
        hidden=64,
        steps=12,
        leads=tuple(range(1, 13)),
        shape=(32, 64),
    )
    ref = model(
        "convlstm",
        inputs=("a",),
        targets=("a",),
        steps=12,
        leads=tuple(range(1, 13)),
        shape=(32, 64),
        hidden=(128,) * 4,
        filter=5,
    )
    batch = batch_for(
        inputs=("a",), targets=("a",), steps=12, leads=tuple(range(1, 13)), shape=(32, 64), batch=1
    )
    assert count_parameters(ref) == pytest.approx(11.5e6, rel=0.01)
    meta = {k: v.to("meta") for k, v in batch.items()}  # shapes only: nothing is computed
    assert flops_per_sample(scnn.to("meta"), meta) * 100 < flops_per_sample(ref.to("meta"), meta)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(targets=("z",)), r"target variables \['z'\] must be a non-empty subset"),
        (dict(name="convlstm", shape=(9, 8)), r"\[model\] patch 2 must divide"),
        (dict(leads=(3, 1)), "leads must be positive and increasing"),
        (dict(baseline="climatology"), "baseline 'climatology' needs a climatology"),
    ],
)
def test_bad_arguments_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        model(kwargs.pop("name", "scnn_lstm"), **kwargs)


def test_normalisation_must_be_finite_and_positive() -> None:
    with pytest.raises(ConfigError, match="std > 0"):
        build_model(
            model_settings(),
            input_variables=["a"],
            target_variables=["a"],
            input_steps=2,
            leads=[1],
            patch_shape=(8, 8),
            n_time_features=0,
            n_static=0,
            norm_mean=[0.0],
            norm_std=[0.0],
            climatology=None,
            step_s=3600,
        )
    with pytest.raises(ConfigError, match=r"one mean and std per input variable \(2\)"):
        build_model(
            model_settings(),
            input_variables=["a", "b"],
            target_variables=["a"],
            input_steps=2,
            leads=[1],
            patch_shape=(8, 8),
            n_time_features=0,
            n_static=0,
            norm_mean=np.zeros(3),
            norm_std=np.ones(3),
            climatology=None,
            step_s=3600,
        )

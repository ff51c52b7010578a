"""MemberMean: the mean of calibrated members, a baseline bit for bit where all fall back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stpipe.core.errors import ConfigError
from stpipe.models.baselines import BASELINE_WEIGHTS
from stpipe.models.ensemble import MemberMean

from .test_baselines import climatology
from .test_models import batch_for, model, one_thread  # noqa: F401 (fixture)


def member(seed: int, *, name: str = "scnn_lstm", **kwargs) -> nn.Module:
    """A model whose network adds its own (seeded) residual to the blend: members differ."""
    m = model(name, clim=climatology() if name != "convlstm" else None, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return m


def calibrated(seed: int, references: list[str], shrink: list[float]) -> nn.Module:
    """A member calibrated per lead to ``shrink``·model + (1 − shrink)·reference."""
    m = member(seed)
    for i, (name, s) in enumerate(zip(references, shrink, strict=True)):
        m.anchor[i] = torch.tensor(BASELINE_WEIGHTS[name])
        m.shrink[i] = s
    return m


@torch.no_grad()
def test_a_lead_where_every_member_falls_back_is_the_reference_bit_for_bit() -> None:
    members = [
        calibrated(seed, ["advection", "persistence_clim_change"], [0.0, s])
        for seed, s in enumerate([0.3, 0.9, 0.6])
    ]
    batch = batch_for()
    outputs = [m(batch) for m in members]
    assert not torch.equal(outputs[0][:, 1], outputs[1][:, 1]), "the members differ at lead 2"
    mean = MemberMean(members).eval()(batch)
    assert torch.equal(mean[:, 0], outputs[0][:, 0]), "lead 0: the reference itself"
    assert not torch.equal(mean[:, 1], outputs[0][:, 1])
    torch.testing.assert_close(mean[:, 1], torch.stack(outputs)[:, :, 1].mean(0))


@torch.no_grad()
def test_the_mean_of_members_on_other_references_is_their_mean() -> None:
    members = [
        calibrated(0, ["advection", "persistence"], [0.5, 0.0]),
        calibrated(1, ["persistence_clim_change", "persistence"], [1.0, 0.2]),
    ]
    batch = batch_for(row0=[-1, 3], col0=[2, -2])  # padded edges: NaN outside the grid
    expected = torch.stack([m(batch) for m in members]).mean(0)
    torch.testing.assert_close(MemberMean(members)(batch), expected, equal_nan=True)


@torch.no_grad()
def test_members_without_a_calibration_are_averaged_plainly() -> None:
    members = [member(seed, name="convlstm") for seed in range(3)]
    batch = batch_for()
    expected = torch.stack([m(batch) for m in members]).mean(0)
    torch.testing.assert_close(MemberMean(members)(batch), expected)


def test_the_mean_exports_and_matches_eager() -> None:
    ensemble = MemberMean([calibrated(s, ["advection"] * 2, [0.4, 0.0]) for s in range(2)])
    exported = torch.export.export(ensemble.eval(), (batch_for(),))
    other = batch_for(seed=5, row0=[1, 0], col0=[0, 1])
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other), ensemble(other), equal_nan=True)


def test_members_must_forecast_the_same_leads() -> None:
    with pytest.raises(ConfigError, match="member 1 differs from member 0 in leads"):
        MemberMean([member(0), member(1, leads=(1, 2))])
    with pytest.raises(ConfigError, match="at least one member"):
        MemberMean([])

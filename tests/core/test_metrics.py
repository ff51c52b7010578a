"""Metrics against hand-computed values: errors, latitude weights, ACC, skill, OpenSTL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stpipe.core.grid import latitude_weights
from stpipe.core.metrics import (
    AnomalyCorrelation,
    ErrorAccumulator,
    OpenSTLErrors,
    patch_weights,
    skill,
)


def field(values: list[float], *, shape: tuple[int, ...] = (1, 1, 1, 2, 2)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_rmse_mae_mse_by_hand_and_streaming_equals_one_batch() -> None:
    # errors 1, -2, 3, 0 on one lead/variable; mask drops nothing
    pred = field([1.0, 0.0, 3.0, 4.0])
    target = field([0.0, 2.0, 0.0, 4.0])
    ones = torch.ones_like(pred)
    acc = ErrorAccumulator()
    acc.update(pred, target, ones)
    assert acc.mse().item() == pytest.approx((1 + 4 + 9 + 0) / 4)
    assert acc.rmse().item() == pytest.approx(math.sqrt(14 / 4))
    assert acc.mae().item() == pytest.approx((1 + 2 + 3 + 0) / 4)

    split = ErrorAccumulator()
    split.update(pred[..., :1, :], target[..., :1, :], ones[..., :1, :])
    split.update(pred[..., 1:, :], target[..., 1:, :], ones[..., 1:, :])
    assert torch.equal(split.mse(), acc.mse()), "two half batches must give the whole"


def test_mask_and_nan_target_drop_cells_but_nan_prediction_poisons() -> None:
    pred = field([1.0, 100.0, 3.0, 4.0])
    target = field([0.0, 0.0, float("nan"), 2.0])
    mask = field([1.0, 0.0, 1.0, 1.0])  # cell 1 masked, cell 2 has no target
    acc = ErrorAccumulator()
    acc.update(pred, target, mask)
    assert acc.mse().item() == pytest.approx((1 + 4) / 2), "only cells 0 and 3 count"

    bad = ErrorAccumulator()
    bad.update(field([float("nan"), 0, 0, 0]), target, mask)
    assert math.isnan(bad.mse().item()), "a NaN forecast at a scored cell must show"


def test_results_are_per_lead_and_variable() -> None:
    target = torch.zeros(3, 2, 4, 2, 2)  # B=3, L=2, V=4
    pred = torch.arange(8, dtype=torch.float32).reshape(1, 2, 4, 1, 1).expand(3, 2, 4, 2, 2)
    acc = ErrorAccumulator()
    acc.update(pred, target, torch.ones_like(target))
    assert acc.rmse().shape == (2, 4)
    assert torch.allclose(acc.mae(), torch.arange(8, dtype=torch.float64).reshape(2, 4))


def test_latitude_weighted_rmse_follows_weatherbench() -> None:
    lat = np.array([0.0, 60.0])  # cos: 1 and 0.5 → weights 4/3 and 2/3
    w_grid = torch.from_numpy(latitude_weights(lat))
    assert w_grid.tolist() == pytest.approx([4 / 3, 2 / 3])
    err_rows = [1.0, 1.0, 2.0, 2.0]  # row 0 errors 1, row 1 errors 2
    pred, target = field(err_rows), torch.zeros(1, 1, 1, 2, 2)
    acc = ErrorAccumulator()
    acc.update(
        pred, target, torch.ones_like(pred), weights=patch_weights(w_grid, torch.tensor([0]), 2)
    )
    expected = math.sqrt((4 / 3 * 1 + 4 / 3 * 1 + 2 / 3 * 4 + 2 / 3 * 4) / 4)
    assert acc.weighted_rmse().item() == pytest.approx(expected)
    assert acc.rmse().item() == pytest.approx(math.sqrt(10 / 4)), "unweighted stays plain"


def test_patch_weights_crop_rows_and_zero_outside_the_grid() -> None:
    w_grid = torch.tensor([1.0, 2.0, 3.0])
    w = patch_weights(w_grid, torch.tensor([-1, 2]), 3)
    assert w.shape == (2, 1, 1, 3, 1)
    assert w[0, 0, 0, :, 0].tolist() == [0.0, 1.0, 2.0]
    assert w[1, 0, 0, :, 0].tolist() == [3.0, 0.0, 0.0]


def test_acc_uncentred_and_centred_by_hand() -> None:
    clim = field([10.0, 10.0, 10.0, 10.0])
    target = field([11.0, 9.0, 12.0, 10.0])  # o' = 1, -1, 2, 0
    pred = field([12.0, 10.0, 11.0, 9.0])  # f' = 2, 0, 1, -1
    acc = AnomalyCorrelation()
    acc.update(pred, target, torch.ones_like(pred), clim)
    fo, ff, oo = 2 + 0 + 2 + 0, 4 + 0 + 1 + 1, 1 + 1 + 4 + 0
    assert acc.result().item() == pytest.approx(fo / math.sqrt(ff * oo))
    f = np.array([2.0, 0, 1, -1])
    o = np.array([1.0, -1, 2, 0])
    assert acc.result(centred=True).item() == pytest.approx(np.corrcoef(f, o)[0, 1])


def test_acc_weighted_and_perfect_forecast_is_one() -> None:
    clim = torch.zeros(2, 1, 1, 2, 2)
    target = torch.randn(2, 1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    w = patch_weights(torch.tensor([4 / 3, 2 / 3]), torch.tensor([0, 0]), 2)
    acc = AnomalyCorrelation()
    acc.update(target, target, torch.ones_like(target), clim, weights=w)
    assert acc.result().item() == pytest.approx(1.0)
    wrong = AnomalyCorrelation()
    wrong.update(-target, target, torch.ones_like(target), clim, weights=w)
    assert wrong.result().item() == pytest.approx(-1.0)


def test_skill_against_reference() -> None:
    assert skill(torch.tensor([1.0, 4.0]), torch.tensor([4.0, 4.0])).tolist() == [0.75, 0.0]


def test_openstl_mse_mae_match_their_definition() -> None:
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 200, (5, 4, 2, 3, 3))  # B, frames, C, H, W in physical units
    true = rng.uniform(0, 200, (5, 4, 2, 3, 3))
    high = 250.0
    # OpenSTL: data already in [0, 1]; np.mean over (samples, frames), sum over C, H, W
    p, t = pred / high, true / high
    expected_mse = np.mean((p - t) ** 2, axis=(0, 1)).sum()
    expected_mae = np.mean(np.abs(p - t), axis=(0, 1)).sum()
    acc = OpenSTLErrors(low=0.0, high=high)
    ones = torch.ones(pred.shape)
    acc.update(torch.from_numpy(pred[:2]), torch.from_numpy(true[:2]), ones[:2])
    acc.update(torch.from_numpy(pred[2:]), torch.from_numpy(true[2:]), ones[2:])
    assert acc.mse_all().item() == pytest.approx(expected_mse)
    assert acc.mae_all().item() == pytest.approx(expected_mae)
    per_frame = np.mean((p - t) ** 2, axis=0).sum(axis=(1, 2, 3))
    assert acc.mse().numpy() == pytest.approx(per_frame)
    assert acc.mse().mean().item() == pytest.approx(expected_mse), "equal counts: mean of frames"


def test_accumulators_refuse_empty_results_and_bad_scaling() -> None:
    with pytest.raises(ValueError, match="no batch was added"):
        ErrorAccumulator().rmse()
    with pytest.raises(ValueError, match="high > low"):
        OpenSTLErrors(low=1.0, high=1.0)

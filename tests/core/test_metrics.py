"""Metrics against hand-computed values: errors, latitude weights, ACC, skill, OpenSTL;
the table and which forecasters each metric scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from stpipe.core.grid import latitude_weights
from stpipe.core.metrics import (
    MAE,
    METRICS,
    RMSE,
    AnomalyCorrelation,
    GridPlacement,
    LatitudeWeightedRMSE,
    Metric,
    MetricSums,
    MSESkill,
    OpenSTLError,
    ScoredBatch,
    ScoringSetup,
    headline_metric,
    metric_units,
    patch_weights,
    skill,
)


def field(values: list[float], *, shape: tuple[int, ...] = (1, 1, 1, 2, 2)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def scored(pred: Tensor, target: Tensor, mask: Tensor | None = None, **kw) -> ScoredBatch:
    """One forecaster ``f`` scored against ``target`` (mask: every cell counts)."""
    return ScoredBatch({"f": pred}, target, torch.ones_like(target) if mask is None else mask, **kw)


def per_variable(metric: Metric, *batches: ScoredBatch, forecaster: str = "f") -> Tensor:
    """[L, V] of ``metric`` over ``batches`` (sums added batch by batch)."""
    sums = sum(metric.batch_sums(b, forecaster) for b in batches)
    return metric.per_variable(sums)


def test_rmse_mae_mse_by_hand_and_streaming_equals_one_batch() -> None:
    # errors 1, -2, 3, 0 on one lead/variable; mask drops nothing
    pred = field([1.0, 0.0, 3.0, 4.0])
    target = field([0.0, 2.0, 0.0, 4.0])
    whole = scored(pred, target)
    rmse = per_variable(RMSE(), whole)
    assert rmse.square().item() == pytest.approx((1 + 4 + 9 + 0) / 4), "MSE"
    assert rmse.item() == pytest.approx(math.sqrt(14 / 4))
    assert per_variable(MAE(), whole).item() == pytest.approx((1 + 2 + 3 + 0) / 4)

    halves = [
        scored(pred[..., :1, :], target[..., :1, :]),
        scored(pred[..., 1:, :], target[..., 1:, :]),
    ]
    for metric in (RMSE(), MAE()):
        assert torch.equal(per_variable(metric, *halves), per_variable(metric, whole)), (
            f"{metric.name}: two half batches must give the whole"
        )


def test_mask_and_nan_target_drop_cells_but_nan_prediction_poisons() -> None:
    pred = field([1.0, 100.0, 3.0, 4.0])
    target = field([0.0, 0.0, float("nan"), 2.0])
    mask = field([1.0, 0.0, 1.0, 1.0])  # cell 1 masked, cell 2 has no target
    rmse = per_variable(RMSE(), scored(pred, target, mask))
    assert rmse.square().item() == pytest.approx((1 + 4) / 2), "only cells 0 and 3 count"

    bad = per_variable(RMSE(), scored(field([float("nan"), 0, 0, 0]), target, mask))
    assert math.isnan(bad.item()), "a NaN forecast at a scored cell must show"


def test_results_are_per_lead_and_variable_and_pooled_per_lead() -> None:
    target = torch.zeros(3, 2, 4, 2, 2)  # B=3, L=2, V=4
    pred = torch.arange(8, dtype=torch.float32).reshape(1, 2, 4, 1, 1).expand(3, 2, 4, 2, 2)
    batch = scored(pred, target)
    assert per_variable(RMSE(), batch).shape == (2, 4)
    mae = per_variable(MAE(), batch)
    assert torch.allclose(mae, torch.arange(8, dtype=torch.float64).reshape(2, 4))
    # pooled over variables: the root of the mean MSE for RMSE, the mean for MAE
    sums = RMSE().batch_sums(batch, "f")
    expected = torch.arange(8.0, dtype=torch.float64).reshape(2, 4).square().mean(-1).sqrt()
    assert torch.allclose(RMSE().pooled(sums), expected)
    assert torch.allclose(MAE().pooled(MAE().batch_sums(batch, "f")), mae.mean(-1))


def test_latitude_weighted_rmse_follows_weatherbench() -> None:
    lat = np.array([0.0, 60.0])  # cos: 1 and 0.5 → weights 4/3 and 2/3
    w_grid = torch.from_numpy(latitude_weights(lat))
    assert w_grid.tolist() == pytest.approx([4 / 3, 2 / 3])
    err_rows = [1.0, 1.0, 2.0, 2.0]  # row 0 errors 1, row 1 errors 2
    pred, target = field(err_rows), torch.zeros(1, 1, 1, 2, 2)
    batch = scored(pred, target, weights=patch_weights(w_grid, torch.tensor([0]), 2))
    expected = math.sqrt((4 / 3 * 1 + 4 / 3 * 1 + 2 / 3 * 4 + 2 / 3 * 4) / 4)
    assert per_variable(LatitudeWeightedRMSE(), batch).item() == pytest.approx(expected)
    assert per_variable(RMSE(), batch).item() == pytest.approx(math.sqrt(10 / 4)), (
        "unweighted stays plain"
    )


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
    batch = scored(pred, target, climatology=clim)
    fo, ff, oo = 2 + 0 + 2 + 0, 4 + 0 + 1 + 1, 1 + 1 + 4 + 0
    assert per_variable(AnomalyCorrelation(), batch).item() == pytest.approx(
        fo / math.sqrt(ff * oo)
    )
    f = np.array([2.0, 0, 1, -1])
    o = np.array([1.0, -1, 2, 0])
    centred = per_variable(AnomalyCorrelation(centred=True), batch)
    assert centred.item() == pytest.approx(np.corrcoef(f, o)[0, 1])


def test_acc_weighted_and_perfect_forecast_is_one() -> None:
    clim = torch.zeros(2, 1, 1, 2, 2)
    target = torch.randn(2, 1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    w = patch_weights(torch.tensor([4 / 3, 2 / 3]), torch.tensor([0, 0]), 2)
    perfect = scored(target, target, climatology=clim, weights=w)
    assert per_variable(AnomalyCorrelation(), perfect).item() == pytest.approx(1.0)
    wrong = scored(-target, target, climatology=clim, weights=w)
    assert per_variable(AnomalyCorrelation(), wrong).item() == pytest.approx(-1.0)


def test_skill_against_reference() -> None:
    assert skill(torch.tensor([1.0, 4.0]), torch.tensor([4.0, 4.0])).tolist() == [0.75, 0.0]


def test_mse_skill_per_variable_and_pooled_from_the_mean_mses() -> None:
    target = torch.zeros(1, 1, 2, 1, 1)  # V=2
    preds = {
        "f": field([1.0, 2.0], shape=(1, 1, 2, 1, 1)),
        "persistence": field([2.0, 2.0], shape=(1, 1, 2, 1, 1)),
    }
    batch = ScoredBatch(preds, target, torch.ones_like(target))
    metric = MSESkill("persistence")
    sums = metric.batch_sums(batch, "f")
    assert metric.per_variable(sums).tolist() == [[1 - 1 / 4, 0.0]]
    assert metric.pooled(sums).tolist() == [1 - (1 + 4) / 2 / 4]
    assert metric.per_variable(metric.batch_sums(batch, "persistence")).tolist() == [[0.0, 0.0]]


def test_openstl_mse_mae_match_their_definition() -> None:
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 200, (5, 4, 2, 3, 3))  # B, frames, C, H, W in physical units
    true = rng.uniform(0, 200, (5, 4, 2, 3, 3))
    high = 250.0
    # OpenSTL: data already in [0, 1]; np.mean over (samples, frames), sum over C, H, W
    p, t = pred / high, true / high
    expected_mse = np.mean((p - t) ** 2, axis=(0, 1)).sum()
    expected_mae = np.mean(np.abs(p - t), axis=(0, 1)).sum()

    def batch(part: slice) -> ScoredBatch:
        return scored(
            torch.from_numpy(pred[part]),
            torch.from_numpy(true[part]),
            placement=GridPlacement(
                torch.zeros(5, dtype=torch.long)[part],
                torch.zeros(5, dtype=torch.long)[part],
                (3, 3),
            ),
            value_range=(0.0, high),
        )

    batches = [batch(slice(None, 2)), batch(slice(2, None))]
    mse, mae = OpenSTLError(squared=True), OpenSTLError(squared=False)
    mse_sums = sum(mse.batch_sums(b, "f") for b in batches)
    mae_sums = sum(mae.batch_sums(b, "f") for b in batches)
    per_frame = np.mean((p - t) ** 2, axis=0).sum(axis=(1, 2, 3))
    assert mse.pooled(mse_sums).numpy() == pytest.approx(per_frame), "summed over channels"
    per_channel = np.mean((p - t) ** 2, axis=0).sum(axis=(2, 3))
    assert mse.per_variable(mse_sums).numpy() == pytest.approx(per_channel)
    # OpenSTL's reported number averages samples and frames together: with equal counts,
    # the mean over frames
    assert mse.pooled(mse_sums).mean().item() == pytest.approx(expected_mse)
    assert mae.pooled(mae_sums).mean().item() == pytest.approx(expected_mae)


def test_openstl_places_patches_on_the_grid_and_skips_cells_never_counted() -> None:
    # two 1×2 patches on a 2×3 grid: row 0 cols 0-1 and row 1 cols 2-3 (col 3 outside)
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 1, 1, 1, 2)
    batch = scored(
        pred,
        torch.zeros_like(pred),
        placement=GridPlacement(torch.tensor([0, 1]), torch.tensor([0, 2]), (2, 3)),
        value_range=(0.0, 1.0),
    )
    metric = OpenSTLError(squared=False)
    assert metric.per_variable(metric.batch_sums(batch, "f")).item() == pytest.approx(1 + 2 + 3)


def test_the_table_names_each_metric_once_with_its_units_and_direction() -> None:
    names = [m.name for m in METRICS]
    assert len(set(names)) == len(names)
    assert all(m.units in ("variable", "variable²", "1") for m in METRICS)
    assert {m.name for m in METRICS if m.better == "higher"} == {
        "acc",
        "skill_vs_persistence",
        "skill_vs_climatology",
    }
    assert metric_units("variable", "K") == "K" and metric_units("variable²", "K") == "K²"
    assert metric_units("variable²", "m s-1") == "(m s-1)²" and metric_units("1", "K") == "1"


def test_headline_is_latitude_weighted_rmse_on_latlon_grids_else_rmse() -> None:
    assert headline_metric(latlon=True) == "rmse_lat_weighted"
    assert headline_metric(latlon=False) == "rmse"


@pytest.mark.parametrize(
    ("latlon", "expected"),
    [
        (
            True,
            {
                "rmse",
                "mae",
                "skill_vs_persistence",
                "skill_vs_climatology",
                "rmse_lat_weighted",
                "acc",
            },
        ),
        (
            False,
            {
                "rmse",
                "mae",
                "skill_vs_persistence",
                "skill_vs_climatology",
                "mse_openstl",
                "mae_openstl",
            },
        ),
    ],
)
def test_each_grid_gets_its_metrics(latlon: bool, expected: set[str]) -> None:
    forecasters = ("model", "persistence", "climatology", "persistence_clim_change")
    sums = MetricSums(METRICS, ScoringSetup(latlon=latlon, forecasters=forecasters))
    assert set(sums.scored) == expected
    if latlon:
        assert sums.scored["acc"][1] == ("model", "persistence", "persistence_clim_change"), (
            "the climatology has no anomaly to correlate"
        )
    alone = MetricSums(METRICS, ScoringSetup(latlon=latlon, forecasters=("model",)))
    assert not {"skill_vs_persistence", "skill_vs_climatology"} & set(alone.scored), (
        "skill needs its reference"
    )


def test_metric_sums_add_batches_and_refuse_empty_results_bad_scaling_and_twins() -> None:
    target = torch.zeros(1, 1, 1, 2, 2)
    sums = MetricSums([RMSE()], ScoringSetup(latlon=False, forecasters=("f",)))
    with pytest.raises(ValueError, match="no batch was added"):
        sums.per_variable("rmse", "f")
    sums.update(scored(field([1.0, 1.0, 1.0, 1.0]), target))
    sums.update(scored(field([3.0, 3.0, 3.0, 3.0]), target))
    assert sums.pooled("rmse", "f").item() == pytest.approx(math.sqrt(5.0))
    with pytest.raises(ValueError, match="high > low"):
        scored(target, target, value_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="unique"):
        MetricSums([RMSE(), RMSE()], ScoringSetup(latlon=False, forecasters=("f",)))


def _cell_area_weights(lat: np.ndarray) -> np.ndarray:
    """Cell-area weights as WeatherBench 2 defines them: sin(upper edge) − sin(lower edge),
    edges halfway between rows and at ±90° outside the first and last row, mean 1."""
    phi = np.deg2rad(lat)
    edges = np.concatenate([[-np.pi / 2], (phi[:-1] + phi[1:]) / 2, [np.pi / 2]])
    area = np.sin(edges[1:]) - np.sin(edges[:-1])
    return area / area.mean()


def test_latitude_weights_equal_cell_area_weights_only_on_global_grids_without_pole_rows():
    # a global 5.625° grid without pole rows (WeatherBench's 32 × 64): the same weights
    offset = np.linspace(-90 + 5.625 / 2, 90 - 5.625 / 2, 32)
    np.testing.assert_allclose(latitude_weights(offset), _cell_area_weights(offset), rtol=1e-12)
    # with rows at the poles (1.5°, 121 rows) the pole rows differ: 0 here, half a cell there
    with_poles = np.linspace(-90, 90, 121)
    assert latitude_weights(with_poles)[0] == pytest.approx(0, abs=1e-12)
    assert _cell_area_weights(with_poles)[0] > 0
    # a regional grid: the edge rows' cells reach to the poles in WeatherBench 2's formula
    regional = np.linspace(49.0, 59.0, 41)
    assert not np.allclose(latitude_weights(regional), _cell_area_weights(regional), rtol=1e-3)

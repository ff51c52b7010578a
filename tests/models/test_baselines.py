"""Baselines are exact on constructed data: persistence, climatology, persistence plus the
climatological change, cropped patches; the blend weights residual models start from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stpipe.core.errors import ConfigError
from stpipe.models import build_model, model_settings
from stpipe.models.advection import advect, motion
from stpipe.models.baselines import baseline_weights
from stpipe.models.climatology import Climatology, Period, slots_per_period

from . import make_batch

HOUR_NS = 3600 * 10**9


def climatology(
    *,
    variables: tuple[str, ...] = ("a", "b"),
    grid: tuple[int, int] = (10, 12),
    period: Period = "day",
) -> Climatology:
    rng = np.random.default_rng(1)
    slots = slots_per_period(period=period, step_s=3600)
    table = rng.standard_normal((slots, len(variables), *grid)).astype(np.float32) + 10.0
    r = np.linspace(1.0, 0.0, 13, dtype=np.float32)  # damped anomaly persistence, r = 1 − k/12
    blend = np.stack([r, np.ones_like(r), -r], axis=-1)[None].repeat(len(variables), axis=0)
    return Climatology(
        variables=variables, period=period, step_s=3600, table=table, blend_weights=blend
    )


def baseline(name: str, *, leads: tuple[int, ...] = (1, 3), clim: Climatology | None = None):
    return build_model(
        model_settings({"name": name}),
        input_variables=["a", "b"],
        target_variables=["b"],
        input_steps=4,
        leads=leads,
        patch_shape=(8, 8),
        n_time_features=4,
        n_static=0,
        norm_mean=[0.0, 0.0],
        norm_std=[1.0, 1.0],
        climatology=clim,
        step_s=3600,
    )


def expected_clim(clim: Climatology, times: torch.Tensor, row0: int, col0: int) -> np.ndarray:
    """C of variable b at ``times`` [N] (ns) for an 8×8 patch at (row0, col0), by hand."""
    out = np.full((len(times), 8, 8), np.nan, dtype=np.float32)
    for n, t in enumerate(times.tolist()):
        slot = (t // HOUR_NS) % 24
        for i in range(8):
            for j in range(8):
                r, c = row0 + i, col0 + j
                if 0 <= r < clim.table.shape[2] and 0 <= c < clim.table.shape[3]:
                    out[n, i, j] = clim.table[slot, 1, r, c]
    return out


def test_persistence_is_the_last_input_frame_at_every_lead() -> None:
    batch = make_batch(leads=(1, 2, 5))
    out = baseline("persistence", leads=(1, 2, 5))(batch)
    assert out.shape == (2, 3, 1, 8, 8)
    for lead in range(3):
        assert torch.equal(out[:, lead, 0], batch["x"][:, -1, 1])


def test_persistence_falls_back_to_the_last_finite_value() -> None:
    batch = make_batch()
    batch["x"][0, -1, 1, 2, 3] = float("nan")
    batch["x"][0, -2, 1, 2, 3] = float("nan")
    out = baseline("persistence")(batch)
    assert out[0, 0, 0, 2, 3] == batch["x"][0, -3, 1, 2, 3]


def test_climatology_baseline_equals_table_at_valid_slots_and_patch() -> None:
    clim = climatology()
    batch = make_batch(start="2024-01-01T20:00", row0=[1, -3], col0=[2, 7])
    out = baseline("climatology", clim=clim)(batch)
    for i, (r0, c0) in enumerate([(1, 2), (-3, 7)]):
        expected = expected_clim(clim, batch["y_times"][i], r0, c0)
        np.testing.assert_array_equal(out[i, :, 0].numpy(), expected)
    assert torch.isnan(out[1, :, 0, :3]).all(), "rows above the grid are NaN"
    assert torch.isnan(out[1, :, 0, :, 5:]).all(), "columns past the grid are NaN"
    assert torch.isfinite(out[1, :, 0, 3:, :5]).all()


def test_persistence_plus_climatological_change_is_exact() -> None:
    clim = climatology()
    batch = make_batch(start="2024-01-01T22:00", row0=[0, 2], col0=[0, 4])
    out = baseline("persistence_clim_change", clim=clim)(batch)
    for i, (r0, c0) in enumerate([(0, 0), (2, 4)]):
        valid = expected_clim(clim, batch["y_times"][i], r0, c0)
        init = expected_clim(clim, batch["x_times"][i, -1:], r0, c0)
        expected = batch["x"][i, -1, 1].numpy() + valid - init
        np.testing.assert_allclose(out[i, :, 0].numpy(), expected, rtol=0, atol=1e-5)


def test_climatology_baselines_need_a_climatology() -> None:
    with pytest.raises(ConfigError, match="'climatology' needs a climatology"):
        baseline("climatology")


def test_baseline_weights_per_name_and_auto_uses_the_fitted_blend() -> None:
    clim = climatology()
    kwargs = dict(leads=[1, 6], variables=["b"], climatology=clim)
    assert baseline_weights("persistence", **kwargs)[:, 0].tolist() == [[1, 0, 0, 0]] * 2
    assert baseline_weights("climatology", **kwargs)[:, 0].tolist() == [[0, 1, 0, 0]] * 2
    pcc = baseline_weights("persistence_clim_change", **kwargs)[:, 0].tolist()
    assert pcc == [[1, 1, -1, 0]] * 2
    assert baseline_weights("advection", **kwargs)[:, 0].tolist() == [[0, 1, -1, 1]] * 2
    auto = baseline_weights("auto", **kwargs)[:, 0]
    np.testing.assert_allclose(auto, [[11 / 12, 1, -11 / 12, 0], [0.5, 1, -0.5, 0]], rtol=1e-6)
    no_clim = baseline_weights("auto", leads=[1], variables=["b"], climatology=None)
    assert no_clim.tolist() == [[[1, 0, 0, 0]]], "without climatology auto is persistence"


def moving_waves(steps: int, *, velocity: tuple[float, float], shape=(24, 32)) -> torch.Tensor:
    """Smooth waves moving by ``velocity`` (rows, columns per step): [steps, H, W]."""
    rows, cols = torch.meshgrid(
        torch.arange(shape[0], dtype=torch.float64),
        torch.arange(shape[1], dtype=torch.float64),
        indexing="ij",
    )
    frames = []
    for t in range(steps):
        r, c = rows - velocity[0] * t, cols - velocity[1] * t
        frames.append(
            torch.sin(2 * np.pi * c / 17)
            + torch.cos(2 * np.pi * r / 13)
            + 0.5 * torch.sin(2 * np.pi * (r + c) / 23)
        )
    return torch.stack(frames).float()


def test_motion_recovers_the_velocity_of_moving_waves() -> None:
    # within 3 % of half a cell per step: the linearisation's error on 13-cell waves
    for velocity in [(0.2, -0.4), (-0.5, 0.0), (0.0, 0.0)]:
        frames = moving_waves(12, velocity=velocity)
        found = motion(frames[None, :, None])[0, 0]
        np.testing.assert_allclose(found.tolist(), velocity, atol=0.015)


def test_motion_is_zero_without_two_steps_or_gradients_and_ignores_missing_cells() -> None:
    frames = moving_waves(6, velocity=(0.3, 0.3))[None, :, None]
    assert motion(frames[:, -1:]).abs().max() == 0, "one step shows no motion"
    assert motion(torch.full((1, 6, 1, 8, 8), 3.0)).abs().max() == 0, "a flat field"
    holed = frames.clone()
    holed[:, 2:, :, 5:9, 7:12] = float("nan")
    np.testing.assert_allclose(motion(holed)[0, 0].tolist(), (0.3, 0.3), atol=0.02)


def test_advect_moves_a_field_by_whole_cells_and_holds_the_edge() -> None:
    field = torch.randn(1, 1, 6, 7)
    moved = advect(field, torch.tensor([[[1.0, -1.0]]]), [2])[0, 0, 0]  # [B, L, V, H, W]
    torch.testing.assert_close(moved[2:, :-2], field[0, 0, :-2, 2:], rtol=0, atol=1e-5)
    torch.testing.assert_close(moved[0, :-2], field[0, 0, 0, 2:], rtol=0, atol=1e-5)
    torch.testing.assert_close(moved[:, -1], moved[:, -3], rtol=0, atol=1e-5)
    half = advect(field, torch.tensor([[[0.0, 0.5]]]), [1])[0, 0, 0]
    torch.testing.assert_close(half[:, 0], field[0, 0, :, 0], rtol=0, atol=0), "inflow: the edge"
    torch.testing.assert_close(half[:, 1:], (field[0, 0, :, :-1] + field[0, 0, :, 1:]) / 2)
    still = advect(field, torch.zeros(1, 1, 2), [1, 5])
    assert torch.equal(still[:, 0], field) and torch.equal(still[:, 1], field)


def test_advect_keeps_a_cells_own_value_where_its_source_is_missing() -> None:
    field = torch.randn(1, 1, 6, 6)
    field[0, 0, 2, 2] = float("nan")
    moved = advect(field, torch.tensor([[[0.0, 1.0]]]), [1])[0, 0, 0]
    assert torch.isnan(moved[2, 2]), "a missing cell stays missing"
    assert moved[2, 3] == field[0, 0, 2, 3], "its source was the missing cell"
    assert torch.isfinite(moved[[0, 1, 3, 4, 5]]).all()


def test_advection_baseline_moves_the_anomaly_over_the_climatology() -> None:
    clim = climatology(variables=("a", "b"), grid=(8, 8))
    batch = make_batch(steps=8, leads=(1, 3), start="2024-01-01T05:00")
    anomaly = moving_waves(8, velocity=(0.0, 0.5), shape=(8, 8))
    inputs = np.stack([expected_clim(clim, batch["x_times"][i], 0, 0) for i in range(2)])
    batch["x"][:, :, 1] = torch.as_tensor(inputs) + anomaly  # C at the input times + waves
    out = baseline("advection", leads=(1, 3), clim=clim)(batch)
    pcc = baseline("persistence_clim_change", leads=(1, 3), clim=clim)(batch)
    velocity = motion(anomaly[None, :, None])
    for i in range(2):
        valid = torch.as_tensor(expected_clim(clim, batch["y_times"][i], 0, 0))
        moved = advect(anomaly[None, -1:], velocity, (1, 3))[0, :, 0]
        torch.testing.assert_close(out[i, :, 0], valid + moved, rtol=0, atol=1e-4)
    assert (out[:, 1] - batch["y"][:, 1]).abs().mean() != (
        pcc[:, 1] - batch["y"][:, 1]
    ).abs().mean()


def test_advection_baseline_is_persistence_clim_change_when_nothing_moves() -> None:
    clim = climatology(variables=("a", "b"), grid=(8, 8))
    batch = make_batch(steps=4, start="2024-01-01T05:00")
    batch["x"][:, :, 1] = batch["x"][:, -1:, 1]  # the same field at every input step
    batch["x"][:, :, 1] += torch.as_tensor(
        np.stack([expected_clim(clim, batch["x_times"][i], 0, 0) for i in range(2)])
    ) - torch.as_tensor(
        np.stack([expected_clim(clim, batch["x_times"][i, -1:], 0, 0) for i in range(2)])
    )  # ... on the climatology's course: a standing anomaly
    out = baseline("advection", clim=clim)(batch)
    pcc = baseline("persistence_clim_change", clim=clim)(batch)
    torch.testing.assert_close(out, pcc, rtol=0, atol=1e-4)

"""The mirror augmentation: which samples flip, what flips with them, the climatology read."""

from __future__ import annotations

import numpy as np
import torch

from stpipe.learn.train.augment import AUGMENTATIONS, Mirror, augmentation, vector_signs
from stpipe.models.climatology import Climatology, ClimatologyLookup


def test_vector_signs_negate_the_component_along_the_mirrored_axis_of_pairs_only() -> None:
    signs = vector_signs(["t2m", "u10", "v10", "u100", "v"], among=["t2m", "u10", "v10", "u100"])
    # rows (north-south) reverse v10 only (v has no u, u100 no v100); columns reverse u10
    assert signs.tolist() == [[1, 1, -1, 1, 1], [1, -1, 1, 1, 1]]
    # a target v10 is a component when its u10 is among the inputs
    assert vector_signs(["v10"], among=["u10"]).tolist() == [[-1], [1]]


def _batch(b: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, 3, 4, 5, generator=g)
    x[0, 0, 0, 0, 0] = float("nan")
    return {
        "x": x,
        "y": torch.randn(b, 2, 2, 4, 5, generator=g),
        "mask": (torch.rand(b, 2, 2, 4, 5, generator=g) > 0.3).float(),
        "static": torch.randn(b, 2, 4, 5, generator=g),
        "row0": torch.arange(b),
        "col0": torch.arange(b),
    }


def test_each_sample_is_flipped_as_drawn_with_its_wind_components() -> None:
    batch = _batch()
    torch.manual_seed(1)
    out = Mirror(["t2m", "u10", "v10"], ["t2m", "v10"])(batch)
    rows, cols = out["mirror_rows"], out["mirror_cols"]
    assert rows.dtype == torch.bool and 0 < int(rows.sum()) < 16 and 0 < int(cols.sum()) < 16
    assert not torch.equal(rows, cols)
    for i in range(16):
        dims = [d for d, flip in ((-2, rows[i]), (-1, cols[i])) if flip]

        def flipped(t: torch.Tensor, dims: list[int] = dims) -> torch.Tensor:
            return t.flip(dims) if dims else t.clone()

        x, y = flipped(batch["x"][i]), flipped(batch["y"][i])
        if rows[i]:  # north-south: the northward component changes sign
            x[:, 2], y[:, 1] = -x[:, 2], -y[:, 1]
        if cols[i]:  # east-west: the eastward one
            x[:, 1] = -x[:, 1]
        torch.testing.assert_close(out["x"][i], x, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(out["y"][i], y)
        assert torch.equal(out["mask"][i], flipped(batch["mask"][i]))
        assert torch.equal(out["static"][i], flipped(batch["static"][i]))
    assert out["row0"] is batch["row0"] and "mirror_rows" not in batch  # the input is kept


def test_a_mirrored_sample_reads_its_climatology_mirrored() -> None:
    table = np.arange(24 * 6 * 7, dtype=np.float32).reshape(24, 1, 6, 7)
    lookup = ClimatologyLookup(
        Climatology(
            variables=("a",),
            period="day",
            step_s=3600,
            table=table,
            blend_weights=np.ones((1, 3, 3), dtype=np.float32),
        ),
        variables=["a"],
        step_s=3600,
    )
    times = torch.tensor([[0, 3600 * 10**9]] * 4)
    row0, col0 = torch.tensor([-1, 0, 3, 2]), torch.tensor([0, -2, 4, 1])  # some cells outside
    plain = lookup(times, row0, col0, height=4, width=4)
    rows, cols = torch.tensor([True, False, True, False]), torch.tensor([True, True, False, False])
    mirrored = lookup(times, row0, col0, height=4, width=4, mirror=(rows, cols))
    for i in range(4):
        dims = [d for d, flip in ((-2, rows[i]), (-1, cols[i])) if flip]
        expected = plain[i].flip(dims) if dims else plain[i]
        torch.testing.assert_close(mirrored[i], expected, equal_nan=True, rtol=0, atol=0)


def test_the_table_names_every_setting_and_none_leaves_batches_alone() -> None:
    assert set(AUGMENTATIONS) == {"none", "mirror"}
    assert augmentation("none", inputs=["t2m"], targets=["t2m"]) is None
    assert isinstance(augmentation("mirror", inputs=["t2m"], targets=["t2m"]), Mirror)

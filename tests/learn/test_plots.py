"""Plots: PNG files of the documented pixel size, drawn from hand-made evaluations."""

from __future__ import annotations

import struct
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest

from stpipe.learn.evaluate import SampleMaps
from stpipe.learn.plots import plot_rmse_vs_lead, plot_sample_maps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a PNG file must start with."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def sample(n_leads: int, *, latlon: bool) -> SampleMaps:
    rng = np.random.default_rng(0)
    truth = rng.normal(280, 3, (n_leads, 8, 10))
    truth[:, :, -2:] = np.nan  # padding past the grid edge
    return SampleMaps(
        variable="t2m",
        units="K",
        init_time="2024-01-04T11:00:00",
        lead_hours=tuple(float(h) for h in range(1, n_leads + 1)),
        last_input=rng.normal(280, 3, (8, 10)),
        truth=truth,
        forecast=truth + rng.normal(0, 0.5, truth.shape),
        row_dim="lat" if latlon else "y",
        col_dim="lon" if latlon else "x",
        rows=np.linspace(50.0, 51.75, 8) if latlon else np.arange(8.0),
        cols=np.r_[np.linspace(-2.0, -0.5, 8), np.nan, np.nan] if latlon else np.arange(10.0),
    )


def test_rmse_vs_lead_is_a_png_of_the_requested_size(tmp_path: Path, hand_scores) -> None:
    path = plot_rmse_vs_lead(hand_scores(), tmp_path / "sub" / "rmse.png", size=(5.0, 3.0))
    assert path == tmp_path / "sub" / "rmse.png"
    assert png_size(path) == (500, 300)
    assert path.stat().st_size > 5_000, "a blank figure compresses to almost nothing"


@pytest.mark.parametrize(
    ("n_leads", "rows", "latlon"), [(4, 4, True), (12, 4, False), (2, 2, True)]
)
def test_sample_maps_have_a_row_per_shown_lead(
    tmp_path: Path, n_leads: int, rows: int, latlon: bool
) -> None:
    path = plot_sample_maps(sample(n_leads, latlon=latlon), tmp_path / "maps.png", cell_inches=2.0)
    assert png_size(path) == (4 * 200, rows * 200)
    assert path.stat().st_size > 20_000


def test_rmse_vs_lead_names_the_forecasters_in_words(
    tmp_path: Path, hand_scores, monkeypatch
) -> None:
    legends: list[list[str]] = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        legends.extend([t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    evaluation = hand_scores()
    evaluation.attrs["model_version"] = "7"
    plot_rmse_vs_lead(evaluation, tmp_path / "rmse.png")
    plot_rmse_vs_lead(evaluation, tmp_path / "c.png", role="champion", model_version="8")
    assert legends == [
        ["model v7", "persistence", "climatology", "persistence + climatological change"],
        ["champion v8", "persistence", "climatology", "persistence + climatological change"],
    ]


def test_sample_maps_name_the_patch_the_init_time_and_the_units(tmp_path: Path, monkeypatch):
    drawn: list[tuple[str, list[str]]] = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        drawn.append((fig._suptitle.get_text(), [ax.get_ylabel() for ax in fig.axes]))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    plot_sample_maps(sample(2, latlon=True), tmp_path / "maps.png")
    plot_sample_maps(sample(2, latlon=False), tmp_path / "cells.png")
    (latlon_title, latlon_labels), (cells_title, _) = drawn
    # the patch's cells inside the grid: the two NaN columns of padding are left out
    assert (
        latlon_title == "t2m (K), init 2024-01-04T11:00:00, patch lat 50 to 51.75, lon -2 to -0.5"
    )
    assert cells_title == "t2m (K), init 2024-01-04T11:00:00, patch y 0 to 7, x 0 to 9"
    bars = [label for label in latlon_labels if label not in {"", "lat"}]
    assert bars == ["t2m (K)", "forecast − truth (K)"] * 2  # one pair per lead row

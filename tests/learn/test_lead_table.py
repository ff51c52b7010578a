"""The per-lead table: every baseline, the best one and the margin, in words and units."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from stpipe.core.errors import ConfigError
from stpipe.learn.lead_table import lead_table


def test_table_has_model_every_baseline_best_baseline_and_margin(hand_scores) -> None:
    table = lead_table(hand_scores(), role="champion", model_version="3")

    assert table.columns == (
        "lead (h)",
        "champion v3",
        "persistence",
        "climatology",
        "persistence + climatological change",
        "best baseline",
        "best value",
        "margin",
    )
    assert table.rows == (
        ("1", "0.2", "0.22", "1.3", "0.25", "persistence", "0.22", "+9.1%"),
        ("3", "0.5", "0.8", "1.3", "0.6", "persistence + climatological change", "0.6", "+16.7%"),
        ("6", "0.8", "1.4", "1.3", "0.9", "persistence + climatological change", "0.9", "+11.1%"),
        ("12", "1.4", "2", "1.3", "1.35", "climatology", "1.3", "-7.7%"),
    )
    assert table.title == "Champion v3 on the test split (10 samples): RMSE (K) per lead"
    assert table.notes[0] == "RMSE of t2m, in K; lower is better."
    assert "margin = 1 − champion v3 / best baseline, on the RMSE at each lead" in table.notes[1]
    assert "not the MSE-based skill score" in table.notes[1]


def test_markdown_and_rich_show_the_same_cells_and_the_definitions(hand_scores) -> None:
    table = lead_table(hand_scores())
    markdown = table.to_markdown()
    assert markdown.startswith("**Model on the test split (10 samples): RMSE (K) per lead**")
    assert (
        "| 3 | 0.5 | 0.8 | 1.3 | 0.6 | persistence + climatological change | 0.6 | +16.7% |"
        in markdown
    )
    assert "- margin = 1 − model / best baseline" in markdown

    out = io.StringIO()
    Console(file=out, width=240).print(table.to_rich())
    printed = out.getvalue()
    assert "persistence + climatological change" in printed and "+16.7%" in printed
    assert "margin = 1 − model / best baseline" in printed


def test_without_baselines_the_table_is_the_model_alone(hand_scores) -> None:
    table = lead_table(hand_scores({"model": (1.0, 2.0, 3.0, 4.0)}))
    assert table.columns == ("lead (h)", "model")
    assert table.rows[1] == ("3", "2")
    assert len(table.notes) == 1


def test_a_score_where_higher_is_better_is_refused(hand_scores) -> None:
    with pytest.raises(ConfigError, match="compares errors"):
        lead_table(hand_scores(), metric="acc")

"""The evaluation Dataset read back: per-lead values, best baseline, margins, words, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xarray as xr

from stpipe.core.errors import ConfigError
from stpipe.learn.scores import (
    best_baseline,
    forecaster_label,
    from_dict,
    from_json,
    margins,
    metric_label,
    model_label,
    per_lead,
    summary,
    to_dict,
    to_json,
)


def test_best_baseline_is_the_lowest_error_at_each_lead(hand_scores) -> None:
    names, values = best_baseline(hand_scores(), "rmse")
    assert names == (
        "persistence",
        "persistence_clim_change",
        "persistence_clim_change",
        "climatology",
    )
    assert values == (0.22, 0.6, 0.9, 1.3)


def test_best_baseline_of_a_score_where_higher_is_better_is_the_highest(hand_scores) -> None:
    names, values = best_baseline(hand_scores(), "acc")
    assert names == ("persistence",) * 4 and values == (0.95, 0.7, 0.5, 0.3)


def test_margin_is_one_minus_model_over_best_baseline(hand_scores) -> None:
    assert margins(hand_scores(), "rmse") == pytest.approx(
        (1 - 0.2 / 0.22, 1 - 0.5 / 0.6, 1 - 0.8 / 0.9, 1 - 1.4 / 1.3)
    )
    with pytest.raises(ConfigError, match="compares errors"):
        margins(hand_scores(), "acc")


def test_without_baselines_there_is_no_best(hand_scores) -> None:
    alone = hand_scores({"model": (1.0, 2.0, 3.0, 4.0)})
    with pytest.raises(ConfigError, match="without baselines"):
        best_baseline(alone, "rmse")


def test_summary_averages_leads_and_rmse_wmean_is_the_headline_mean(hand_scores) -> None:
    means = summary(hand_scores())
    assert means["rmse_mean"]["climatology"] == pytest.approx(1.3)
    assert means["rmse_wmean"] == means["rmse_mean"], "the headline here is rmse"
    assert set(means["acc_mean"]) == {"model", "persistence"}


def test_per_lead_refuses_a_metric_it_does_not_have(hand_scores) -> None:
    with pytest.raises(
        ConfigError, match=r"'mae' is not in this evaluation; it has \['rmse', 'acc'\]"
    ):
        per_lead(hand_scores(), "mae")


def test_words_for_forecasters_and_metrics() -> None:
    assert forecaster_label("persistence_clim_change") == "persistence + climatological change"
    assert forecaster_label("climatology") == "climatology"
    assert forecaster_label("model", model="champion v3") == "champion v3"


def test_model_label_and_metric_label(hand_scores) -> None:
    evaluation = hand_scores()
    assert model_label(evaluation, role="champion") == "champion"
    evaluation.attrs["model_version"] = "4"
    assert model_label(evaluation, role="champion") == "champion v4"
    assert model_label(evaluation, version="5") == "model v5"
    assert metric_label(evaluation, "rmse") == "RMSE (K)"
    assert metric_label(evaluation, "acc") == "anomaly correlation", "dimensionless: no units"


def test_json_round_trip_gives_the_same_dataset(hand_scores, tmp_path: Path) -> None:
    evaluation = hand_scores()
    evaluation.attrs["model_version"] = "3"
    evaluation.attrs["climatology"] = "day of year × hour, ±30-day smoothing"
    raw = json.loads(to_json(evaluation, tmp_path / "e.json").read_text())
    assert raw["metrics"]["acc"].keys() == {"model", "persistence"}, "unscored left out"
    assert raw["model_version"] == "3"
    assert raw["climatology"] == "day of year × hour, ±30-day smoothing"
    xr.testing.assert_identical(from_json(tmp_path / "e.json"), evaluation)
    assert to_dict(from_dict(raw)) == raw

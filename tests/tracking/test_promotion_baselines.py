"""Promotion against the baselines: a candidate worse than the best baseline at some lead of
the validation window by more than ``[mlflow] baseline_tolerance`` is registered as
challenger with the reason, whatever the champion; within the tolerance the usual rule
decides. On a real MLflow registry (SQLite) with persistence as the candidate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from stpipe.app.jobs import data_context, tracking_for
from stpipe.learn import scores
from stpipe.learn.context import build_forecaster
from stpipe.learn.evaluate import evaluate_model
from stpipe.tracking import registry
from stpipe.tracking.registry import BaselineMargins
from tests.app.test_jobs import pipeline, register_baseline


@pytest.mark.parametrize(
    ("margins", "tolerance", "reason"),
    [
        ((0.1, -0.031), 0.02, "worse than persistence at 3 h by 3.1 % ("),
        ((-0.05, -0.031), 0.04, "worse than climatology at 1 h by 5.0 % ("),
        ((-0.05, -0.031), 0.02, "climatology at 1 h by 5.0 %, persistence at 3 h by 3.1 % ("),
        ((0.1, -0.019), 0.02, "better than v1"),
        ((0.1, math.nan), 0.02, "better than v1"),
    ],
)
def test_a_lead_worse_than_its_best_baseline_by_more_than_the_tolerance_refuses(
    margins, tolerance, reason
) -> None:
    baselines = BaselineMargins(
        metric="rmse",
        lead_hours=(1.0, 3.0),
        best=("climatology", "persistence"),
        margins=margins,
        tolerance=tolerance,
    )
    decision = registry.decide(
        metric="rmse_wmean",
        candidate_score=1.0,
        champion_version="1",
        champion_score=2.0,
        baselines=baselines,
    )
    assert reason in decision.reason
    assert decision.promoted == reason.startswith("better")
    assert decision.baseline_margin == min(m for m in margins if not math.isnan(m))
    assert decision.tags()["stpipe.baseline_margin"] == repr(decision.baseline_margin)


@pytest.mark.slow
def test_promotion_refuses_a_candidate_a_baseline_beats_on_the_validation_window(
    tmp_path: Path,
) -> None:
    # given: persistence as the candidate, and its margins over the best baseline per lead
    config = pipeline(tmp_path)
    data = data_context(config)
    persistence = build_forecaster(config.model, data, name="persistence").eval()
    validation = evaluate_model(persistence, data, split="val")
    metric = scores.headline(validation)
    margins = scores.margins(validation, metric)
    best, _ = scores.best_baseline(validation, metric)
    worst = int(np.argmin(margins))
    deficit = -margins[worst]
    assert deficit > 0.02, "on this store a baseline beats persistence at some lead"

    # a champion (promoted without the baseline rule): persistence + 2 K
    assert register_baseline(config, offset=2.0).promoted

    # when: persistence, better than the champion, is scored with a tolerance below its deficit
    config = pipeline(tmp_path, baseline_tolerance=deficit - 0.005)
    refused = register_baseline(config)

    # then: it is registered as challenger with the lead, the baseline and the deficit
    assert refused.alias == "challenger"
    assert refused.champion_score > refused.candidate_score, "better than the champion"
    lead = f"{scores.lead_hours(validation)[worst]:g} h"
    words = scores.forecaster_label(best[worst])
    assert refused.reason.startswith("worse than ")
    assert f"{words} at {lead} by {100 * deficit:.1f} %" in refused.reason
    assert refused.baseline_margin == pytest.approx(-deficit, rel=1e-6)
    tracking = tracking_for(config)
    assert registry.aliases(tracking) == {"champion": "1", "challenger": "2"}
    tags = tracking.client.get_model_version(tracking.model_name, "2").tags
    assert tags["stpipe.decision"] == "challenger"
    assert tags["stpipe.reason"] == refused.reason
    assert float(tags["stpipe.baseline_margin"]) == refused.baseline_margin

    # and with a tolerance above its deficit the same candidate is promoted
    config = pipeline(tmp_path, baseline_tolerance=deficit + 0.005)
    promoted = register_baseline(config)
    assert promoted.promoted and promoted.reason == "better than v1"
    assert registry.aliases(tracking) == {"champion": "3", "challenger": "2"}

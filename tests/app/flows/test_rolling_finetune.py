"""Two nights of a rolling split with fine-tuning, through the real nightly flow (Prefect's
test server, MLflow on SQLite): the second night trains one day further from the champion's
weights, and is promoted or not on the same new windows as the champion, re-scored there."""

from __future__ import annotations

import json

import pytest
import torch

from stpipe.app.cli import main
from stpipe.app.config import load_config
from stpipe.app.finetune import member_states
from stpipe.app.flows.nightly import nightly_flow
from stpipe.app.jobs import compare_versions, data_context, tracking_for
from stpipe.learn import scores
from stpipe.learn.evaluate import evaluate_model
from stpipe.tracking import registry
from stpipe.tracking.model import load_model

pytestmark = pytest.mark.slow

FIXED = "val_start = 2024-01-04\ntest_start = 2024-01-05\n"
ROLLING = "val_days = 1\ntest_days = 1\n"
# [train] is the config's last table: a full training runs 2 epochs, a fine-tune 1, of each
# of two members (seeds 0 and 1), each fine-tuned from its own weights.
FINETUNE = (
    'epochs = 2\ninit_from = "champion"\nfinetune_epochs = 1\nfinetune_lr = 1e-3\nmembers = 2\n'
)
WINDOW_TAGS = ("stpipe.train_end", "stpipe.val_window", "stpipe.test_window", "stpipe.init_from")


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a if a[k].is_floating_point())


def test_the_next_night_fine_tunes_the_champion_and_both_are_judged_on_the_new_windows(
    new_pipeline, tmp_path
) -> None:
    # given: a nightly pipeline on rolling windows that fine-tunes from the champion
    pipeline = new_pipeline(days=7, arrived=6)
    text = pipeline.config.read_text()
    assert FIXED in text and text.rstrip().endswith('device = "cpu"')
    pipeline.config.write_text(
        text.replace(FIXED, ROLLING).replace("epochs = 1\n", "").replace("members = 1\n", "")
        + FINETUNE
    )
    config = load_config(pipeline.config)
    tracking = tracking_for(config)

    # when: the first night runs on six days; there is no champion yet, so it trains in full
    first = nightly_flow(str(pipeline.config))
    v1 = first.training.version
    tags = tracking.client.get_model_version(config.model_name, v1).tags
    assert {k: tags[k] for k in WINDOW_TAGS} == {
        "stpipe.train_end": "2024-01-05T00:00:00",
        "stpipe.val_window": "[2024-01-05T00:00:00, 2024-01-06T00:00:00)",
        "stpipe.test_window": "[2024-01-06T00:00:00, 2024-01-07T00:00:00)",
        "stpipe.init_from": "none",
    }
    assert first.training.promotion.promoted
    assert tracking.client.get_run(first.training.run_id).data.metrics["epochs"] == 2

    # and: the seventh day arrives and the next night runs
    pipeline.arrive(pipeline.archive[6])
    second = nightly_flow(str(pipeline.config))

    # then: it started from v1's weights, trained finetune_epochs, one day further
    v2 = second.training.version
    tags = tracking.client.get_model_version(config.model_name, v2).tags
    assert {k: tags[k] for k in WINDOW_TAGS} == {
        "stpipe.train_end": "2024-01-06T00:00:00",
        "stpipe.val_window": "[2024-01-06T00:00:00, 2024-01-07T00:00:00)",
        "stpipe.test_window": "[2024-01-07T00:00:00, 2024-01-08T00:00:00)",
        "stpipe.init_from": v1,
    }
    assert tracking.client.get_run(second.training.run_id).data.tags["stpipe.init_from"] == v1
    assert tracking.client.get_run(second.training.run_id).data.metrics["epochs"] == 1
    epochs = tracking.client.get_metric_history(second.training.run_id, "epochs")
    assert sorted((m.step, m.value) for m in epochs) == [(0, 1.0), (1, 1.0)]
    starts = [
        member_states(load_model(tracking, f"models:/{config.model_name}/{v}").program.state_dict())
        for v in (v1, v2)
    ]
    assert [len(s) for s in starts] == [2, 2]
    for i in (0, 1):  # each member of v2 is nearer the member of v1 it started from
        assert distance(starts[1][i], starts[0][i]) < distance(starts[1][i], starts[0][1 - i])

    # and: the decision compared it with v1 re-scored on the new validation window
    promotion = second.training.promotion
    data = data_context(config)
    champion = load_model(tracking, f"models:/{config.model_name}/{v1}")
    on_new_window = registry.promotion_score(
        evaluate_model(champion, data, split="val", baselines=False, device="cpu"), "rmse_wmean"
    )
    assert promotion.champion_version == v1
    assert promotion.champion_score == pytest.approx(on_new_window, rel=1e-6)
    assert promotion.champion_score != pytest.approx(first.training.promotion.candidate_score)
    assert promotion.promoted == (promotion.candidate_score < promotion.champion_score)

    # and: compare shows each version on its own test window ...
    own = {row["version"]: row for row in compare_versions(config).rows}
    assert own[v1]["test_window"] == "[2024-01-06T00:00:00, 2024-01-07T00:00:00)"
    assert own[v2]["test_window"] == "[2024-01-07T00:00:00, 2024-01-08T00:00:00)"
    assert (own[v1]["init_from"], own[v2]["init_from"]) == ("none", v1)

    # ... and --rescore puts both on today's, beside every baseline and the best per lead
    assert_rescored_on_todays_window(config, (v1, v2), champion, data, tmp_path)


def assert_rescored_on_todays_window(config, versions, champion, data, tmp_path) -> None:
    """``compare --rescore --json`` scores every version on the newest test window, with
    every baseline and the best per lead, as evaluating ``champion`` (the first) there does."""
    v1, v2 = versions
    path = tmp_path / "rescored.json"
    assert main(["-q", "compare", str(config.path), "--rescore", "--json", str(path)]) == 0
    payload = json.loads(path.read_text())
    today = "[2024-01-07T00:00:00, 2024-01-08T00:00:00)"
    rows = {row["version"]: row for row in payload["rows"]}
    assert sorted(rows) == sorted([v1, v2]) and payload["window"] == today
    for row in rows.values():
        assert {"version", "aliases", "run", "+1h", "+3h", "decision"} <= row.keys()
        assert row["test_window"] == today
    assert rows[v1]["train_end"] == "2024-01-05T00:00:00"
    test = evaluate_model(champion, data, split="test", device="cpu")
    metric = scores.headline(test)
    values = scores.per_lead(test, metric)
    assert [rows[v1]["+1h"], rows[v1]["+3h"]] == pytest.approx(list(values["model"]), rel=1e-6)
    *baselines, best = payload["baselines"]
    assert [b["baseline"] for b in baselines] == [
        scores.forecaster_label(f) for f in scores.baselines(test)
    ]
    best_names, best_values = scores.best_baseline(test, metric)
    assert [best["+1h"], best["+3h"]] == pytest.approx(list(best_values), rel=1e-6)
    assert best["best"] == {
        f"+{h:g}h": scores.forecaster_label(n)
        for h, n in zip(scores.lead_hours(test), best_names, strict=True)
    }

"""Promotion against a champion trained with another config, and two promotions at once.

The candidates are persistence plus a known offset (``register_baseline``), so which is
better is known without training."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from stpipe.app.config import Config
from stpipe.app.jobs import data_context, model_card, tracking_for
from stpipe.app.promotion import PROMOTION_LOCK, promote
from stpipe.core.errors import ConfigError, TrackingError
from stpipe.learn.context import build_forecaster, make_split_loader
from stpipe.learn.evaluate import evaluate_model
from stpipe.tracking import registry, runs
from stpipe.tracking.locks import workdir_lock
from stpipe.tracking.model import log_model
from tests.app.test_jobs import Shifted, pipeline, register_baseline

pytestmark = pytest.mark.slow


def with_patches(config: Config, **changes) -> Config:
    """``config`` with ``[patches]`` keys replaced (same workdir, store and registry)."""
    return config.model_copy(update={"patches": config.patches.model_copy(update=changes)})


def persistence_score(config: Config, split: str = "val") -> float:
    """The promotion metric of persistence on the ``split`` window of ``config``."""
    data = data_context(config)
    model = build_forecaster(config.model, data, name="persistence").eval()
    evaluation = evaluate_model(model, data, split=split, baselines=False)
    return registry.promotion_score(evaluation, config.mlflow.metric)


# --- a champion trained with another config ---------------------------------------------------


def test_a_champion_with_another_patch_size_is_scored_through_its_own_card(
    tmp_path: Path,
) -> None:
    config = pipeline(tmp_path)
    assert register_baseline(config).promoted  # v1: persistence on 8×8 patches

    larger = with_patches(config, size=(12, 12))
    worse = register_baseline(larger, offset=1.0)  # v2: persistence + 1 K on 12×12 patches

    assert worse.alias == "challenger" and worse.reason == "not better than v1", worse
    # the tiles cover every cell once whatever their size: the same score as on 12×12
    assert worse.champion_score == pytest.approx(persistence_score(larger), rel=1e-5)
    assert worse.candidate_score > worse.champion_score + 0.5
    assert registry.aliases(tracking_for(config)) == {"champion": "1", "challenger": "2"}


def test_a_champion_for_other_leads_stays_champion_and_says_why(tmp_path: Path) -> None:
    config = pipeline(tmp_path)
    assert register_baseline(config, offset=2.0).promoted  # v1: leads 1 and 3, poor

    better = register_baseline(with_patches(config, leads=(1, 2)))

    assert better.alias == "challenger" and better.champion_score is None, better
    assert better.reason.startswith(
        "champion v1 cannot be scored against this candidate "
        "(leads (1, 3) vs (1, 2) (champion vs candidate)), so it stays champion"
    )
    assert registry.aliases(tracking_for(config)) == {"champion": "1", "challenger": "2"}
    tags = tracking_for(config).client.get_model_version("tiny-t2m", "2").tags
    assert tags["stpipe.decision"] == "challenger" and tags["stpipe.reason"] == better.reason


def test_a_champion_the_store_cannot_feed_stays_champion(tmp_path: Path) -> None:
    first = pipeline(tmp_path / "first")
    assert register_baseline(first).promoted  # v1 on a 20×24 grid of t2m and u10
    other = pipeline(
        tmp_path / "other",
        grid=(12, 12),
        variables=("t2m",),
        mlflow=f'tracking_uri = "sqlite:///{first.workdir / "mlflow.db"}"',
    )

    candidate = register_baseline(other)

    assert candidate.alias == "challenger" and candidate.champion_score is None
    assert "variables ['t2m', 'u10'] vs ['t2m'] (champion vs store)" in candidate.reason
    assert "grid lat×lon 20×24" in candidate.reason
    assert registry.aliases(tracking_for(first)) == {"champion": "1", "challenger": "2"}


def test_after_a_refit_both_are_scored_on_the_test_window_the_candidate_never_trained_on(
    tmp_path: Path,
) -> None:
    config = pipeline(tmp_path)
    refit = config.model_copy(update={"train": config.train.model_copy(update={"refit": True})})
    assert register_baseline(refit).promoted  # v1: persistence

    worse = register_baseline(refit, offset=1.0)  # v2: persistence + 1 K

    assert worse.alias == "challenger" and worse.window == "test", worse
    on_test, on_val = persistence_score(refit, "test"), persistence_score(refit, "val")
    assert worse.champion_score == pytest.approx(on_test, rel=1e-5)
    assert abs(on_test - on_val) > 1e-3 * on_val, "the two windows score differently"
    tags = tracking_for(config).client.get_model_version("tiny-t2m", "2").tags
    assert tags["stpipe.promotion_window"] == "test"

    # the baselines are judged on the same window, and the refusal says which
    strict = refit.model_copy(
        update={"mlflow": refit.mlflow.model_copy(update={"baseline_tolerance": 0.02})}
    )
    refused = register_baseline(strict, offset=1.0)
    assert (
        refused.alias == "challenger" and "rmse_lat_weighted on the test window;" in refused.reason
    ), refused


def test_a_champion_trained_into_the_validation_window_is_scored_on_the_test_window(
    tmp_path: Path,
) -> None:
    # a refit champion once refit is off: its training ended at the test window's start
    config = pipeline(tmp_path)
    assert register_baseline(config).promoted  # v1: persistence
    client = tracking_for(config).client
    client.set_model_version_tag("tiny-t2m", "1", "stpipe.train_end", "2024-01-05T00:00:00")

    worse = register_baseline(config, offset=1.0)

    assert worse.window == "test" and worse.alias == "challenger", worse
    assert worse.champion_score == pytest.approx(persistence_score(config, "test"), rel=1e-5)

    client.set_model_version_tag("tiny-t2m", "1", "stpipe.train_end", "last Tuesday")
    with pytest.raises(ConfigError, match=r"v1: tag stpipe.train_end = 'last Tuesday' is not"):
        register_baseline(config)


# --- two promotions at once -------------------------------------------------------------------


def log_candidate(config: Config, *, offset: float) -> tuple[str, object]:
    """A run with persistence + ``offset`` logged as its model, not yet scored."""
    data, tracking = data_context(config), tracking_for(config)
    run_id = runs.start_run(tracking, run_name=f"candidate+{offset}", tags={})
    loader = make_split_loader(
        data, split="val", batch_size=2, shuffle=False, drop_last=False, max_batches=1
    )
    model = Shifted(build_forecaster(config.model, data, name="persistence").eval(), offset)
    card = model_card(config, data.ds)
    return run_id, log_model(tracking, run_id, model, example=next(iter(loader)), card=card)


def test_two_promotions_at_once_are_serialised_by_the_workdir_lock(tmp_path: Path) -> None:
    config = pipeline(tmp_path)
    assert register_baseline(config, offset=2.0).promoted  # v1, beaten by both candidates
    candidates = {offset: log_candidate(config, offset=offset) for offset in (0.0, 0.5)}
    tracking, data = tracking_for(config), data_context(config)
    outcomes = {}

    def run(offset: float) -> None:
        run_id, logged = candidates[offset]
        outcomes[offset] = promote(tracking, config, data, logged=logged, run_id=run_id, tags={})

    threads = [threading.Thread(target=run, args=(offset,)) for offset in candidates]
    with workdir_lock(config.workdir / PROMOTION_LOCK, timeout_s=1, what="hold the lock"):
        for thread in threads:
            thread.start()
        time.sleep(6)  # both candidates scored, both waiting for the lock
        assert [str(v.version) for v in registry.versions(tracking)] == ["1"]
    for thread in threads:
        thread.join(timeout=300)

    (first, first_version), (second, _) = sorted(
        outcomes.values(), key=lambda outcome: int(outcome[1].version)
    )
    assert first.promoted and first.champion_version == "1"
    # the second was scored against the first's outcome, not against v1
    assert second.champion_version == str(first_version.version), second
    best = str(outcomes[0.0][1].version)
    assert registry.aliases(tracking)["champion"] == best


def test_a_promotion_waits_for_the_lock_then_fails_naming_the_holder(tmp_path: Path) -> None:
    config = pipeline(tmp_path)
    run_id, logged = log_candidate(config, offset=0.0)
    tracking, data = tracking_for(config), data_context(config)

    with workdir_lock(config.workdir / PROMOTION_LOCK, timeout_s=1, what="hold the lock"):
        started = time.monotonic()
        with pytest.raises(
            TrackingError, match=r"cannot promote a version: another job \(pid \d+ on .+ since "
        ):
            promote(tracking, config, data, logged=logged, run_id=run_id, tags={}, lock_timeout_s=1)
        assert time.monotonic() - started < 30
    assert registry.versions(tracking) == []

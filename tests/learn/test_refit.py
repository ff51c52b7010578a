"""``[train] refit``: the held-out run, then the same start trained on train + validation
for the epochs the held-out run chose, with the held-out run's calibration; the version's
tags and its promotion on the test window."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from stpipe.app.jobs import data_context, run_training, tracking_for, train
from stpipe.io.checkpoint import LAST, load_checkpoint
from stpipe.learn.context import make_split_loader
from stpipe.tracking import registry
from tests.learn import test_train

# the tiny store of the training tests, on one thread
pipeline, one_thread = test_train.pipeline, test_train.one_thread
assert_same_state = test_train.assert_same_state

CALIBRATION = ("anchor", "shrink")
# a learning rate at which the tiny model's first epoch beats its start (on noise, barely);
# whole epochs (a capped epoch takes the first batches of its stream, all from the train
# days on this tiny store)
LEARNS = {"epochs": 3, "lr": 1e-3, "max_batches_per_epoch": 1000}


def test_the_train_split_of_a_refit_ends_where_the_test_window_starts(pipeline) -> None:
    data = data_context(pipeline())
    fitted = replace(data, splits=data.splits.through_validation())
    times = data.ds["time"].values
    assert fitted.splits.index_range("train", times) == (
        data.splits.index_range("train", times)[0],
        data.splits.index_range("val", times)[1],
    )
    for split in ("val", "test"):
        assert fitted.splits.index_range(split, times) == data.splits.index_range(split, times)
    assert fitted.splits.describe()["train_end"] == "2024-01-04T00:00:00"
    assert data.splits.describe()["train_end"] == "2024-01-03T00:00:00"

    def last_window_end(d) -> int:
        loader = make_split_loader(
            d, split="train", batch_size=512, shuffle=False, drop_last=False, max_batches=None
        )
        return max(int(batch["x_times"].max()) for batch in loader)

    assert last_window_end(fitted) > last_window_end(data)


def test_a_refit_trains_the_chosen_epochs_from_the_same_start_and_keeps_the_calibration(
    pipeline,
) -> None:
    held = train(pipeline(train=LEARNS), resume=False, progress=False)
    assert held.best_epoch > 0 and held.refit_epochs == 0
    config = pipeline(train=LEARNS | {"refit": True})
    refit = train(config, progress=False)

    # the held-out run is the same run (its checkpoint is resumed, finished) and its scores
    # stand
    assert (refit.run_key, refit.best_epoch) == (held.run_key, held.best_epoch)
    assert refit.history == held.history
    assert refit.refit_epochs == held.best_epoch
    for name in CALIBRATION:
        assert torch.equal(getattr(refit.model, name), getattr(held.model, name)), name
    retrained = [k for k in held.state if not torch.equal(refit.state[k], held.state[k])]
    assert "head.weight" in retrained, retrained

    # the refit's own run stopped after the chosen epochs, its last weights returned
    runs = [d for d in (config.workdir / "checkpoints").iterdir() if d.name != held.run_key]
    assert len(runs) == 1
    saved = load_checkpoint(runs[0] / LAST)
    assert saved is not None and saved["epoch"] == held.best_epoch
    weights = {k: v for k, v in refit.state.items() if k not in CALIBRATION}
    assert_same_state(weights, {k: v for k, v in saved["model"].items() if k not in CALIBRATION})

    # a re-run resumes both finished runs: nothing is trained again, the same model
    again = train(config, progress=False)
    assert again.history == refit.history
    assert_same_state(again.state, refit.state)


def test_a_refit_where_no_epoch_beat_the_start_is_the_held_out_model(pipeline) -> None:
    # a learning rate that ruins every epoch: the start (the residual model's baselines) stays
    ruined = {"epochs": 2, "lr": 5.0, "schedule": "constant", "warmup_frac": 0.0}
    held = train(pipeline(train=ruined), resume=False, progress=False)
    assert held.best_epoch == 0
    refit = train(pipeline(train=ruined | {"refit": True}), resume=False, progress=False)
    assert refit.refit_epochs == 0
    assert_same_state(refit.state, held.state)


@pytest.mark.slow
def test_a_refit_version_says_it_trained_through_validation_and_was_promoted_on_test(
    pipeline,
) -> None:
    config = pipeline(train=LEARNS | {"refit": True})

    outcome = run_training(config, progress=False)

    tracking = tracking_for(config)
    run = tracking.client.get_run(outcome.run_id).data
    assert run.metrics["refit_epochs"] == run.metrics["best_epoch"] == 1
    version = tracking.client.get_model_version(tracking.model_name, outcome.version).tags
    for tags in (run.tags, version):
        assert tags["stpipe.train_end"] == "2024-01-04T00:00:00", "the validation window's end"
        assert tags["stpipe.val_window"] == "[2024-01-03T00:00:00, 2024-01-04T00:00:00)"
    assert version["stpipe.promotion_window"] == "test"
    on_test = registry.promotion_score(outcome.test, config.mlflow.metric)
    assert outcome.promotion.candidate_score == pytest.approx(on_test, rel=1e-5)


def test_each_member_refits_for_its_own_chosen_epochs(pipeline) -> None:
    result = train(pipeline(train=LEARNS | {"refit": True, "members": 2}), progress=False)
    members = result.members
    assert [m.refit_epochs for m in members] == [m.best_epoch for m in members]
    assert members[0].refit_epochs > 0 and result.refit

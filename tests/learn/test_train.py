"""Training: the masked loss, seeded determinism, early stopping, exact resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from stpipe.app.config import Config
from stpipe.app.jobs import data_context, train
from stpipe.core.errors import ConfigError
from stpipe.io.checkpoint import LAST, load_checkpoint, run_key
from stpipe.io.ingestion import ingest
from stpipe.learn.context import (
    DataContext,
    build_baselines,
    build_forecaster,
    make_split_loader,
)
from stpipe.learn.loader import PatchLoader
from stpipe.learn.train import (
    REFERENCES,
    EpochLog,
    TrainStep,
    Validation,
    masked_errors,
    reference_loader,
    reference_names,
    run_identity,
    use_channels_last,
    validate,
    weighted_loss,
)
from stpipe.learn.train.calibration import PRIOR_WINDOWS
from stpipe.models.ensemble import MemberMean
from stpipe.testing import make_dataset

TINY = {
    "source": {"kind": "netcdf", "variables": ["t2m", "u10"]},
    # 12×12 grid, 8×8 patches: the second row and column of patches are half padding.
    "patches": {"input_steps": 4, "leads": [1, 3], "size": [8, 8], "target_variables": ["t2m"]},
    "split": {"val_start": "2024-01-03", "test_start": "2024-01-04"},
    "model": {"hidden": 8, "encoder_layers": 1, "dropout": 0.1},
    "train": {
        "epochs": 3,
        "batch_size": 8,
        "max_batches_per_epoch": 3,
        "max_val_batches": 2,
        "lr": 3e-3,
        "patience": 5,
        "members": 1,  # one run's mechanics; members have tests of their own
    },
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one intra-op thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pipeline(write_feed, make_config) -> Callable[..., Config]:
    """``pipeline(**sections)``: a config over an ingested 4-day 12×12 store of noise."""
    write_feed(make_dataset(nt=96, ny=12, nx=12, variables=("t2m", "u10"), seed=3))
    ingested = False

    def make(**sections: dict) -> Config:
        nonlocal ingested
        merged = {k: TINY.get(k, {}) | sections.get(k, {}) for k in {*TINY, *sections}}
        merged["source"] = {"paths": "feed/*.nc"} | merged["source"]
        config = make_config(**merged)
        if not ingested:
            ingest(config.ingest_job, progress=False)
            ingested = True
        return config

    return make


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


def first_batch(data, split: str, size: int) -> dict[str, torch.Tensor]:
    """The first batch of ``size`` windows of ``split``, in order."""
    loader = make_split_loader(
        data, split=split, batch_size=size, shuffle=False, drop_last=False, max_batches=1
    )
    return next(iter(loader))


def scores(history: tuple[EpochLog, ...] | list[EpochLog]) -> list[tuple]:
    """What an epoch computed (not how long it took)."""
    return [(h.epoch, h.train_loss, h.val_loss, h.val_rmse, h.lr, h.improved) for h in history]


def test_masked_loss_ignores_cells_outside_the_mask(pipeline) -> None:
    config = pipeline()
    model = build_forecaster(config.model, data_context(config), name="persistence")
    b, n_leads, h, w = 2, 2, 8, 8
    level = model.target_mean[:, None, None]  # physical values lie around the mean
    y = level + torch.randn(b, n_leads, 1, h, w)
    pred = (level + torch.randn(b, n_leads, 1, h, w)).requires_grad_()
    mask = torch.ones_like(y)
    mask[:, :, :, 5:, :] = 0  # padded rows
    mask[1, 0, 0, 0, 0] = 0  # one missing value
    y = torch.where(mask > 0, y, torch.nan)  # NaN (or anything) where masked
    y[0, 1, 0, 6, 0] = 1e30
    batch = {"y": y, "mask": mask}

    sse, count = masked_errors(model, pred, batch)
    loss = weighted_loss(sse, count, torch.tensor([0.25, 0.75]))
    loss.backward()

    std = model.target_std
    keep = mask > 0
    expected_sse = [
        (((pred.detach() - y) / std)[:, lead][keep[:, lead]] ** 2).sum() for lead in range(n_leads)
    ]
    assert count[:, 0].tolist() == [keep[:, 0].sum().item(), keep[:, 1].sum().item()]
    torch.testing.assert_close(sse[:, 0], torch.stack(expected_sse))
    assert torch.isfinite(loss)
    assert (pred.grad[~keep] == 0).all(), "masked cells must get no gradient"
    assert (pred.grad[keep] != 0).all()


@pytest.mark.parametrize("name", ["scnn_lstm", "convlstm"])
def test_channels_last_keeps_the_5d_weights_and_the_outputs(pipeline, name: str) -> None:
    config = pipeline(model={"name": name, "convlstm_hidden": [4]})
    data = data_context(config)
    model = build_forecaster(config.model, data).eval()
    batch = first_batch(data, "train", 2)
    with torch.no_grad():
        before = model(batch)
    ranks = {p.dim() for p in model.parameters()}
    use_channels_last(model)  # Module.to(memory_format=channels_last) raises on 5-D weights
    conv2d = [p for p in model.parameters() if p.dim() == 4]
    assert conv2d and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv2d)
    assert {p.dim() for p in model.parameters()} == ranks
    with torch.no_grad():
        torch.testing.assert_close(model(batch), before, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_steps_give_the_eager_losses_and_gradients(pipeline, monkeypatch) -> None:
    config = pipeline(model={"dropout": 0.0})
    data = data_context(config)
    device = torch.device("cuda")
    loader = make_split_loader(
        data, split="train", batch_size=4, shuffle=True, drop_last=False, max_batches=None
    )
    batches = [{k: v.to(device) for k, v in b.items()} for b in loader][:10]
    # A smaller batch among full ones: it must run eagerly, and the graph go on after it.
    batches.insert(7, {k: v[:3] for k, v in batches[0].items()})
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    model = build_forecaster(config.model, data).to(device).train()
    use_channels_last(model)
    # Learning rate 0: the weights stay put, so every step of both runs sees the same model
    # and the graph's replays (new data in its static inputs) must give eager's numbers.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    runs = {}
    for graphed in (False, True):
        step = TrainStep(
            model,
            model,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
            scaler=torch.amp.GradScaler("cuda", enabled=False),
            lead_weights=torch.tensor([0.5, 0.5]),
            grad_clip=config.train.grad_clip,
            precision=torch.float32,
            device=device,
            cuda_graph=graphed,
        )
        runs[graphed] = [
            (float(step(b)), [p.grad.detach().clone() for p in model.parameters()]) for b in batches
        ]
        assert step.captured == graphed
    for i, ((loss, grads), (eager_loss, eager_grads)) in enumerate(
        zip(runs[True], runs[False], strict=True)
    ):
        assert loss == pytest.approx(eager_loss, rel=1e-5), f"step {i}"
        for g, e in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6, msg=f"step {i}")
    assert len({loss for loss, _ in runs[True]}) == len(batches), "each batch its own loss"


def test_same_seed_same_weights_other_seed_other_weights(pipeline) -> None:
    config = pipeline(train={"epochs": 1})
    first = train(config, resume=False, progress=False)
    second = train(config, resume=False, progress=False)
    assert_same_state(first.state, second.state)
    assert scores(first.history) == scores(second.history)

    other = train(pipeline(train={"epochs": 1, "seed": 1}), resume=False, progress=False)
    assert not all(torch.equal(first.state[k], other.state[k]) for k in first.state)


def test_early_stopping_stops_and_restores_the_best_epoch(pipeline) -> None:
    # Noise has nothing to learn: a model fitting it gets worse on validation, so training
    # stops `patience` epochs after the best one (epoch 0: the untrained model).
    config = pipeline(
        train={
            "epochs": 12,
            "patience": 2,
            "lr": 2e-2,
            "schedule": "constant",
            "weight_decay": 0.0,
            "calibrate": False,  # the weights as the epoch left them
        }
    )
    per_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def keep_weights(entry: EpochLog) -> None:
        saved = load_checkpoint(checkpoint_dir / LAST)
        assert saved is not None and saved["epoch"] == entry.epoch
        per_epoch[entry.epoch] = saved["model"]

    data = data_context(config)
    torch.manual_seed(config.train.seed)  # as train_model seeds before building the model
    per_epoch[0] = build_forecaster(config.model, data).state_dict()
    checkpoint_dir = (
        config.workdir
        / "checkpoints"
        / run_key(
            run_identity(data, config.model, config.train),
            store_digest=data.store_digest,
            device="cpu",
        )
    )
    result = train(config, resume=False, progress=False, on_epoch_end=keep_weights)

    losses = [h.val_loss for h in result.history]
    assert result.stopped_early
    best = int(np.argmin(losses)) + 1 if min(losses) < result.initial_score else 0
    assert result.best_epoch == best
    assert len(result.history) == result.best_epoch + 2 < 12
    assert_same_state(result.state, per_epoch[result.best_epoch])
    assert not all(torch.equal(result.state[k], per_epoch[len(losses)][k]) for k in result.state)
    assert result.checkpoint_dir == checkpoint_dir


def validation_loader(config: Config, data: DataContext) -> PatchLoader:
    """The validation batches ``train_model`` scores and calibrates on, in order."""
    return make_split_loader(
        data,
        split="val",
        batch_size=config.train.batch_size,
        shuffle=False,
        drop_last=False,
        max_batches=config.train.max_val_batches,
    )


def test_the_validation_score_counts_a_lead_behind_the_best_baseline_as_that_baseline(
    pipeline,
) -> None:
    config = pipeline()
    data = data_context(config)
    baselines = build_baselines(data)
    model = build_forecaster(config.model, data).eval()
    # 0.1 off the truth at the first lead (ahead of every baseline), 10 at the others
    model.forward = lambda batch: batch["y"] + torch.tensor([0.1, 10.0])[:, None, None, None]
    val = validate(
        model,
        validation_loader(config, data),
        baselines=list(baselines.values()),
        precision=torch.float32,
        device=torch.device("cpu"),
    )
    assert len(model.leads) == 2
    first = val.mse[0] / val.ref_mse[0]
    assert val.mse[0] == pytest.approx((0.1 / float(model.target_std[0])) ** 2, rel=1e-3)
    assert 0.0 < first < 0.5
    assert val.mse[1] > 10 * val.ref_mse[1]
    assert val.score == pytest.approx((first + 1.0) / 2, rel=1e-6)


def test_every_member_and_every_resumption_choose_the_reference_on_one_train_sample(
    pipeline,
) -> None:
    config = pipeline(train={"max_batches_per_epoch": 2})
    data = data_context(config)

    def sample(seed: int) -> torch.Tensor:
        loader = reference_loader(data, config.train.model_copy(update={"seed": seed}))
        return torch.cat([batch["x_time"] for batch in loader])

    chosen = sample(0)
    assert len(chosen) == 2 * config.train.batch_size, "capped as an epoch is"
    assert torch.equal(sample(7), chosen), "a member of another seed sees the same patches"
    in_order = first_batch(data, "train", len(chosen))["x_time"]
    assert not torch.equal(chosen, in_order), "a sample over the split, not its first days"
    uncapped = config.train.model_copy(update={"max_batches_per_epoch": None})
    assert sum(len(batch["x_time"]) for batch in reference_loader(data, uncapped)) > len(chosen)


def test_calibration_is_no_worse_on_validation_than_any_baseline_and_shrinks_by_the_lead(
    pipeline,
) -> None:
    config = pipeline(train={"epochs": 2})
    result = train(config, resume=False, progress=False)
    data = data_context(config)
    val = validation_loader(config, data)
    baselines = list(build_baselines(data).values())
    cpu = torch.device("cpu")

    def scores_of(model) -> Validation:
        return validate(model, val, baselines=baselines, precision=torch.float32, device=cpu)

    calibrated = scores_of(result.model)
    uncalibrated_model = build_forecaster(config.model, data)
    uncalibrated_model.load_state_dict(result.state)
    uncalibrated_model.reset_calibration()
    uncalibrated = scores_of(uncalibrated_model.eval())
    model = result.model
    # at most n / (n + PRIOR_WINDOWS) of the model, n the validation split's independent
    # forecasts: its span / the lead (one 8×8 patch fits side by side on the 12×12 grid)
    assert (data.spec.size, data.ds["lat"].size, data.ds["lon"].size) == ((8, 8), 12, 12)
    span_s = (data.splits.test_start - data.splits.val_start) / np.timedelta64(1, "s")
    n = torch.tensor([span_s / (lead * model.step_s) for lead in model.leads])
    assert (model.shrink >= 0).all()
    assert (model.shrink <= (n / (n + PRIOR_WINDOWS))[:, None] + 1e-6).all()
    assert model.climatology.period == "day", "a few days: the hour-of-day climatology"
    anchors = {tuple(w.tolist()) for w in model.anchor.flatten(0, 1)}
    assert anchors <= {tuple(REFERENCES[name]) for name in reference_names("day")}
    assert not torch.equal(model.anchor, uncalibrated_model.anchor), "calibration ran"
    assert calibrated.mse != uncalibrated.mse
    for lead, (cal, ref) in enumerate(zip(calibrated.mse, calibrated.ref_mse, strict=True)):
        assert cal <= ref * (1 + 1e-5), f"lead {lead}: {cal} vs best baseline {ref}"


KILL_AFTER = 2
CHILD = """
import os, signal, sys
import torch
from stpipe.app.config import load_config
from stpipe.learn.train import train_model
from stpipe.app.jobs import data_context, train

torch.set_num_threads(1)  # as the parent test runs

def kill(entry):
    if entry.epoch == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)

train(load_config(sys.argv[1]), progress=False, on_epoch_end=kill)
"""


def test_resume_after_sigkill_continues_bit_identically(pipeline, tmp_path: Path) -> None:
    config = pipeline(train={"epochs": 4})
    straight = train(config, resume=False, progress=False)
    checkpoint = straight.checkpoint_dir / LAST
    checkpoint.unlink()

    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(kill_after=KILL_AFTER)))
    child = subprocess.run(
        [sys.executable, str(script), str(config.path)], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    killed = load_checkpoint(checkpoint)
    assert killed is not None and killed["epoch"] == KILL_AFTER
    assert not list(checkpoint.parent.glob("*.tmp")), "no torn temporary file is left"

    resumed = train(config, resume=True, progress=False)
    assert [json.dumps(h) for h in killed["history"]] == [
        json.dumps(h.__dict__) for h in resumed.history[:KILL_AFTER]
    ], "the first epochs come from the checkpoint, not from training again"
    assert scores(resumed.history) == scores(straight.history)
    assert_same_state(resumed.state, straight.state)
    assert resumed.best_epoch == straight.best_epoch


def test_a_finished_run_is_not_trained_again_and_a_changed_config_starts_fresh(pipeline) -> None:
    config = pipeline(train={"epochs": 1})
    first = train(config, progress=False)
    again = train(config, progress=False)
    assert again.history == first.history  # loaded, including the wall times
    calibrated = ("anchor", "shrink")
    assert all(torch.equal(getattr(again.model, b), getattr(first.model, b)) for b in calibrated)
    changed = train(pipeline(train={"epochs": 1, "lr": 1e-3}), progress=False)
    assert changed.run_key != first.run_key
    assert changed.history[0].train_loss != first.history[0].train_loss


def test_fine_tuning_starts_from_the_given_weights(pipeline) -> None:
    base = train(pipeline(train={"epochs": 1}), progress=False)
    tuned = train(pipeline(train={"epochs": 1, "lr": 1e-9}), progress=False, init_from=[base.state])
    fresh = train(pipeline(train={"epochs": 1, "lr": 1e-9}), progress=False)
    assert tuned.run_key not in (base.run_key, fresh.run_key)
    for name, p in base.model.named_parameters():
        torch.testing.assert_close(
            dict(tuned.model.named_parameters())[name], p, rtol=0, atol=1e-6, msg=name
        )
    assert not torch.allclose(fresh.state["lead_embedding"], base.state["lead_embedding"])
    # the climatology is this data's, not the starting weights' (fitted on other days): a
    # lead that falls back to a baseline is then the baseline evaluation computes
    older = dict(base.state, **{"climatology.table": base.state["climatology.table"] + 1.0})
    retuned = train(pipeline(train={"epochs": 1, "lr": 2e-9}), progress=False, init_from=[older])
    assert torch.equal(retuned.model.climatology.table, fresh.model.climatology.table)
    with pytest.raises(ConfigError, match="init_from: the weights do not fit"):
        train(pipeline(), progress=False, init_from=[{"nonsense": torch.zeros(1)}])


def test_members_train_one_seed_each_and_forecast_their_mean(pipeline) -> None:
    config = pipeline(train={"epochs": 1, "members": 2, "seed": 4})
    seen: list[tuple[int | None, int]] = []
    result = train(config, progress=False, on_epoch_end=lambda e: seen.append((e.member, e.epoch)))
    assert isinstance(result.model, MemberMean) and len(result.model.members) == 2
    assert seen == [(0, 1), (1, 1)] == [(e.member, e.epoch) for e in result.history]
    first, second = result.members
    # member 0 is the run one model with this seed is: its checkpoint serves both
    alone = train(pipeline(train={"epochs": 1, "members": 1, "seed": 4}), progress=False)
    assert alone.run_key == first.run_key and alone.history == first.history
    assert_same_state(alone.state, first.state)
    other = train(pipeline(train={"epochs": 1, "members": 1, "seed": 5}), progress=False)
    assert other.run_key == second.run_key
    assert not torch.equal(first.state["lead_embedding"], second.state["lead_embedding"])
    assert result.run_key == f"{first.run_key}+{second.run_key}"
    assert result.seconds == first.seconds + second.seconds
    batch = first_batch(data_context(config), "test", 4)
    with torch.no_grad():
        expected = (first.model(batch) + second.model(batch)) / 2
        torch.testing.assert_close(result.model(batch), expected, equal_nan=True)


def test_each_member_fine_tunes_from_its_own_weights(pipeline) -> None:
    base = train(pipeline(train={"epochs": 1, "members": 2}), progress=False)
    starts = [m.state for m in base.members]
    tuned = train(
        pipeline(train={"epochs": 1, "members": 3, "lr": 1e-9}), progress=False, init_from=starts
    )
    # member 2 starts from member 0's weights (the starting states in turn)
    for member, start in zip(tuned.members, [*starts, starts[0]], strict=True):
        torch.testing.assert_close(
            member.state["lead_embedding"], start["lead_embedding"], rtol=0, atol=1e-6
        )
    assert tuned.members[0].run_key != tuned.members[2].run_key  # seeds 0 and 2

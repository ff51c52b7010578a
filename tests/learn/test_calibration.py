"""Calibration: a lead that falls back to a baseline forecasts exactly that baseline (in
memory and through the logged model), and the model's weight per lead is the validation
split's least-squares weight, shrunk where the split holds few independent forecasts."""

from __future__ import annotations

import pytest
import torch

from stpipe.app.jobs import data_context, model_card, tracking_for, train
from stpipe.learn import scores
from stpipe.learn.context import build_baselines, make_split_loader
from stpipe.learn.evaluate import evaluate_model
from stpipe.learn.train.calibration import (
    PRIOR_WINDOWS,
    REFERENCES,
    choose_reference,
    independent_forecasts,
    model_weight,
    reference_names,
    weight_sums,
)
from stpipe.models.baselines import BASELINE_WEIGHTS
from stpipe.tracking import runs
from stpipe.tracking.model import load_model, log_model
from tests.learn import test_train

# the tiny store of the training tests, on one thread
pipeline, one_thread = test_train.pipeline, test_train.one_thread

# a split of unbounded duration: no shrinking toward the reference (rule 3)
NO_PRIOR = torch.tensor([torch.inf])

# per leads 1 and 3, the baselines they fall back to (each baseline at least once)
FALLBACKS = [
    ("persistence_clim_change", "climatology"),
    ("persistence", "advection"),
    ("advection", "persistence_clim_change"),
]


def test_a_lead_calibrated_to_a_baseline_forecasts_exactly_that_baseline(pipeline) -> None:
    config = pipeline(train={"epochs": 1})
    data = data_context(config)
    model = train(config, data, resume=False, progress=False).model
    model.reset_calibration()
    uncalibrated = scores.per_lead(evaluate_model(model, data, device="cpu"), "rmse")
    batch = next(
        iter(
            make_split_loader(
                data, split="test", batch_size=4, shuffle=False, drop_last=False, max_batches=1
            )
        )
    )
    baselines = build_baselines(data)
    tracking = tracking_for(config)
    run_id = runs.start_run(tracking, run_name="calibrated", tags={})

    for fallbacks in FALLBACKS:
        for i, name in enumerate(fallbacks):
            assert uncalibrated["model"][i] != uncalibrated[name][i], "the network is no baseline"
            model.anchor[i] = torch.tensor(BASELINE_WEIGHTS[name])
            model.shrink[i] = 0.0
        with torch.no_grad():
            forecast = model(batch)
            for i, name in enumerate(fallbacks):
                counted = batch["mask"][:, i] > 0
                expected = baselines[name](batch)[:, i]
                assert torch.equal(forecast[:, i][counted], expected[counted]), name

        card = model_card(config, data.ds)
        logged = log_model(tracking, run_id, model, example=batch, card=card)
        for forecaster in (model, load_model(tracking, logged.uri)):
            rmse = scores.per_lead(evaluate_model(forecaster, data, device="cpu"), "rmse")
            for i, name in enumerate(fallbacks):
                assert rmse["model"][i] == rmse[name][i], f"lead {i}: model vs {name}"


def sums(zy: float, zz: float) -> torch.Tensor:
    """:func:`~stpipe.learn.train.calibration.weight_sums` of one lead and variable."""
    return torch.tensor([zy, zz], dtype=torch.float64)[:, None, None]


@pytest.mark.parametrize(
    ("zy", "zz", "shrink"),
    [
        (7.0, 18.0, 7 / 18),  # Σ(ŷ−a)(y−a) / Σ(ŷ−a)²: the least-squares weight
        (6.0, 4.0, 1.0),  # more than the model itself: the model
        (-1.0, 6.0, 0.0),  # the model's changes point the wrong way: the reference
        (0.0, 0.0, 0.0),  # no data at that lead: the reference
    ],
)
def test_the_model_weight_is_the_least_squares_weight_on_the_split_within_0_and_1(
    zy, zz, shrink
) -> None:
    s = model_weight(sums(zy, zz), NO_PRIOR)
    assert float(s) == pytest.approx(shrink, rel=1e-6)


@pytest.mark.parametrize(("windows", "factor"), [(PRIOR_WINDOWS, 0.5), (3 * PRIOR_WINDOWS, 0.75)])
def test_the_weight_is_shrunk_toward_the_reference_where_the_split_holds_few_forecasts(
    windows, factor
) -> None:
    # the split's weight is 1/2: with n windows, n / (n + PRIOR_WINDOWS) of it
    s = model_weight(sums(14.0, 28.0), torch.tensor([windows]))
    assert float(s) == pytest.approx(0.5 * factor, rel=1e-6)


@pytest.mark.parametrize(
    ("grid", "patch", "expected"),
    [
        ((64, 64), (32, 32), [288.0, 24.0]),  # four tiles
        ((24, 32), (24, 32), [72.0, 6.0]),  # one patch over the grid
        ((24, 40), (16, 16), [144.0, 12.0]),  # two tiles fit side by side, none below
    ],
)
def test_independent_forecasts_are_lead_windows_end_to_end_times_tiles(grid, patch, expected):
    three_days = 3 * 86_400.0
    n = independent_forecasts(three_days, step_s=3600, leads=(1, 12), grid=grid, patch=patch)
    assert n.tolist() == expected


@pytest.mark.parametrize(
    ("train_errors", "reference", "shrink"), [([1.0, 2.0], 0, 0.5), ([2.0, 1.0], 1, 1.0)]
)
def test_the_reference_is_the_least_wrong_on_the_train_days_and_the_weight_is_against_it(
    train_errors, reference, shrink
) -> None:
    # on the validation days the model's best weight is 1/2 against reference 0, 1 against
    # reference 1; which one is the reference is up to the train days alone
    against = [sums(14.0, 28.0), sums(28.0, 28.0)]
    errors = torch.tensor(train_errors, dtype=torch.float64)[:, None, None]
    best = choose_reference(errors)
    s = model_weight(against[int(best)], NO_PRIOR)
    assert best.tolist() == [[reference]]
    assert float(s) == pytest.approx(shrink, rel=1e-6)


def test_a_climatology_of_a_few_weeks_is_leant_on_only_by_references_that_keep_the_anomaly():
    kept = [
        "persistence",
        "persistence_clim_change",
        "advection",
    ]
    assert reference_names("day") == reference_names("week") == kept
    assert all(REFERENCES[n][0] + REFERENCES[n][3] == 1.0 for n in kept), "weight 1 on p and A"
    assert reference_names("doy") == list(REFERENCES), "a year or more: every baseline"
    assert "climatology" in reference_names("doy")
    assert reference_names(None) == ["persistence"]


def test_the_day_of_year_climatology_shrinks_the_weight_as_any_other(pipeline) -> None:
    # rule 3 holds whatever the climatology: a few validation days say as little at a long
    # lead when the climatology is the climate
    config = pipeline(model={"climatology_period": "doy"})
    data = data_context(config)
    model = train(config, data, resume=False, progress=False).model
    assert model.climatology.period == "doy"
    loader = test_train.validation_loader(config, data)
    validation = weight_sums(model, loader, precision=torch.float32)
    independent = independent_forecasts(
        24 * 3600.0, step_s=3600, leads=model.leads, grid=(12, 12), patch=(8, 8)
    )
    unshrunk = model_weight(validation, NO_PRIOR)
    assert (unshrunk > 0).any(), "the test needs a lead where the model keeps some weight"
    assert torch.equal(model.shrink, model_weight(validation, independent))

"""benchmarks/bench_quality.py: the split positions, the margin table and the last line."""

from __future__ import annotations

import importlib.util
import math
import sys
from datetime import date
from pathlib import Path

import numpy as np

from stpipe.learn.scores import MetricScores, scores_dataset

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "bench_quality", ROOT / "benchmarks" / "bench_quality.py"
)
bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(bench)


def row(case, seed, split, margins, best=("persistence_clim_change",) * 2, without=None):
    without = margins if without is None else without
    return bench.MarginRow(
        case, seed, split, (1.0, 12.0), tuple(margins), tuple(best), tuple(without)
    )


def test_split_positions_put_the_test_days_at_the_end_or_a_week_earlier() -> None:
    start = date(2024, 2, 1)
    end = bench.split_dates(start, days=21, val_days=3, test_days=3, days_before_end=0)
    assert end == {"val_start": "2024-02-16", "test_start": "2024-02-19"}
    earlier = bench.split_dates(start, days=21, val_days=3, test_days=3, days_before_end=7)
    assert earlier == {
        "val_start": "2024-02-09",
        "test_start": "2024-02-12",
        "test_end": "2024-02-15",
    }


def test_every_regional_and_regime_run_has_its_seed_split_and_regime_at_the_test_start() -> None:
    runs = bench.regional_runs("regime", seeds=range(1, 6), quick=False, overrides={}, model="m")
    assert [(r.seed, r.split) for r in runs] == [
        (s, p) for s in range(1, 6) for p in ("end", "earlier")
    ]
    assert len({r.raw["pipeline"]["workdir"] for r in runs}) == 10
    for run in runs:
        assert run.regime["start"].date().isoformat() == run.raw["split"]["test_start"]
        assert run.raw["source"]["kind"] == "netcdf"
    regional = bench.regional_runs("regional", seeds=[1], quick=False, overrides={}, model="m")
    # the held-out sample's folds: train 19 days then 5 + 7, or 12 days a week earlier
    assert [r.raw["split"] for r in regional] == [
        {"val_start": "2024-02-20", "test_start": "2024-02-25"},
        {"val_start": "2024-02-13", "test_start": "2024-02-18", "test_end": "2024-02-25"},
    ]
    assert all(
        r.regime is None and r.raw["source"]["kind"] == "synthetic-weather" for r in regional
    )


def test_longclim_runs_per_feed_seed_at_the_end_and_a_week_earlier_on_the_doy_climatology():
    runs = bench.longclim_runs(seeds=range(1, 4), quick=False, overrides={}, model="m")
    assert [(r.seed, r.split) for r in runs] == [
        (s, p) for s in range(1, 4) for p in ("end", "earlier")
    ]
    assert [r.raw["source"]["synthetic"]["seed"] for r in runs] == [1, 1, 2, 2, 3, 3]
    assert len({r.raw["pipeline"]["workdir"] for r in runs}) == 6
    # a year of train days, 14 validation and 7 test days: the feed ends 2024-01-14
    assert runs[0].raw["source"]["synthetic"] | {"seed": 0} == {
        "seed": 0,
        "start": "2022-12-23",
        "days": 387,
        "grid": [16, 16],
    }
    assert runs[0].raw["split"] == {"val_start": "2023-12-24", "test_start": "2024-01-07"}
    assert runs[1].raw["split"] == {
        "val_start": "2023-12-17",
        "test_start": "2023-12-31",
        "test_end": "2024-01-07",
    }
    assert {r.raw["model"]["climatology_period"] for r in runs} == {"doy"}


def test_set_and_epochs_override_every_run_after_the_cases_own_settings() -> None:
    args = bench.argparse.Namespace(
        case="all",
        quick=True,
        seeds=1,
        longclim_seeds=None,
        epochs=7,
        model="m",
        set=["train.seed=3", "train.lr=0.001"],
    )
    runs = bench.plan(args)
    assert {r.case for r in runs} == set(bench.CASES)
    for run in runs:
        train = run.raw["train"]
        assert (train["seed"], train["lr"], train["epochs"]) == (3, 0.001, 7), run.label
        assert run.raw["model"]["name"] == "m"
    longclim = next(r for r in runs if r.case == "longclim")
    assert longclim.raw["model"]["climatology_period"] == "doy", "the case's own key is kept"


def test_the_last_line_gives_each_case_minimum_and_counts_leads_below_minus_two_percent() -> None:
    rows = [
        row("regional", 1, "end", [0.10, -0.021]),
        row("regional", 1, "earlier", [0.05, -0.02]),  # -2 % exactly is not worse
        row("regime", 1, "end", [-0.5, 0.0], ("advection",) * 2, without=[0.0, 0.1]),
        row("weather", None, "default", [0.2, 0.1]),
        row("longclim", 7, "end", [0.3, -0.4]),
    ]
    line = bench.summary_line(rows)
    assert line == (
        "min_margin_regional=-0.0210 min_margin_regime=-0.5000 min_margin_weather=0.1000 "
        "min_margin_traffic=nan worse_than_baseline_cases=3 worse_without_advection_cases=2 "
        "min_margin_longclim=-0.4000 worse_few_weeks_cases=2"
    )
    assert math.isnan(float(line.split()[3].split("=")[1]))


def test_the_margin_table_names_the_run_the_margin_and_the_best_baseline_per_lead() -> None:
    rows = [row("regime", 3, "earlier", [0.123, -0.5], ("persistence", "climatology"))]
    assert bench.margin_table(rows) == [
        "regime    seed=3   split=earlier  1h  +12.3% (pers)  12h  -50.0% (clim)"
    ]


def test_a_margin_row_is_over_the_best_baseline_and_apart_over_the_best_but_advection() -> None:
    rmse = {
        "model": (0.5, 1.0),
        "persistence": (0.6, 2.0),
        "climatology": (1.5, 0.8),
        "persistence_clim_change": (0.55, 1.2),
        "advection": (0.4, 0.9),
    }
    pooled = {name: np.asarray(values) for name, values in rmse.items()}
    evaluation = scores_dataset(
        {
            "rmse": MetricScores(
                per_variable={k: v[:, None] for k, v in pooled.items()},
                pooled=pooled,
                long_name="RMSE",
                units="K",
                better="lower",
            )
        },
        forecasters=list(rmse),
        lead_hours=(1.0, 12.0),
        lead_steps=[1, 12],
        variables=["t2m"],
        variable_units=["K"],
        split="test",
        n_samples=4,
        headline="rmse",
    )
    run = bench.Run("regional", 2, "end", {})
    row = bench.margin_row(run, evaluation)
    assert row.best == ("advection", "climatology")
    np.testing.assert_allclose(row.margins, (1 - 0.5 / 0.4, 1 - 1.0 / 0.8))
    np.testing.assert_allclose(row.margins_without_advection, (1 - 0.5 / 0.55, 1 - 1.0 / 0.8))

"""A hand-made evaluation (the Dataset of :mod:`stpipe.learn.scores`) for the tests of what
reads it: tables, plots, JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
import xarray as xr

from stpipe.learn.scores import MetricScores, scores_dataset

LEADS_H = (1.0, 3.0, 6.0, 12.0)
# best baseline per lead: persistence, persistence + clim. change ×2, climatology
RMSE_BY_HAND = {
    "model": (0.2, 0.5, 0.8, 1.4),
    "persistence": (0.22, 0.8, 1.4, 2.0),
    "climatology": (1.3, 1.3, 1.3, 1.3),
    "persistence_clim_change": (0.25, 0.6, 0.9, 1.35),
}
ACC_BY_HAND = {"model": (0.9, 0.8, 0.7, 0.6), "persistence": (0.95, 0.7, 0.5, 0.3)}


def _scores(
    by_forecaster: Mapping[str, Sequence[float]], *, long_name: str, units: str, better: str
) -> MetricScores:
    values = {f: np.asarray(v, dtype=np.float64) for f, v in by_forecaster.items()}
    return MetricScores(
        per_variable={f: v[:, None] for f, v in values.items()},
        pooled=values,
        long_name=long_name,
        units=units,
        better=better,
    )


@pytest.fixture
def hand_scores() -> Callable[..., xr.Dataset]:
    """``hand_scores(rmse=RMSE_BY_HAND, units="K")``: an evaluation of t2m on the test split
    at leads 1, 3, 6, 12 h with ``rmse`` (the headline) and ``acc`` (model, persistence)."""

    def make(rmse: Mapping[str, Sequence[float]] = RMSE_BY_HAND, *, units: str = "K") -> xr.Dataset:
        return scores_dataset(
            {
                "rmse": _scores(rmse, long_name="RMSE", units=units, better="lower"),
                "acc": _scores(
                    {k: v for k, v in ACC_BY_HAND.items() if k in rmse},
                    long_name="anomaly correlation",
                    units="1",
                    better="higher",
                ),
            },
            forecasters=list(rmse),
            lead_hours=LEADS_H,
            lead_steps=[int(h) for h in LEADS_H],
            variables=["t2m"],
            variable_units=[units],
            split="test",
            n_samples=10,
            headline="rmse",
        )

    return make

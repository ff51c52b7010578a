"""``stpipe compare CONFIG --rescore``: every registered version on today's test window.

With rolling ``[split]`` windows each version was tested on its own night's window, so the
scores the registry holds are on different days. Re-scoring loads each version (pickle-free,
:func:`stpipe.tracking.model.load_model`) and scores it on the store's current test window
through its own model card (patches cut as it was trained, like promotion does); the
baselines are scored on the same window through this config's patches. A version that the
store cannot feed (other variables, grid or time step) keeps its row with a note saying why.
"""

from __future__ import annotations

import logging

import xarray as xr

from stpipe.app.config import Config

# The champion's patches and their data context, as promotion scores the champion.
from stpipe.app.promotion import data_for_spec, patch_spec_of
from stpipe.core.card import card_for
from stpipe.learn.context import DataContext, build_forecaster
from stpipe.learn.evaluate import evaluate_model
from stpipe.tracking.client import Tracking
from stpipe.tracking.compare import VersionTable, rescored
from stpipe.tracking.model import load_model

log = logging.getLogger(__name__)


def rescore_table(
    tracking: Tracking, config: Config, data: DataContext, table: VersionTable
) -> VersionTable:
    """``table`` (:func:`stpipe.tracking.compare.version_table`) with every version scored on
    the test window of ``data`` (the store now), beside the baselines there."""
    window = data.splits.describe()["test_window"]
    scored: dict[str, xr.Dataset | str] = {}
    reference = None
    for row in table.rows:
        version = str(row["version"])
        model = load_model(tracking, f"models:/{tracking.model_name}/{version}")
        spec = patch_spec_of(model.card, config)
        problems = model.card.store_mismatch(data.ds)
        if not problems:
            rebuilt = card_for(
                pipeline=model.card.pipeline, model=model.card.model, spec=spec, ds=data.ds
            )
            problems = model.card.mismatch(rebuilt)
        if problems:
            scored[version] = f"not scored: {'; '.join(problems)} (v{version} vs store)"
            continue
        own = data_for_spec(config, data, spec)
        log.info("re-scoring %s v%s on the test window %s", tracking.model_name, version, window)
        scored[version] = evaluate_model(model, own, split="test", device=config.train.device)
        if own is data and reference is None:
            reference = scored[version]
    if reference is None:  # no version has this config's patches: the baselines alone
        persistence = build_forecaster(config.model, data, name="persistence")
        reference = evaluate_model(persistence, data, split="test", device=config.train.device)
    return rescored(table, scored, window=window, reference=reference)

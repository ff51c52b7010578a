"""Promotion, the last stage of training: the candidate against the champion, then the
version registered with its alias (:mod:`stpipe.tracking.registry` holds the rule).

Both are scored on the validation window of the store as it is now, or on its test window
where the candidate (``[train] refit``) or the champion trained on the validation days
(:func:`scored_window`: the window neither has trained on), each through its own card: a
champion trained with another patch size, halo or inputs is fed patches cut as it was
trained. With the test window, the champion is chosen on the days its test scores are
reported on, so those are no longer a held-out estimate. A champion that forecasts other targets, leads or time steps than the
candidate, or that the store cannot feed, cannot be scored against it: it stays champion
and the candidate becomes challenger, the reason saying why. The candidate is scored with
the baselines too: worse than the best of them at some lead by more than ``[mlflow]
baseline_tolerance``, it is not promoted at all (:func:`stpipe.tracking.registry.decide`).

:func:`promote` holds a lock file in the workdir from scoring the champion to setting the
alias, so two trainings at once never both replace the same champion: the second waits
and is scored against the first's outcome. With a tracking server the lock serialises the
jobs that share this workdir only; jobs in other workdirs that register the same model on
that server are not serialised by it (give each registered model one workdir).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import xarray as xr
from mlflow.entities.model_registry import ModelVersion
from torch import nn

from stpipe.app.config import Config
from stpipe.core.card import ModelCard, card_for
from stpipe.core.patches import PatchSpec
from stpipe.core.splits import SplitName
from stpipe.learn.context import DataContext, load_data_context
from stpipe.learn.evaluate import evaluate_model
from stpipe.tracking import registry, runs
from stpipe.tracking.client import Tracking
from stpipe.tracking.locks import workdir_lock
from stpipe.tracking.model import LoggedModel, load_model
from stpipe.tracking.registry import CHALLENGER, Promotion

PROMOTION_LOCK = "promotion.lock"
PROMOTION_LOCK_TIMEOUT_S = 1800.0


def promote(
    tracking: Tracking,
    config: Config,
    data: DataContext,
    *,
    logged: LoggedModel,
    run_id: str,
    tags: Mapping[str, str],
    lock_timeout_s: float = PROMOTION_LOCK_TIMEOUT_S,
) -> tuple[Promotion, ModelVersion]:
    """Score the candidate ``logged`` (of run ``run_id``); then, holding the workdir's
    promotion lock (waiting up to ``lock_timeout_s``, then TrackingError), score the
    champion, log the decision to the run and register the version with ``tags`` and its
    alias."""
    candidate = load_model(tracking, logged.uri)
    split = scored_window(config, data, registry.champion(tracking))
    score, baselines = _candidate_scores(candidate, config, data, split)
    lock = config.workdir / PROMOTION_LOCK
    with workdir_lock(lock, timeout_s=lock_timeout_s, what="promote a version"):
        promotion = _against_champion(
            tracking, config, data, candidate.card, score, baselines, split=split
        )
        runs.log_scores(
            tracking,
            run_id,
            scores=_promotion_scores(promotion),
            step=0,
            timestamp_ms=int(time.time() * 1000),
            tags=promotion.tags(),
        )
        version = registry.register(
            tracking, model_id=logged.model_id, run_id=run_id, promotion=promotion, tags=tags
        )
    return promotion, version


def score_promotion(
    tracking: Tracking, config: Config, data: DataContext, *, candidate_uri: str
) -> Promotion:
    """The decision for the logged candidate ``candidate_uri`` against the current champion
    (module docstring), without the lock and without registering."""
    candidate = load_model(tracking, candidate_uri)
    split = scored_window(config, data, registry.champion(tracking))
    score, baselines = _candidate_scores(candidate, config, data, split)
    return _against_champion(tracking, config, data, candidate.card, score, baselines, split=split)


# The words for a scored window in decisions and tags.
WINDOW_NAMES: dict[SplitName, str] = {"val": "validation", "test": "test"}


def scored_window(config: Config, data: DataContext, champion: ModelVersion | None) -> SplitName:
    """The split promotion scores on: validation, or test where the candidate trained on the
    validation days (``[train] refit``) or the ``champion`` did (its training ended after the
    window starts: a refit champion once refit is turned off, or a split moved back)."""
    trained = champion is not None and registry.trained_after(champion, data.splits.val_start)
    return "test" if config.train.refit or trained else "val"


def _candidate_scores(
    candidate: nn.Module, config: Config, data: DataContext, split: SplitName
) -> tuple[float, registry.BaselineMargins]:
    """The candidate's ``[mlflow] metric`` on ``split`` (:func:`scored_window`), and its
    margins over the best baseline per lead there
    (:func:`stpipe.tracking.registry.baseline_margins`)."""
    metric = config.mlflow.metric
    scored = evaluate_model(candidate, data, split=split, device=config.train.device)
    margins = registry.baseline_margins(
        scored, metric, tolerance=config.mlflow.baseline_tolerance, window=WINDOW_NAMES[split]
    )
    return registry.promotion_score(scored, metric), margins


def _against_champion(
    tracking: Tracking,
    config: Config,
    data: DataContext,
    card: ModelCard,
    score: float,
    baselines: registry.BaselineMargins,
    *,
    split: SplitName,
) -> Promotion:
    """The decision for a candidate with ``card``, ``score`` and margins over the baselines
    ``baselines`` on ``split``, against the champion scored there."""
    metric = config.mlflow.metric
    current = registry.champion(tracking)
    if current is None:
        return registry.decide(metric=metric, candidate_score=score, baselines=baselines)
    version = str(current.version)
    champion = load_model(tracking, f"models:/{tracking.model_name}/{version}")
    spec = patch_spec_of(champion.card, config)
    problems = _incomparable(champion.card, card, spec, data.ds)
    if problems:
        return Promotion(
            alias=CHALLENGER,
            metric=metric,
            candidate_score=score,
            champion_version=version,
            champion_score=None,
            reason=f"champion v{version} cannot be scored against this candidate "
            f"({'; '.join(problems)}), so it stays champion; set the alias by hand if the "
            "candidate should forecast",
            baseline_margin=baselines.smallest,
            window=baselines.window,
        )
    own = data_for_spec(config, data, spec)
    return registry.decide(
        metric=metric,
        candidate_score=score,
        champion_version=version,
        champion_score=registry.promotion_score(
            evaluate_model(champion, own, split=split, baselines=False, device=config.train.device),
            metric,
        ),
        baselines=baselines,
    )


def patch_spec_of(card: ModelCard, config: Config) -> PatchSpec:
    """The patches the model of ``card`` was trained on (``[patches]`` only for what a card
    does not record: strides, which validation replaces by tiling, and the NaN policy)."""
    halo = card.halo
    return PatchSpec(
        input_steps=card.input_steps,
        leads=card.leads,
        size=(card.patch_shape[0] - 2 * halo, card.patch_shape[1] - 2 * halo),
        input_variables=card.input_variables,
        target_variables=card.target_variables,
        stride=config.patches.stride,
        time_stride=config.patches.time_stride,
        halo=halo,
        edge=card.edge,
        time_features=card.n_time_features > 0,
        static_features=card.static_features,
        nan_policy=config.patches.nan_policy,
    )


def _incomparable(
    champion: ModelCard, candidate: ModelCard, spec: PatchSpec, ds: xr.Dataset
) -> list[str]:
    """Why the champion's promotion score on the store ``ds`` would not compare with the
    candidate's (empty: it compares); entries read ``"<what> <champion's> vs <other's>"``."""
    problems = [f"{p} (champion vs store)" for p in champion.store_mismatch(ds)]
    if problems:
        return problems
    for name in ("target_variables", "leads", "step_s"):
        mine, theirs = getattr(champion, name), getattr(candidate, name)
        if mine != theirs:
            problems.append(f"{name} {mine} vs {theirs} (champion vs candidate)")
    rebuilt = card_for(pipeline=champion.pipeline, model=champion.model, spec=spec, ds=ds)
    problems += [f"{p} (champion vs its patches here)" for p in champion.mismatch(rebuilt)]
    return problems


def data_for_spec(config: Config, data: DataContext, spec: PatchSpec) -> DataContext:
    """The store of ``data`` with the patches ``spec`` of another model (the same splits):
    ``data`` itself when they are its own."""
    if spec == data.spec:
        return data
    return load_data_context(
        config.store_path,
        spec=spec,
        splits=data.splits,
        climatology_period=config.model.climatology_period,
        dask=config.dask,
    )


def _promotion_scores(promotion: Promotion) -> dict[str, float]:
    scores = {"promotion_candidate_score": promotion.candidate_score}
    if promotion.champion_score is not None:
        scores["promotion_champion_score"] = promotion.champion_score
    return scores

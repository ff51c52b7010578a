"""The model registry: versions of ``[mlflow] model_name``, the champion, promotion.

Every training registers a new version. The alias ``champion`` names the version that
forecasts; it moves to a candidate only when the candidate scores better (lower) on
``[mlflow] metric`` than the champion on the same validation window (the test window where
the candidate trained on the validation days, ``[train] refit``); otherwise the
candidate gets the alias ``challenger``. Ties keep the champion; the first version becomes
champion. A candidate worse than the best baseline at any lead of that window by more than
``[mlflow] baseline_tolerance`` (:class:`BaselineMargins`) is never promoted, not even as the
first version: a free baseline would forecast that lead better. The decision, both scores
and the candidate's smallest margin over the best baseline are tags of the version (and of
its run).

Registration is one request (the version with its tags) plus one to set the alias; if the
alias cannot be set, the version is deleted again, so no version is left without its
alias.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import requests
import xarray as xr
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from stpipe.core.errors import ConfigError, TrackingError
from stpipe.core.metrics import METRICS, Metric
from stpipe.learn.scores import (
    HEADLINE_MEAN,
    MODEL,
    best_baseline,
    forecaster_label,
    headline,
    lead_hours,
    margins,
    summary,
)
from stpipe.tracking.client import Tracking, fluent_scope, tracking_errors

CHAMPION = "champion"
CHALLENGER = "challenger"
Alias = Literal["champion", "challenger"]
TAG_PREFIX = "stpipe."
# The windows of the split a version was trained, validated and tested on (Splits.describe).
WINDOW_KEYS = ("train_end", "val_window", "test_window")


@dataclass(frozen=True)
class Promotion:
    """The outcome of comparing a candidate with the champion on one ``window`` (validation,
    or test after a refit).

    Scores are ``[mlflow] metric`` (lower is better); ``champion_score`` is None when there
    was no champion to compare with (``reason`` says why). ``baseline_margin`` is the
    candidate's smallest margin over the best baseline across leads
    (:attr:`BaselineMargins.smallest`; None when it was not scored against the baselines).
    """

    alias: Alias
    metric: str
    candidate_score: float
    champion_version: str | None
    champion_score: float | None
    reason: str
    baseline_margin: float | None = None
    window: str = "validation"

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION

    def tags(self) -> dict[str, str]:
        """The decision as version/run tags (keys prefixed ``stpipe.``)."""
        values = {
            "decision": self.alias,
            "metric": self.metric,
            "candidate_score": repr(self.candidate_score),
            "champion_version": self.champion_version or "",
            "champion_score": "" if self.champion_score is None else repr(self.champion_score),
            "reason": self.reason,
            "baseline_margin": "" if self.baseline_margin is None else repr(self.baseline_margin),
            "promotion_window": self.window,
        }
        return {TAG_PREFIX + k: str(v) for k, v in values.items()}


@dataclass(frozen=True)
class BaselineMargins:
    """The candidate against the best baseline at each lead of the ``window`` it is scored
    on (validation, or test after a refit).

    ``margins`` [L]: 1 − candidate / best baseline on ``metric``, the per-lead error that
    ``[mlflow] metric`` averages (> 0: the candidate beats every baseline at that lead);
    ``best`` [L] the best baseline's name; ``tolerance`` the margin below −tolerance that
    refuses promotion (``[mlflow] baseline_tolerance``, a fraction).
    """

    metric: str
    lead_hours: tuple[float, ...]
    best: tuple[str, ...]
    margins: tuple[float, ...]
    tolerance: float
    window: str = "validation"

    @property
    def smallest(self) -> float:
        """The smallest finite margin across leads (NaN if none is finite)."""
        finite = [m for m in self.margins if math.isfinite(m)]
        return min(finite) if finite else math.nan

    def shortfall(self) -> str | None:
        """Why the candidate may not be promoted (the leads where a baseline beats it by more
        than ``tolerance``), or None. A lead whose margin is NaN (its best baseline scored
        0) refuses nothing: a non-finite candidate score is refused by :func:`decide`."""
        worse = [
            f"{forecaster_label(self.best[i])} at {self.lead_hours[i]:g} h by {-100 * m:.1f} %"
            for i, m in enumerate(self.margins)
            if m < -self.tolerance
        ]
        if not worse:
            return None
        return (
            f"worse than {', '.join(worse)} ({self.metric} on the {self.window} window; "
            f"tolerance {100 * self.tolerance:g} %)"
        )


def baseline_margins(
    evaluation: xr.Dataset, metric: str, *, tolerance: float, window: str = "validation"
) -> BaselineMargins:
    """:class:`BaselineMargins` of the model of ``evaluation`` (scored with its baselines on
    ``window``) on the per-lead metric that ``[mlflow] metric`` ``metric`` averages."""
    per_lead = per_lead_metric(metric, headline(evaluation)) or headline(evaluation)
    best, _ = best_baseline(evaluation, per_lead)
    return BaselineMargins(
        metric=per_lead,
        lead_hours=lead_hours(evaluation),
        best=best,
        margins=margins(evaluation, per_lead),
        tolerance=tolerance,
        window=window,
    )


def decide(
    *,
    metric: str,
    candidate_score: float,
    champion_version: str | None = None,
    champion_score: float | None = None,
    unscored: str = "no champion yet",
    baselines: BaselineMargins | None = None,
) -> Promotion:
    """The promotion rule of the module docstring.

    ``champion_score`` None means the champion could not be scored (``unscored`` says why:
    there is none, or it was trained for other inputs): the candidate wins. A candidate
    whose score is not finite never wins, nor one that ``baselines`` (its margins over the
    best baseline per lead on the same window, which the decision records) finds worse
    than a baseline at some lead.
    """
    alias: Alias
    shortfall = None if baselines is None else baselines.shortfall()
    if not math.isfinite(candidate_score):
        alias, reason = CHALLENGER, f"candidate score {candidate_score} is not finite"
    elif shortfall is not None:
        alias, reason = CHALLENGER, shortfall
    elif champion_score is None:
        alias, reason = CHAMPION, unscored
    elif not math.isfinite(champion_score) or candidate_score < champion_score:
        alias, reason = CHAMPION, f"better than v{champion_version}"
    elif candidate_score == champion_score:
        alias, reason = CHALLENGER, f"tie with v{champion_version}, which stays champion"
    else:
        alias, reason = CHALLENGER, f"not better than v{champion_version}"
    return Promotion(
        alias=alias,
        metric=metric,
        candidate_score=candidate_score,
        champion_version=champion_version,
        champion_score=champion_score,
        reason=reason,
        baseline_margin=None if baselines is None else baselines.smallest,
        window="validation" if baselines is None else baselines.window,
    )


def check_metric(metric: str, metrics: Sequence[Metric] = METRICS) -> None:
    """ConfigError unless ``[mlflow] metric`` is an error (lower is better) of ``metrics``
    averaged over leads: ``rmse_wmean`` (the headline metric's) or ``<error>_mean``."""
    allowed = [HEADLINE_MEAN, *(f"{m.name}_mean" for m in metrics if m.better == "lower")]
    if metric not in allowed:
        raise ConfigError(
            f"[mlflow] metric must be an error averaged over leads (lower is better), one of "
            f"{allowed}; got {metric!r}"
        )


def promotion_score(evaluation: xr.Dataset, metric: str) -> float:
    """``metric`` (a key of :func:`stpipe.learn.scores.summary`, e.g. ``rmse_wmean``) of
    the model."""
    means = summary(evaluation)
    if metric not in means:
        raise ConfigError(
            f"[mlflow] metric {metric!r} is not in this evaluation; it has {sorted(means)}"
        )
    return float(means[metric][MODEL])


def per_lead_metric(metric: str, headline: str | None) -> str | None:
    """The per-lead metric that ``metric`` averages: ``rmse_wmean`` averages ``headline``
    (the evaluation's headline metric; None if unknown), ``<name>_mean`` averages ``<name>``."""
    if metric == HEADLINE_MEAN:
        return headline
    return metric.removesuffix("_mean")


def _registered(tracking: Tracking) -> RegisteredModel | None:
    with tracking_errors(tracking.uri, f"read the registered model {tracking.model_name!r}"):
        try:
            return tracking.client.get_registered_model(tracking.model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise


def aliases(tracking: Tracking) -> dict[str, str]:
    """Alias → version of the registered model (empty if it is not registered yet)."""
    model = _registered(tracking)
    return {} if model is None else {alias: str(v) for alias, v in model.aliases.items()}


def champion(tracking: Tracking) -> ModelVersion | None:
    """The version holding ``champion``, or None."""
    version = aliases(tracking).get(CHAMPION)
    if version is None:
        return None
    with tracking_errors(tracking.uri, f"read {tracking.model_name} v{version}"):
        return tracking.client.get_model_version(tracking.model_name, version)


def require_champion(tracking: Tracking) -> ModelVersion:
    """The champion version; TrackingError saying what to run when there is none."""
    found = champion(tracking)
    if found is None:
        raise TrackingError(
            f"{tracking.uri}: registered model {tracking.model_name!r} has no champion yet; "
            "run `stpipe train CONFIG` first"
        )
    return found


def register(
    tracking: Tracking,
    *,
    model_id: str,
    run_id: str,
    promotion: Promotion,
    tags: dict[str, str],
) -> ModelVersion:
    """Register the logged model ``model_id`` as a new version and give it its alias.

    The version is created with the promotion and ``tags`` in one request; if setting the
    alias fails, the version is deleted (best effort) and TrackingError raised.
    """
    client, name = tracking.client, tracking.model_name
    # MLflow's SQL registry resolves ``models:/<model id>`` through the process-wide
    # tracking URI, not the client's (a TODO in mlflow/store/model_registry/sqlalchemy_store).
    with (
        tracking_errors(tracking.uri, f"register a version of {name!r}"),
        fluent_scope(tracking.uri),
    ):
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        version = client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=run_id,
            model_id=model_id,
            tags=promotion.tags() | tags,
        )
    try:
        with tracking_errors(
            tracking.uri, f"set alias {promotion.alias!r} on {name} v{version.version}"
        ):
            client.set_registered_model_alias(name, promotion.alias, version.version)
    except TrackingError:
        # If the server is gone for good, the version stays without an alias: forecasts,
        # which follow aliases only, never use it.
        with contextlib.suppress(MlflowException, requests.RequestException):
            client.delete_model_version(name, version.version)
        raise
    return version


def versions(tracking: Tracking) -> list[ModelVersion]:
    """All versions of the registered model, newest first (empty if not registered)."""
    if _registered(tracking) is None:
        return []
    with tracking_errors(tracking.uri, f"list the versions of {tracking.model_name!r}"):
        found = tracking.client.search_model_versions(f"name = '{_quote(tracking.model_name)}'")
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def trained_after(version: ModelVersion, start: np.datetime64) -> str | None:
    """``version``'s ``stpipe.train_end`` tag where its training ended after ``start`` (it
    learned days from ``start`` on: a refit, ``[train] refit``, or a split moved back), else
    None (also for versions from before the tag). ConfigError for a tag that is no time."""
    trained_to = (version.tags or {}).get(TAG_PREFIX + "train_end", "")
    if trained_to in ("", "end"):
        return None
    try:
        end = np.datetime64(trained_to, "ns")
    except ValueError:
        raise ConfigError(
            f"{version.name} v{version.version}: tag {TAG_PREFIX}train_end = {trained_to!r} "
            "is not a time"
        ) from None
    return trained_to if end > start else None


def window_tags(windows: Mapping[str, str]) -> dict[str, str]:
    """The split's windows (:meth:`stpipe.core.splits.Splits.describe`: ``train_end``,
    ``val_window``, ``test_window``) as version/run tags ``stpipe.<key>``."""
    return {TAG_PREFIX + key: windows[key] for key in WINDOW_KEYS}

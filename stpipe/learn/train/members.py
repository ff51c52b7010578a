"""``[train] members``: train that many models with seeds seed, seed+1, … and average them.

Each member is a run of its own (:func:`~stpipe.learn.train.run.train_model` with
:meth:`~stpipe.learn.settings.TrainSection.member`): its run key, checkpoints, early
stopping and calibration are a single model's, so member 0 is the run that ``members = 1``
would be (its checkpoints serve both) and a re-run resumes each member where it stopped.
The forecast is :class:`~stpipe.models.ensemble.MemberMean` of the calibrated members.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import Tensor

from stpipe.learn.context import DataContext
from stpipe.learn.settings import TrainSection
from stpipe.learn.train.run import train_model
from stpipe.learn.train.state import EpochLog, TrainResult, cpu_state
from stpipe.models.ensemble import MemberMean
from stpipe.models.settings import ModelSection

log = logging.getLogger(__package__)


def train_members(
    data: DataContext,
    *,
    model: ModelSection,
    train: TrainSection,
    checkpoint_root: Path,
    resume: bool = True,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    progress: bool = True,
    init_from: Sequence[Mapping[str, Tensor]] = (),
) -> TrainResult:
    """``train.members`` runs of ``model`` on ``data`` (module docstring), one result.

    ``init_from``: starting weights per member (member m starts from entry m modulo their
    number, e.g. the members of a registered ensemble, or its one model for every member);
    empty for the seeded initialisations. ``on_epoch_end`` gets each member's epochs with
    :attr:`EpochLog.member` set when there is more than one. With one member the result is
    :func:`train_model`'s; with more, its model is their :class:`MemberMean` and its
    history every member's epochs (:attr:`TrainResult.members` holds each run's result).
    """
    results = []
    for index in range(train.members):
        if train.members > 1:
            log.info("member %d of %d: seed %d", index + 1, train.members, train.seed + index)
        results.append(
            train_model(
                data,
                model=model,
                train=train.member(index),
                checkpoint_root=checkpoint_root,
                resume=resume,
                on_epoch_end=_labelled(on_epoch_end, index if train.members > 1 else None),
                progress=progress,
                init_from=init_from[index % len(init_from)] if init_from else None,
            )
        )
    return results[0] if len(results) == 1 else _mean_result(results)


def _labelled(
    on_epoch_end: Callable[[EpochLog], None] | None, member: int | None
) -> Callable[[EpochLog], None] | None:
    if on_epoch_end is None or member is None:
        return on_epoch_end
    return lambda entry: on_epoch_end(dataclasses.replace(entry, member=member))


def _mean_result(results: list[TrainResult]) -> TrainResult:
    """One result for the members' ``results``: their mean as the model, their epochs, their
    time and parameters summed; the scores and early stopping those of member 0 (each
    member's are in ``members``)."""
    mean = MemberMean([r.model for r in results]).eval()
    first = results[0]
    return dataclasses.replace(
        first,
        model=mean,
        state=cpu_state(mean),
        history=tuple(
            dataclasses.replace(entry, member=index)
            for index, result in enumerate(results)
            for entry in result.history
        ),
        run_key="+".join(r.run_key for r in results),
        checkpoint_dir=first.checkpoint_dir.parent,
        seconds=sum(r.seconds for r in results),
        n_parameters=sum(r.n_parameters for r in results),
        members=tuple(results),
    )

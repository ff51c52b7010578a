"""Where a training starts: ``[train] init_from``, the weights of a registered version.

``"none"`` trains from the seeded initialisation. ``"champion"`` or a version number starts
from that version's weights (each member from its own where the version is an ensemble of
``[train] members``; members beyond its number start from its members in turn), read from
its logged ``torch.export`` program (pickle-free, :func:`stpipe.tracking.model.load_model`),
and trains ``finetune_epochs`` at ``finetune_lr``
(:meth:`stpipe.learn.settings.TrainSection.finetuning`). The nightly run fine-tunes the
model that forecasts; with ``"champion"`` and no champion yet (a pipeline's first night)
training is in full.

A version that trained on days of this run's validation window (its ``stpipe.train_end``
tag after the window's start: a version refit on its own validation days, ``[train]
refit``, a night or more ago) is refused too: fine-tuning it would early-stop and calibrate
on days it has already learned, so its first epoch could never look worse than it is.

A version trained for other inputs than the config describes (another model, patch shape,
variables, leads, time step or grid: its model card against this config's), or whose
weights do not fit the network ``[model]`` describes, is refused with one line naming each
difference: fine-tuning it would start from weights that mean something else.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from torch import Tensor, nn

from stpipe.app.config import Config
from stpipe.core.card import card_for
from stpipe.core.errors import ConfigError
from stpipe.learn.context import DataContext, build_forecaster
from stpipe.learn.settings import TrainSection
from stpipe.tracking import registry
from stpipe.tracking.client import Tracking, tracking_errors
from stpipe.tracking.model import load_model
from stpipe.tracking.registry import TAG_PREFIX

log = logging.getLogger(__name__)

INIT_FROM_TAG = TAG_PREFIX + "init_from"
SCRATCH = "none"
SHOWN_KEYS = 3  # weight names listed in an error
_MEMBER_KEY = re.compile(r"(?:^|\.)members\.(?P<index>\d+)\.(?P<name>.+)$")


@dataclass(frozen=True)
class StartingPoint:
    """The weights a training starts from and the ``[train]`` it trains with.

    ``version``: the registered version whose weights ``state`` holds, one state per member
    of it (None: the seeded initialisation, ``state`` empty); ``train``: ``[train]``,
    fine-tuning's epochs and learning rate when it starts from a version.
    """

    version: str | None
    state: tuple[dict[str, Tensor], ...]
    train: TrainSection

    def tags(self) -> dict[str, str]:
        """``stpipe.init_from``: the version it started from, or ``none``."""
        return {INIT_FROM_TAG: self.version or SCRATCH}


def starting_point(tracking: Tracking, config: Config, data: DataContext) -> StartingPoint:
    """The start that ``[train] init_from`` asks for (module docstring); ConfigError for a
    version that does not exist or does not fit this config and store ``data``."""
    wanted = config.train.init_from
    if wanted == SCRATCH:
        return StartingPoint(version=None, state=(), train=config.train)
    version = _registered_version(tracking, wanted)
    if version is None:
        log.info("[train] init_from = 'champion': no champion yet, so training in full")
        return StartingPoint(version=None, state=(), train=config.train)
    number = str(version.version)
    _check_unseen_validation(tracking, config, data, version)
    state = _weights(tracking, config, data, number)
    log.info(
        "fine-tuning %s v%s for %d epoch(s) at lr %g",
        tracking.model_name,
        number,
        config.train.finetune_epochs,
        config.train.finetune_lr,
    )
    return StartingPoint(version=number, state=state, train=config.train.finetuning())


def _registered_version(tracking: Tracking, wanted: str | int) -> ModelVersion | None:
    """The champion (None if there is none yet) or version ``wanted`` (ConfigError if the
    registry has no such version)."""
    if wanted == registry.CHAMPION:
        return registry.champion(tracking)
    with tracking_errors(tracking.uri, f"read {tracking.model_name} v{wanted}"):
        try:
            return tracking.client.get_model_version(tracking.model_name, str(wanted))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    known = [str(v.version) for v in registry.versions(tracking)]
    raise ConfigError(
        f"[train] init_from = {wanted}: {tracking.model_name} has no version {wanted} "
        f"(it has {', '.join(known) or 'none'})"
    )


def _check_unseen_validation(
    tracking: Tracking, config: Config, data: DataContext, version: ModelVersion
) -> None:
    """ConfigError where ``version``'s training ended after this run's validation window
    starts (:func:`stpipe.tracking.registry.trained_after`)."""
    trained_to = registry.trained_after(version, data.splits.val_start)
    if trained_to is None:
        return
    window = data.splits.describe()["val_window"]
    raise ConfigError(
        f"[train] init_from = {config.train.init_from!r}: {tracking.model_name} "
        f"v{version.version} trained on days up to {trained_to}, inside this run's "
        f"validation window {window}: fine-tuning it would early-stop and calibrate on days "
        "it has learned; set [train] init_from = 'none' to train in full"
    )


def _weights(
    tracking: Tracking, config: Config, data: DataContext, version: str
) -> tuple[dict[str, Tensor], ...]:
    """The weights of ``version``'s members (its one model if it is not an ensemble) under
    the names of the network ``[model]`` builds; ConfigError naming each difference if its
    model card (model, patch shape, variables, leads, time step, grid) or its weights do
    not fit this config."""
    model = load_model(tracking, f"models:/{tracking.model_name}/{version}")
    card = model.card
    here = card_for(
        pipeline=config.pipeline.name, model=config.model.name, spec=data.spec, ds=data.ds
    )
    problems = [] if card.model == here.model else [f"model {card.model} vs {here.model}"]
    problems += card.mismatch(here)
    if problems:
        raise _unfit(tracking, config, version, problems)
    network = build_forecaster(config.model, data)
    states = []
    for member in member_states(model.program.state_dict()):
        state, problems = _renamed(member, network)
        if problems:
            raise _unfit(tracking, config, version, problems)
        states.append(state)
    return tuple(states)


def member_states(state: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """``state`` split into its ensemble members' states (the weights under ``members.<i>.``
    of :class:`~stpipe.models.ensemble.MemberMean`, named without that prefix, in member
    order), or ``[state]`` when it is not an ensemble's."""
    members: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        found = _MEMBER_KEY.search(key)
        if found is not None:
            members.setdefault(int(found["index"]), {})[found["name"]] = value
    return [members[i] for i in sorted(members)] if members else [state]


def _unfit(tracking: Tracking, config: Config, version: str, problems: list[str]) -> ConfigError:
    return ConfigError(
        f"[train] init_from = {config.train.init_from!r}: {tracking.model_name} v{version} "
        f"does not fit this config: {'; '.join(problems)} (v{version} vs config); set "
        "[train] init_from = 'none' to train in full"
    )


def _renamed(state: dict[str, Tensor], network: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """``state`` (a logged program's weights, named with its export wrapper's prefix) under
    the names of ``network``'s weights, and what does not fit (names, shapes)."""
    expected = network.state_dict()
    first = next(iter(expected))
    prefixes = {k.removesuffix(first) for k in state if k == first or k.endswith("." + first)}
    prefix = max(prefixes or {""}, key=lambda p: sum(k.removeprefix(p) in expected for k in state))
    renamed = {k.removeprefix(prefix): v.detach().clone() for k, v in state.items()}
    missing = [k for k in expected if k not in renamed]
    extra = [k for k in renamed if k not in expected]
    shapes = [
        f"{k} {list(renamed[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in renamed and renamed[k].shape != v.shape
    ]
    problems = [
        *([f"weights {', '.join(missing[:SHOWN_KEYS])} missing"] if missing else []),
        *([f"weights {', '.join(extra[:SHOWN_KEYS])} unexpected"] if extra else []),
        *(f"weight {shape}" for shape in shapes[:SHOWN_KEYS]),
    ]
    return renamed, problems

"""``[train] init_from`` and fine-tuning's own epochs and learning rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from stpipe.app.config import load_config
from stpipe.core.errors import ConfigError
from stpipe.learn.settings import TrainSection
from tests.app.test_config import MINIMAL, write


def test_a_full_training_is_the_default_and_fine_tuning_swaps_in_its_epochs_and_lr() -> None:
    default = TrainSection()
    assert default.init_from == "none"

    section = TrainSection(
        epochs=20, lr=2e-3, init_from="champion", finetune_epochs=2, finetune_lr=1e-4
    )
    tuned = section.finetuning()
    assert (tuned.epochs, tuned.lr) == (2, 1e-4)
    assert tuned.model_dump() == section.model_dump() | {"epochs": 2, "lr": 1e-4}


@pytest.mark.parametrize(
    ("value", "expected"), [("'champion'", "champion"), ("3", 3), ("'none'", "none")]
)
def test_init_from_takes_the_champion_a_version_number_or_none(
    tmp_path: Path, value: str, expected: str | int
) -> None:
    path = write(tmp_path, MINIMAL + f"[train]\ninit_from = {value}\n")
    assert load_config(path).train.init_from == expected


@pytest.mark.parametrize("value", ["true", "'3'", "0", "'best'", "2.0"])
def test_init_from_refuses_anything_else_in_one_line(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, MINIMAL + f"[train]\ninit_from = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [train] init_from: must be 'none', 'champion' or a ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("finetune_epochs = 0", r"\[train\] finetune_epochs: Input should be greater than 0"),
        ("finetune_lr = 0.0", r"\[train\] finetune_lr: Input should be greater than 0"),
        ("finetune_epochs = true", r"\[train\] finetune_epochs: Input should be a valid integer"),
    ],
)
def test_fine_tuning_epochs_and_lr_are_positive_numbers(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL + f"[train]\n{extra}\n"))

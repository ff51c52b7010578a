"""Config values of the wrong kind are refused when the file is loaded: numbers are not
booleans (nor the reverse), forecast store URLs must name a persistent, known filesystem,
and the forecast tile overlap must fit the patches. TOML dates, paths and lists still load."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from stpipe.app.cli import main
from stpipe.app.config import load_config
from stpipe.core.errors import ConfigError
from tests.app.test_config import MINIMAL, write


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[train]\nbatch_size = true", r"\[train\] batch_size: Input should be a valid integer"),
        ("[train]\nepochs = false", r"\[train\] epochs: Input should be a valid integer"),
        ("[train]\nepochs = '5'", r"\[train\] epochs: Input should be a valid integer"),
        ("[train]\nlr = true", r"\[train\] lr: Input should be a valid number"),
        ("[train]\ncompile = 1", r"\[train\] compile: Input should be a valid boolean"),
        ("[train]\ncalibrate = 'yes'", r"\[train\] calibrate: Input should be a valid boolean"),
        ("[store]\ntime_chunk = true", r"\[store\] time_chunk: Input should be a valid integer"),
        ("[forecast]\noverlap = [true, 2]", r"\[forecast\] overlap\.0: .*valid integer"),
    ],
)
def test_booleans_and_numbers_do_not_stand_in_for_each_other(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = write(tmp_path, MINIMAL + extra + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_a_patch_size_of_true_is_refused_inside_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("size = [8, 8]", "size = [true, 8]"))
    with pytest.raises(ConfigError, match=r"\[patches\] size\.0: Input should be a valid integer"):
        load_config(path)


def test_strict_settings_still_take_toml_dates_paths_lists_and_whole_floats(
    tmp_path: Path,
) -> None:
    text = MINIMAL.replace("test_start = 2024-01-12", "test_start = 2024-01-12T06:00:00") + (
        "test_end = '2024-01-14'\n\n[train]\nlr = 1\nbatch_size = 8\ncompile = true\n"
        "[forecast]\noverlap = [2, 3]\nstore = 'out/f.zarr'\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.split.val_start == datetime(2024, 1, 10)
    assert config.split.test_start == datetime(2024, 1, 12, 6)
    assert config.split.test_end == datetime(2024, 1, 14)
    assert config.workdir == tmp_path / "work"
    assert config.patches.size == (8, 8)
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.batch_size == 8 and config.train.compile is True
    assert config.forecast.overlap == (2, 3)
    assert config.forecast_store == str(tmp_path / "out" / "f.zarr")
    assert load_config(write(tmp_path, config.to_toml())) == config.model_copy(
        update={"path": tmp_path / "pipe.toml"}
    ), "the resolved config round-trips through TOML"


def test_a_boolean_override_for_a_number_is_refused_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL)
    assert main(["verify", str(path), "--set", "train.batch_size=true"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"stpipe verify: error: {path}: [train] batch_size: Input should be a valid integer"
    ]


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("foo://bucket/f.zarr", r"\[forecast\] store: unknown protocol 'foo' in 'foo://bucket"),
        ("memory://f.zarr", r"\[forecast\] store: 'memory://f.zarr' .*lost when the process ends"),
    ],
)
def test_forecast_store_urls_that_cannot_hold_forecasts_are_refused(
    tmp_path: Path, store: str, message: str
) -> None:
    path = write(tmp_path, MINIMAL + f"[forecast]\nstore = '{store}'\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    ("overlap", "message"),
    [
        (
            "[8, 2]",
            r"\[forecast\] overlap: \(8, 2\) must be smaller than \[patches\] size \(8, 8\)",
        ),
        (
            "[2, 9]",
            r"\[forecast\] overlap: \(2, 9\) must be smaller than \[patches\] size \(8, 8\)",
        ),
        ("[-1, 2]", r"\[forecast\] overlap\.0: Input should be greater than or equal to 0"),
    ],
)
def test_a_tile_overlap_that_does_not_fit_the_patches_is_refused_at_load(
    tmp_path: Path, overlap: str, message: str
) -> None:
    path = write(tmp_path, MINIMAL + f"[forecast]\noverlap = {overlap}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)

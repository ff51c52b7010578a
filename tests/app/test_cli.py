"""The command line: options before or after the verb, --version, config mistakes named with
a suggestion, nested --set, and where its output goes (results stdout, logs stderr)."""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rich
import xarray as xr
from rich.console import Console

import stpipe
from stpipe.app.cli import main, parse_args, verification_table
from stpipe.app.console import BRIEF, DEBUG, DETAIL, NORMAL, QUIET, DetailFilter, LineFormatter
from stpipe.core.errors import ConfigError
from stpipe.forecast.verify import Verification
from stpipe.io.store import open_store

PIPELINE = """
[pipeline]
name = "cli"
workdir = "work"

[source]
kind = "synthetic-weather"
variables = ["t2m"]

[source.synthetic]
days = 1
grid = [8, 8]

[patches]
input_steps = 4
leads = [1, 3]
size = [8, 8]

[split]
val_start = 2024-01-04
test_start = 2024-01-05
{extra}
"""
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() sets up the process's logging; put it back as the test harness had it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    rich.reconfigure()


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(PIPELINE.format(extra=extra))
    return path


@pytest.mark.parametrize(
    ("argv", "detail"),
    [
        (["compare", "c.toml"], NORMAL),
        (["compare", "c.toml", "-q"], QUIET),
        (["-q", "compare", "c.toml"], QUIET),
        (["compare", "c.toml", "-v"], DETAIL),
        (["-v", "train", "c.toml", "-v"], DEBUG),
        (["demo"], BRIEF),
        (["demo", "-v"], NORMAL),
        (["demo", "--workdir", "w", "-q"], QUIET),
    ],
)
def test_quiet_and_verbose_go_before_or_after_the_verb(argv: list[str], detail: int) -> None:
    assert parse_args(argv).detail == detail


def test_generate_reports_one_line_on_stderr_and_nothing_with_quiet(tmp_path: Path, capsys):
    assert main(["generate", "weather", str(tmp_path / "a"), "--days", "2"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert out == ""
    assert len(lines) == 1, err
    assert LOG_LINE.match(lines[0])
    assert lines[0].endswith(
        f"INFO {tmp_path / 'a'}: wrote 2 daily weather file(s), kept 0 existing, "
        "2024-01-01 to 2024-01-02"
    )

    assert main(["generate", "weather", str(tmp_path / "b"), "--days", "2", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert len(list((tmp_path / "b").glob("*.nc"))) == 2


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"stpipe {stpipe.__version__}\n"


@pytest.mark.parametrize(
    ("extra", "sets", "message"),
    [
        ("[train]\nepoch = 2", [], "[train] epoch: unknown key (did you mean `epochs`?)"),
        ("[trian]\nepochs = 2", [], "trian: unknown key (did you mean `train`?)"),
        ("", ["source.synthetic.dayz=5"], "[source] synthetic.dayz: unknown key (did you mean"),
        ("", ["model.hiden=8"], "[model] scnn_lstm.hiden: unknown key (did you mean `hidden`?)"),
        ("", ["pipeline.name.x=1"], "override 'pipeline.name.x': pipeline.name is a value, not"),
    ],
)
def test_config_mistakes_name_the_key_and_the_likely_one(
    tmp_path: Path, capsys, extra: str, sets: list[str], message: str
) -> None:
    path = config_file(tmp_path, extra)
    argv = ["train", str(path), *(x for s in sets for x in ("--set", s))]
    assert main(argv) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith(f"stpipe train: error: {path}: "), err
    assert message in err


def test_a_key_like_no_other_gets_no_suggestion(tmp_path: Path, capsys) -> None:
    path = config_file(tmp_path)
    assert main(["train", str(path), "--set", "train.qqq=1"]) == ConfigError.exit_code
    assert capsys.readouterr().err == f"stpipe train: error: {path}: [train] qqq: unknown key\n"


def test_set_reaches_a_nested_table(tmp_path: Path, capsys) -> None:
    path = config_file(tmp_path)
    assert main(["ingest", str(path), "--set", "source.synthetic.days=2", "-q"]) == 0
    assert open_store(tmp_path / "work" / "store.zarr").sizes["time"] == 48
    assert "2 file(s) ingested" in capsys.readouterr().out


def test_detail_filter_keeps_each_logger_at_its_level_and_each_warning_once() -> None:
    keep = DetailFilter({"": logging.WARNING, "stpipe": logging.INFO})

    def record(name: str, level: int, text: str = "x") -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, text, None, None)

    assert keep.filter(record("stpipe.learn.loader", logging.INFO))
    assert not keep.filter(record("stpipe.learn.loader", logging.DEBUG))
    assert not keep.filter(record("distributed.scheduler", logging.INFO))
    assert not keep.filter(record("stpipe_other", logging.INFO))
    assert keep.filter(record("prefect.task_runs", logging.WARNING))
    assert keep.filter(record("py.warnings", logging.WARNING, "a.py:1: UserWarning: w"))
    assert not keep.filter(record("py.warnings", logging.WARNING, "a.py:1: UserWarning: w"))
    assert keep.filter(record("py.warnings", logging.WARNING, "a.py:2: UserWarning: v"))


def test_a_log_line_names_foreign_sources_and_keeps_long_lines_whole() -> None:
    fmt = LineFormatter()
    path = "/a/very/long/path/" * 10
    ours = logging.LogRecord("stpipe.x", logging.INFO, __file__, 1, "wrote %s", (path,), None)
    task = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "done", None, None)
    task.task_run_name = "ingest-81b"
    assert re.fullmatch(rf"\d\d:\d\d:\d\d INFO wrote {path}", fmt.format(ours))
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO ingest-81b: done", fmt.format(task))


def test_a_warning_is_logged_once_on_stderr(tmp_path: Path, capsys) -> None:
    main(["generate", "weather", str(tmp_path), "--days", "1", "-q"])
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for _ in range(3):
            warnings.warn("must be registered as buffers", UserWarning, stacklevel=1)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("UserWarning: must be registered as buffers") == 1, err
    assert LOG_LINE.match(err) and "WARNING py.warnings: " in err


def test_verification_table_has_units_and_leads_in_hours() -> None:
    truth = xr.Dataset(
        {"t2m": (("time",), np.zeros(3), {"units": "K"})},
        coords={"time": np.arange(3)},
        attrs={"time_step_s": 3600},
    )
    result = Verification(
        init_time=np.datetime64("2024-01-08T23:00", "ns"),
        run_id="r1",
        model_version="3",
        scores={
            "rmse_t2m_lead1": 0.5,
            "mae_t2m_lead1": 0.4,
            "rmse_t2m_lead6": 1.25,
            "mae_t2m_lead6": 1.0,
        },
    )
    text = io.StringIO()
    Console(file=text, width=200).print(verification_table([result], truth))
    rows = [re.split(r"\s*[│┃]\s*", line.strip("│┃ ")) for line in text.getvalue().splitlines()]
    assert ["init time", "model", "score", "+1 h", "+6 h"] in rows
    assert ["2024-01-08T23:00", "v3", "RMSE t2m (K)", "0.5", "1.25"] in rows
    assert ["2024-01-08T23:00", "v3", "MAE t2m (K)", "0.4", "1"] in rows

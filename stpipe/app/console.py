"""Where the command line's output goes: results on stdout, logs and progress on stderr.

:func:`setup_logging` routes every log record of the process (ours, Prefect's flow and task
runs, Dask's, MLflow's, Python warnings) to one plain handler on stderr, one record a line
as logged (no wrapping, so paths stay whole), through :class:`DetailFilter`, which keeps
per logger what the chosen level of detail shows (:data:`DETAIL_LEVELS`). Rich progress
bars go to stderr too, and are silenced with the logs under ``-q``. :func:`table_console`
prints tables and summaries on stdout.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import rich
from rich.console import Console

QUIET, BRIEF, NORMAL, DETAIL, DEBUG = range(5)
NARRATOR = "stpipe.app.demo"

# Per level of detail: logger name prefix → the lowest level shown ("" = every other logger).
# BRIEF is the demo's default: its own narration, and warnings; NORMAL the other verbs':
# what our stages and Prefect's runs say.
# A Dask worker logs a failed task ("Compute Failed" and its traceback) although the error
# reaches the caller through the task's future, which reports it in one line: below -v that
# log only repeats it.
_TASK_ERRORS = {"distributed.worker": logging.CRITICAL}
DETAIL_LEVELS: tuple[Mapping[str, int], ...] = (
    {"": logging.WARNING, **_TASK_ERRORS},
    {"": logging.WARNING, NARRATOR: logging.INFO, **_TASK_ERRORS},
    {"": logging.WARNING, "stpipe": logging.INFO, "prefect": logging.INFO, **_TASK_ERRORS},
    {"": logging.INFO, "stpipe": logging.DEBUG},
    {"": logging.DEBUG},
)
TABLE_WIDTH = 240  # columns of tables printed to a pipe or file (rich would cut them at 80)


class DetailFilter(logging.Filter):
    """Keep a record if its level reaches the threshold of the longest matching logger
    prefix in ``thresholds``; and a Python warning only the first time its text is seen
    (the once-per-place rule of Python's default filter, which libraries that reset the
    warning registries, e.g. ``torch.export``, defeat)."""

    def __init__(self, thresholds: Mapping[str, int]) -> None:
        super().__init__()
        self.thresholds = sorted(thresholds.items(), key=lambda item: -len(item[0]))
        self._warnings_seen: set[str] = set()

    def threshold(self, name: str) -> int:
        for prefix, level in self.thresholds:
            if not prefix or name == prefix or name.startswith(prefix + "."):
                return level
        return logging.NOTSET

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.threshold(record.name):
            return False
        if record.name == "py.warnings":
            text = record.getMessage()
            if text in self._warnings_seen:
                return False
            self._warnings_seen.add(text)
        return True


class LineFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL message``; a record from outside stpipe also names its source (the
    Prefect task or flow run, else the logger)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(source)s%(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        source = (
            getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None) or name
        )
        ours = name == "stpipe" or name.startswith("stpipe.")
        record.source = "" if ours else f"{source}: "
        return super().format(record).rstrip("\n")  # a warning's text ends in one


class StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record comes (a test harness
    swaps it), never a stream closed since."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(detail: int = NORMAL) -> None:
    """Route the process's logs to stderr at ``detail`` (:data:`QUIET` … :data:`DEBUG`).

    Call it before Prefect, MLflow or Dask are imported, so that they log through it:
    Prefect then leaves the root logger's handler alone, and MLflow is told not to install
    its own (``MLFLOW_CONFIGURE_LOGGING``). A handler Prefect installed already is replaced.
    """
    thresholds = DETAIL_LEVELS[min(max(detail, QUIET), DEBUG)]
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    root = logging.getLogger()
    root.handlers[:] = [
        h
        for h in root.handlers
        if not isinstance(h, StderrHandler) and type(h).__name__ != "PrefectConsoleHandler"
    ]
    handler = StderrHandler()
    handler.setFormatter(LineFormatter())
    handler.addFilter(DetailFilter(thresholds))
    root.addHandler(handler)
    root.setLevel(min(thresholds.values()))
    logging.captureWarnings(True)
    rich.reconfigure(stderr=True, quiet=detail <= QUIET)  # the progress bars


def table_console() -> Console:
    """Rich console for tables and summaries on stdout; a pipe or log file has no width,
    so it gets them uncut (rich would otherwise fit them to 80 columns and elide run ids
    and values)."""
    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=TABLE_WIDTH)

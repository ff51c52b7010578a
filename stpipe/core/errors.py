"""Errors that stpipe raises on bad input.

Every error a user can cause derives from :class:`StpipeError`; the CLI prints its message
and exits non-zero without a traceback. Messages name the file (or config key) and state
what was expected and what was found.
"""

from __future__ import annotations

from pathlib import Path


class StpipeError(Exception):
    """Base class of errors caused by input, configuration or state, not by a bug."""

    exit_code: int = 2


class ConfigError(StpipeError):
    """A config file is missing, malformed, or has a wrong/missing key."""


class SourceError(StpipeError):
    """A source file cannot be read or does not match what the pipeline expects."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Decoding runs in worker processes: the error must cross the pickle boundary whole.
        return (type(self), (self.path, self.problem))


class StoreError(StpipeError):
    """The Zarr store is missing, inconsistent with the input, or locked."""


class TrackingError(StpipeError):
    """MLflow is unreachable, or the registry lacks what was asked for."""

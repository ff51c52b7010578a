"""Time arithmetic of the store: train/validation/test splits, time gaps, regular runs.

Pure numpy: times are ``datetime64[ns]`` (naive UTC), steps are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import numpy as np

from stpipe.core.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from stpipe.core.settings import SplitSection

SplitName = Literal["train", "val", "test", "all"]
TimeRange = tuple[np.datetime64, np.datetime64]


@dataclass(frozen=True)
class Splits:
    """Train/val/test time ranges from ``[split]``: half-open ``[start, stop)``.

    ``train = [train_start or first, train_end or val_start)``, ``val = [val_start,
    test_start)``, ``test = [test_start, test_end or end)``; ``all`` is the whole store. A
    window belongs to a split only when every one of its steps does, so no sample leaks
    across. ``train_end`` is set only by :meth:`through_validation`.
    """

    val_start: np.datetime64
    test_start: np.datetime64
    train_start: np.datetime64 | None = None
    test_end: np.datetime64 | None = None
    train_end: np.datetime64 | None = None

    @classmethod
    def from_settings(cls, section: SplitSection, *, times: np.ndarray | None = None) -> Splits:
        """The splits of ``[split]``; rolling windows need the store's ``times``."""

        def ns(value: datetime | None) -> np.datetime64 | None:
            return None if value is None else _as_ns(value)

        if section.rolling:
            if times is None:
                raise ConfigError("[split] val_days/test_days need the store's times")
            return cls.rolling(
                times,
                val_days=int(section.val_days or 0),
                test_days=int(section.test_days or 0),
                train_start=ns(section.train_start),
            )
        return cls(
            val_start=_as_ns(section.val_start),
            test_start=_as_ns(section.test_start),
            train_start=ns(section.train_start),
            test_end=ns(section.test_end),
        )

    @classmethod
    def rolling(
        cls,
        times: np.ndarray,
        *,
        val_days: int,
        test_days: int,
        train_start: np.datetime64 | None = None,
    ) -> Splits:
        """Test = the newest ``test_days`` complete days of ``times``, validation = the
        ``val_days`` before them, train = everything before that (from ``train_start``).

        A day is complete when the store holds its last step (a day still arriving belongs
        to no split), so the windows move forward by one day with each night of data.
        """
        times = np.asarray(times, dtype="datetime64[ns]")
        if len(times) < 2:
            raise StoreError(
                f"rolling [split] windows need at least 2 stored steps, got {len(times)}"
            )
        step = np.diff(times).min()
        end = (times[-1] + step).astype("datetime64[D]").astype("datetime64[ns]")
        test_start = end - np.timedelta64(test_days, "D")
        val_start = test_start - np.timedelta64(val_days, "D")
        if val_start <= times[0]:
            raise StoreError(
                f"rolling [split] windows (val_days={val_days}, test_days={test_days}) leave no "
                f"train data: the store holds {times[0]} … {times[-1]}"
            )
        return cls(
            val_start=val_start, test_start=test_start, train_start=train_start, test_end=end
        )

    def through_validation(self) -> Splits:
        """These splits with the validation window in the train split too (a refit on train
        + validation, ``[train] refit``); validation and test unchanged."""
        return replace(self, train_end=self.test_start)

    def describe(self) -> dict[str, str]:
        """The windows as text: ``train_end``, ``val_window``, ``test_window`` (half-open)."""

        def text(t: np.datetime64 | None) -> str:
            return "end" if t is None else str(np.datetime64(t, "s"))

        val, test = text(self.val_start), text(self.test_start)
        return {
            "train_end": text(self.train_end or self.val_start),
            "val_window": f"[{val}, {test})",
            "test_window": f"[{test}, {text(self.test_end)})",
        }

    def time_range(self, split: SplitName) -> tuple[np.datetime64 | None, np.datetime64 | None]:
        """(start, stop) of a split; None means the start or end of the store."""
        ranges = {
            "train": (self.train_start, self.train_end or self.val_start),
            "val": (self.val_start, self.test_start),
            "test": (self.test_start, self.test_end),
            "all": (None, None),
        }
        if split not in ranges:
            raise ConfigError(f"split must be one of {sorted(ranges)}, got {split!r}")
        return ranges[split]

    def index_range(self, split: SplitName, times: np.ndarray) -> tuple[int, int]:
        """Store time indices ``[a, b)`` of a split; ``times`` datetime64 [time], ascending."""
        start, stop = self.time_range(split)
        times = np.asarray(times, dtype="datetime64[ns]")
        a = 0 if start is None else int(np.searchsorted(times, start, side="left"))
        b = len(times) if stop is None else int(np.searchsorted(times, stop, side="left"))
        return a, max(a, b)


def _as_ns(value: datetime | str) -> np.datetime64:
    # The store's times are naive UTC; aware datetimes are converted to UTC first.
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(value, "ns")


def time_segments(
    times: np.ndarray,
    step_s: int,
    index_range: tuple[int, int],
    *,
    bad_steps: np.ndarray | None = None,
) -> np.ndarray:
    """Runs of regular steps inside ``index_range``: int64 [n, 2] of ``[start, stop)``.

    A run breaks at the store's time gaps (:func:`time_gaps`) and around steps flagged in ``bad_steps`` (bool [time], e.g. steps holding NaN).
    """
    a, b = index_range
    if b <= a:
        return np.zeros((0, 2), dtype=np.int64)
    t = np.asarray(times[a:b], dtype="datetime64[ns]")
    good = np.ones(b - a, dtype=bool) if bad_steps is None else ~np.asarray(bad_steps[a:b])
    regular = np.ones(b - a - 1, dtype=bool)
    regular[np.searchsorted(t, [before for before, _ in time_gaps(t, step_s)])] = False
    # A step continues the run of the previous one when both are good and one step apart.
    continues = np.concatenate([[False], regular & good[1:] & good[:-1]])
    begins = np.flatnonzero(good & ~continues)
    ends = np.flatnonzero(good & ~np.concatenate([continues[1:], [False]])) + 1
    return np.stack([begins, ends], axis=1).astype(np.int64) + a


def time_gaps(times: np.ndarray, step_s: int) -> list[TimeRange]:
    """Where consecutive ``times`` are more than ``step_s`` seconds apart.

    Returns ``(last time before, first time after)`` pairs; a patch window must not contain
    both ends of any of them.
    """
    times = np.asarray(times, dtype="datetime64[ns]")
    jumps = np.flatnonzero(np.diff(times) > np.timedelta64(int(step_s), "s"))
    return [(times[i], times[i + 1]) for i in jumps]

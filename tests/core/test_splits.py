"""Train/validation/test splits: fixed dates, and rolling windows that follow the data."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from stpipe.core.errors import ConfigError, StoreError
from stpipe.core.settings import SplitSection
from stpipe.core.splits import Splits


def hourly(start: str, end: str) -> np.ndarray:
    """Hourly times from ``start`` to ``end`` inclusive."""
    return np.arange(np.datetime64(start), np.datetime64(end) + 1, np.timedelta64(1, "h")).astype(
        "datetime64[ns]"
    )


def test_rolling_windows_count_back_from_the_newest_complete_day() -> None:
    times = hourly("2024-01-01T00", "2024-01-12T23")  # 12 whole days
    splits = Splits.rolling(times, val_days=3, test_days=2)
    assert splits.test_end == np.datetime64("2024-01-13T00", "ns")
    assert splits.test_start == np.datetime64("2024-01-11T00", "ns")
    assert splits.val_start == np.datetime64("2024-01-08T00", "ns")
    assert splits.index_range("test", times) == (240, 288)
    assert splits.index_range("val", times) == (168, 240)
    assert splits.index_range("train", times) == (0, 168)


def test_a_day_still_arriving_belongs_to_no_split_and_a_new_day_moves_every_window() -> None:
    whole = Splits.rolling(hourly("2024-01-01T00", "2024-01-12T23"), val_days=3, test_days=2)
    partial = hourly("2024-01-01T00", "2024-01-13T11")  # half of the 13th has arrived
    same = Splits.rolling(partial, val_days=3, test_days=2)
    assert same == whole
    assert same.index_range("test", partial)[1] == 288, "the 13th's steps are in no split"

    next_night = Splits.rolling(hourly("2024-01-01T00", "2024-01-13T23"), val_days=3, test_days=2)
    one_day = np.timedelta64(1, "D")
    assert next_night.val_start == whole.val_start + one_day
    assert next_night.test_start == whole.test_start + one_day
    assert next_night.test_end == whole.test_end + one_day


def test_the_settings_pick_fixed_or_rolling_and_refuse_both_or_neither() -> None:
    times = hourly("2024-01-01T00", "2024-01-12T23")
    rolling = SplitSection(val_days=3, test_days=2)
    assert Splits.from_settings(rolling, times=times) == Splits.rolling(
        times, val_days=3, test_days=2
    )
    fixed = SplitSection(val_start="2024-01-05", test_start="2024-01-08")
    assert Splits.from_settings(fixed).test_start == np.datetime64("2024-01-08", "ns")

    with pytest.raises(ValidationError, match="not both"):
        SplitSection(val_start="2024-01-05", test_start="2024-01-08", val_days=3, test_days=2)
    with pytest.raises(ValidationError, match="needs val_start and test_start"):
        SplitSection(val_days=3)
    with pytest.raises(ConfigError, match="need the store's times"):
        Splits.from_settings(rolling)


def test_rolling_windows_that_leave_no_train_data_are_refused() -> None:
    with pytest.raises(StoreError, match="leave no train data"):
        Splits.rolling(hourly("2024-01-01T00", "2024-01-04T23"), val_days=2, test_days=2)


def test_describe_names_the_windows_each_version_is_scored_on() -> None:
    splits = Splits.rolling(hourly("2024-01-01T00", "2024-01-12T23"), val_days=3, test_days=2)
    assert splits.describe() == {
        "train_end": "2024-01-08T00:00:00",
        "val_window": "[2024-01-08T00:00:00, 2024-01-11T00:00:00)",
        "test_window": "[2024-01-11T00:00:00, 2024-01-13T00:00:00)",
    }

"""What the weather and traffic generators share: seeds, dates, the grid check, daily files.

Every random draw comes from ``stream_rng(seed, stream, *keys)``: one stream per component
(the ``*_STREAM`` numbers, unique across both generators), keyed by the hour, day or knot
it belongs to, so adding a component never shifts another and any day can be generated
without the ones before it.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from stpipe.core.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

Grid = tuple[int, int]

GENERATOR_VERSION = 1  # bump when the values for a given (seed, grid, date) change
EPOCH = datetime(1900, 1, 1)  # ERA5's time origin; also the phase origin of every sinusoid

# Independent random streams per component, so adding one never shifts another.
(
    MASK_STREAM,
    WAVES_STREAM,
    FLOW_STREAM,
    KNOT_STREAM,
    WHITE_STREAM,
    CITY_STREAM,
    EVENT_STREAM,
    COUNTS_STREAM,
    MISSING_STREAM,
) = range(9)


def stream_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def as_date(value: str | date, *, what: str) -> date:
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    else:
        try:
            day = date.fromisoformat(str(value))
        except ValueError:
            raise ConfigError(
                f"synthetic {what}: expected a date YYYY-MM-DD, got {value!r}"
            ) from None
    if day < EPOCH.date():
        raise ConfigError(f"synthetic {what}: expected a date from 1900-01-01 on, got {day}")
    return day


def check_grid(seed: int, grid: Grid | None, default: Grid) -> Grid:
    """Validate ``seed`` and ``grid``; return the grid as (ny, nx) Python ints."""
    try:
        ok_seed = operator.index(seed) >= 0
    except TypeError:
        ok_seed = False
    if not ok_seed:
        raise ConfigError(f"synthetic seed: expected an integer >= 0, got {seed!r}")
    if grid is None:
        return default
    try:
        ny, nx = (operator.index(n) for n in grid)
    except (TypeError, ValueError):
        ny = nx = 0
    if min(ny, nx) < 2:
        raise ConfigError(f"synthetic grid: expected (ny, nx), integers >= 2, got {grid!r}")
    return ny, nx


def write_daily_files(
    outdir: Path,
    *,
    kind: str,
    days: int,
    start: str | date,
    overwrite: bool,
    filename: Callable[[date], str],
    write: Callable[[date, Path], None],
) -> list[Path]:
    """Write one file per day (atomically: a temp name, then rename); keep existing files."""
    from rich.progress import track

    if not isinstance(days, int) or days < 1:
        raise ConfigError(f"synthetic days: expected an integer >= 1, got {days!r}")
    first = as_date(start, what="start")
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(outdir, f"cannot create the output directory: {exc.strerror}") from None
    planned = [
        (first + timedelta(days=i), outdir / filename(first + timedelta(days=i)))
        for i in range(days)
    ]
    todo = [(day, path) for day, path in planned if overwrite or not path.exists()]
    for day, path in track(
        todo, description=f"generating {kind}", disable=len(todo) <= 3, transient=True
    ):
        partial = path.with_name(f".{path.name}.partial")
        try:
            write(day, partial)
            os.replace(partial, path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise SourceError(path, f"cannot write: {exc}") from None
        log.debug("wrote %s", path)
    log.info(
        "%s: wrote %d daily %s file(s), kept %d existing, %s to %s",
        outdir,
        len(todo),
        kind,
        len(planned) - len(todo),
        planned[0][0],
        planned[-1][0],
    )
    return [path for _, path in planned]


def history_attr(kind: str, seed: int, grid: Grid) -> str:
    return (
        f"synthetic {kind} by stpipe.io.sources.synthetic v{GENERATOR_VERSION} "
        f"(seed={seed}, grid={grid[0]}x{grid[1]}); not real data"
    )

"""The config sections that the I/O layer reads: the source, the store layout, Dask."""

from __future__ import annotations

import glob
import math
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from stpipe.core.settings import Settings
from stpipe.io.sources.kinds import SOURCE_KINDS, SourceKindSpec, unknown_kind


class SyntheticSection(Settings):
    """Options of the built-in generators (``synthetic-*`` source kinds, ``stpipe generate``)."""

    seed: int = 0
    start: date = date(2024, 1, 1)
    days: PositiveInt = 30
    grid: tuple[PositiveInt, PositiveInt] | None = Field(
        default=None, description="(ny, nx); default 64×64 for weather, 32×32 for traffic."
    )


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|min|h|D|W)\s*")
_DURATION_UNITS = {"s": 1, "min": 60, "h": 3600, "D": 86400, "W": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``"3D"``, ``"36h"``, ``"90min"``, ``"600s"``, ``"2W"`` → a timedelta (ValueError if not)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as '3D', '36h', '90min', '600s' or '2W'")
    return timedelta(seconds=float(match[1]) * _DURATION_UNITS[match[2]])


class SourceSection(Settings):
    """Where the input files are and how they are read and checked.

    Ingest refuses a file (``on_bad_file`` then says whether it stops or goes on) whose
    values are not plausible: any infinite value, or values outside the variable's bounds
    (``bounds``; else the file's CF ``valid_min``/``valid_max``/``valid_range``; else the
    physical bounds of a known variable, :data:`stpipe.io.sources.canonical.PHYSICAL_BOUNDS`;
    NaN is a missing value and always allowed); or whose times are not: later than now (the
    store holds observations and reanalyses), or starting more than ``max_gap`` after the
    store's end (a mis-dated file would otherwise open a gap that every later file falls
    into; the store is append-only). ``stpipe store rollback`` removes committed files.
    """

    kind: str = Field(description="A source kind of stpipe.io.sources.kinds.SOURCE_KINDS.")
    paths: str | list[str] | None = Field(
        default=None, description="Glob(s) of input files; required unless the kind generates them."
    )
    variables: list[str] = Field(min_length=1, description="Variable names as stored.")
    rename: dict[str, str] = Field(
        default_factory=dict, description="Name in the file → name in the store."
    )
    longitude: Literal["-180..180", "0..360"] = Field(
        default="-180..180", description="Longitude convention of the store (lat/lon grids)."
    )
    on_bad_file: Literal["fail", "skip"] = "fail"
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Store name → [lowest, highest] plausible value, in the stored units.",
    )
    max_gap: str = Field(
        default="3D",
        description="Longest time gap after the store's end that a new file may open: a "
        "duration such as '3D' (the default: three days), '36h', '90min' or '2W'.",
    )
    synthetic: SyntheticSection = Field(default_factory=SyntheticSection)

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind: str) -> str:
        if kind not in SOURCE_KINDS:
            raise ValueError(unknown_kind(kind))
        return kind

    @field_validator("max_gap")
    @classmethod
    def _duration(cls, text: str) -> str:
        if parse_duration(text) <= timedelta(0):
            raise ValueError(f"max_gap must be positive, got {text!r}")
        return text

    @field_validator("bounds")
    @classmethod
    def _ordered_bounds(cls, bounds: dict[str, tuple[float, float]]) -> dict:
        for name, (low, high) in bounds.items():
            if math.isnan(low) or math.isnan(high) or not low < high:
                raise ValueError(f"bounds of {name!r} must be [low, high] with low < high")
        return bounds

    @model_validator(mode="after")
    def _cross_checks(self) -> SourceSection:
        if self.kind_spec.needs_paths and not self.paths:
            raise ValueError(f"source kind {self.kind!r} needs 'paths' (a glob of input files)")
        if len(set(self.variables)) != len(self.variables):
            raise ValueError(f"variables has duplicates: {self.variables}")
        unknown = sorted(set(self.bounds) - set(self.variables))
        if unknown:
            raise ValueError(f"bounds names {unknown}, which are not in variables")
        return self

    @property
    def max_gap_s(self) -> int:
        """``max_gap`` in seconds."""
        return int(parse_duration(self.max_gap).total_seconds())

    @property
    def kind_spec(self) -> SourceKindSpec:
        """The registry entry of ``kind``: its reader and, for generated kinds, generator."""
        return SOURCE_KINDS[self.kind]

    @property
    def path_globs(self) -> list[str]:
        if self.paths is None:
            return []
        return [self.paths] if isinstance(self.paths, str) else list(self.paths)

    def files(self) -> list[Path]:
        """Files matching the globs, sorted by name (daily files sort by date)."""
        found: set[Path] = set()
        for pattern in self.path_globs:
            found.update(Path(p) for p in glob.glob(pattern, recursive=True))
        return sorted(p for p in found if p.is_file())


# Per compressor of the store (inside Blosc, with byte shuffle): its levels' range and
# default. Why lz4 is the default: stpipe.io.layout.
COMPRESSION_LEVELS = {"lz4": (1, 9, 5), "zstd": (1, 22, 3)}


class StoreSection(Settings):
    """Layout of the Zarr store; defaults are chosen from the data (see stpipe.io.store).
    Compression applies to stores created from then on: a store keeps its own."""

    time_chunk: PositiveInt | None = None
    spatial_chunk: tuple[PositiveInt, PositiveInt] | None = None
    compressor: Literal["lz4", "zstd"] = Field(
        default="lz4", description="Inside Blosc with byte shuffle: lz4 (fast) or zstd (smaller)."
    )
    compression_level: PositiveInt | None = Field(
        default=None,
        description="lz4: a Blosc level 1-9 (default 5); zstd: a zstd level 1-22 (default 3).",
    )

    @model_validator(mode="after")
    def _level_in_range(self) -> StoreSection:
        low, high, _ = COMPRESSION_LEVELS[self.compressor]
        if self.compression_level is not None and not low <= self.compression_level <= high:
            raise ValueError(
                f"compression_level {self.compression_level} is outside {self.compressor}'s "
                f"{low}-{high}"
            )
        return self

    @property
    def level(self) -> int:
        """The compression level in use: the one set, or the compressor's default."""
        return self.compression_level or COMPRESSION_LEVELS[self.compressor][2]


class DaskSection(Settings):
    address: str = Field(default="", description="tcp://host:port of a running scheduler.")
    n_workers: int = Field(default=0, ge=0, description="Local cluster size; 0: one per core.")

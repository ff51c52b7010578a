"""The config sections that the I/O layer reads: the source, the store layout, Dask."""

from __future__ import annotations

import glob
from datetime import date
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


class SourceSection(Settings):
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
    synthetic: SyntheticSection = Field(default_factory=SyntheticSection)

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind: str) -> str:
        if kind not in SOURCE_KINDS:
            raise ValueError(unknown_kind(kind))
        return kind

    @model_validator(mode="after")
    def _paths_for_file_kinds(self) -> SourceSection:
        if self.kind_spec.needs_paths and not self.paths:
            raise ValueError(f"source kind {self.kind!r} needs 'paths' (a glob of input files)")
        if len(set(self.variables)) != len(self.variables):
            raise ValueError(f"variables has duplicates: {self.variables}")
        return self

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


class StoreSection(Settings):
    """Layout of the Zarr store; defaults are chosen from the data (see stpipe.io.store)."""

    time_chunk: PositiveInt | None = None
    spatial_chunk: tuple[PositiveInt, PositiveInt] | None = None
    compression_level: int = Field(default=3, ge=1, le=22, description="zstd level.")


class DaskSection(Settings):
    address: str = Field(default="", description="tcp://host:port of a running scheduler.")
    n_workers: int = Field(default=0, ge=0, description="Local cluster size; 0: one per core.")

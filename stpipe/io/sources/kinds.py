"""The source kinds: one table from ``[source] kind`` to how its files are read and found.

Adding a kind is one :data:`SOURCE_KINDS` entry and the module of its reader. A reader
decodes one file into the canonical dataset (:mod:`stpipe.io.sources.canonical`); a kind
with a ``generator`` writes its own daily files (into ``workdir/feed``, from ``[source]
synthetic``) and takes no ``paths``. ``[source] kind`` is validated against this table
(:class:`stpipe.io.settings.SourceSection`), and ingest reads through it
(:func:`read_source_file`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol

import xarray as xr

from stpipe.core.errors import SourceError
from stpipe.io.sources.canonical import SourceOptions
from stpipe.io.sources.netcdf import read_netcdf
from stpipe.io.sources.synthetic import generate_traffic_files, generate_weather_files
from stpipe.io.sources.taxibj import read_taxibj

Reader = Callable[[Path, SourceOptions], xr.Dataset]
"""``reader(path, source)``: one file → the canonical dataset, or SourceError naming it."""


class FeedGenerator(Protocol):
    """Writes one file per day from ``start`` into ``outdir`` (keeping existing ones) and
    returns their paths; ``grid`` (ny, nx) None: the generator's default."""

    def __call__(
        self, outdir: Path, *, days: int, start: date, seed: int, grid: tuple[int, int] | None
    ) -> list[Path]: ...


@dataclass(frozen=True)
class SourceKindSpec:
    """One source kind: its ``reader`` and, for generated kinds, its ``generator``."""

    reader: Reader
    generator: FeedGenerator | None = None

    @property
    def needs_paths(self) -> bool:
        """Whether ``[source] paths`` must name the input files (kinds that are not generated)."""
        return self.generator is None


def _read_grib(path: Path, source: SourceOptions) -> xr.Dataset:
    # cfgrib (with the ecCodes library under it) is a heavy optional dependency: imported
    # when the first GRIB file is read, not with this table.
    from stpipe.io.sources.grib import read_grib

    return read_grib(path, source)


SOURCE_KINDS: dict[str, SourceKindSpec] = {
    "netcdf": SourceKindSpec(read_netcdf),
    "grib": SourceKindSpec(_read_grib),
    "taxibj": SourceKindSpec(read_taxibj),
    "synthetic-weather": SourceKindSpec(read_netcdf, generator=generate_weather_files),
    "synthetic-traffic": SourceKindSpec(read_taxibj, generator=generate_traffic_files),
}


def unknown_kind(kind: str) -> str:
    """The one-line complaint about an unregistered ``kind``, listing the registered ones."""
    names = [repr(name) for name in SOURCE_KINDS]
    known = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
    return f"Input should be {known} (the registered source kinds), got {kind!r}"


def read_source_file(path: str | Path, source: SourceOptions) -> xr.Dataset:
    """Decode one source file with the reader of ``source.kind`` (numpy-backed, not lazy).

    Raises :class:`SourceError` (naming the file) for a file that is missing, unreadable,
    truncated, of the wrong format, or lacks what ``source`` asks for.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(path, "file not found")
    return SOURCE_KINDS[source.kind].reader(path, source)

"""The source kinds: one table from ``[source] kind`` to how its files are read and found.

Adding a kind is one :data:`SOURCE_KINDS` entry and the module of its reader. A reader
decodes one file into its canonical data (:mod:`stpipe.io.sources.canonical`); a kind
with a ``generator`` writes its own daily files (into ``workdir/feed``, from ``[source]
synthetic``) and takes no ``paths``. ``[source] kind`` is validated against this table
(:class:`stpipe.io.settings.SourceSection`), and ingest reads through it
(:func:`read_source_file`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from stpipe.core.errors import SourceError
from stpipe.io.sources.canonical import SourceData, SourceOptions, check_values

Reader = Callable[[Path, SourceOptions], SourceData]
"""``reader(path, source)``: one file → its canonical data, or SourceError naming it."""


class FeedGenerator(Protocol):
    """Writes one file per day from ``start`` into ``outdir`` (keeping existing ones) and
    returns their paths; ``grid`` (ny, nx) None: the generator's default."""

    def __call__(
        self, outdir: Path, *, days: int, start: date, seed: int, grid: tuple[int, int] | None
    ) -> list[Path]: ...


@dataclass(frozen=True)
class SourceKindSpec:
    """One source kind: its ``reader`` and, for generated kinds, its ``generator``, each
    named ``"module:function"``.

    Named rather than imported: the readers and generators bring their format libraries
    (netCDF4, h5py, and for GRIB cfgrib with ecCodes, a heavy optional dependency), which
    validating a config that merely names its kind should not load; each is imported when
    first used (:meth:`load_reader`, :meth:`load_generator`).
    """

    reader: str
    generator: str | None = None

    @property
    def needs_paths(self) -> bool:
        """Whether ``[source] paths`` must name the input files (kinds that are not generated)."""
        return self.generator is None

    def load_reader(self) -> Reader:
        return _load(self.reader)

    def load_generator(self) -> FeedGenerator | None:
        return None if self.generator is None else _load(self.generator)


SOURCE_KINDS: dict[str, SourceKindSpec] = {
    "netcdf": SourceKindSpec("stpipe.io.sources.netcdf:read_netcdf"),
    "grib": SourceKindSpec("stpipe.io.sources.grib:read_grib"),
    "taxibj": SourceKindSpec("stpipe.io.sources.taxibj:read_taxibj"),
    "synthetic-weather": SourceKindSpec(
        "stpipe.io.sources.netcdf:read_netcdf",
        generator="stpipe.io.sources.synthetic.weather:generate_weather_files",
    ),
    "synthetic-traffic": SourceKindSpec(
        "stpipe.io.sources.taxibj:read_taxibj",
        generator="stpipe.io.sources.synthetic.traffic:generate_traffic_files",
    ),
}


def unknown_kind(kind: str) -> str:
    """The one-line complaint about an unregistered ``kind``, listing the registered ones."""
    names = [repr(name) for name in SOURCE_KINDS]
    known = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
    return f"Input should be {known} (the registered source kinds), got {kind!r}"


def read_source_file(path: str | Path, source: SourceOptions) -> SourceData:
    """Decode one source file with the reader of ``source.kind`` (numpy arrays, in memory).

    Raises :class:`SourceError` (naming the file) for a file that is missing, unreadable,
    truncated, of the wrong format, lacks what ``source`` asks for, or holds implausible
    values (:func:`stpipe.io.sources.canonical.check_values`).
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(path, "file not found")
    return check_values(path, SOURCE_KINDS[source.kind].load_reader()(path, source), source.bounds)


@cache
def _load(name: str) -> Any:
    """The function that ``"module:function"`` names, importing its module."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)

"""Source readers: one input file in, one canonical in-memory dataset out.

:func:`read_source_file` is the single entry point; it reads with the reader that
:data:`SOURCE_KINDS` (:mod:`stpipe.io.sources.kinds`) registers for ``[source] kind``:
:mod:`~stpipe.io.sources.netcdf` (``netcdf``, ``synthetic-weather``),
:mod:`~stpipe.io.sources.grib` (``grib``) or :mod:`~stpipe.io.sources.taxibj` (``taxibj``,
``synthetic-traffic``); the ``synthetic-*`` kinds generate their files with
:mod:`~stpipe.io.sources.synthetic`. The conventions of the data every reader returns are
in :mod:`stpipe.io.sources.canonical`.
"""

from stpipe.io.sources.kinds import SOURCE_KINDS, SourceKindSpec, read_source_file

__all__ = ["SOURCE_KINDS", "SourceKindSpec", "read_source_file"]

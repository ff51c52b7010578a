"""Ingest: new source files → the store, one atomic commit per file.

Files are taken in name order (daily files named by date sort by time). Each is
checksummed first: a file whose sha256 the manifest already holds is skipped without being
read. The others are decoded by a pool of workers, several at a time, while earlier files
are being written; each is then checked against the store (as it will be once every file
before it is committed) and

- appended (steps after the store's end; a time gap is allowed and recorded),
- skipped (its steps are already stored, bitwise equal after decoding; steps after the
  end, if any, are appended), or
- refused: values that differ from the stored ones, steps older than the end that the
  store does not hold (a backfill: the store is append-only), another grid, variables or
  units, or a file the reader rejects. ``[source] on_bad_file = "skip"`` goes on with the
  next file; ``"fail"`` stops there, keeping the files committed before it.

The workers (:mod:`stpipe.io.ingest_workers`: threads and processes of this machine, chosen
by its cores and the size of the work; :mod:`stpipe.io.ingest_dask` with ``[dask]
address``) write an appended file's steps into the arrays beyond the committed length,
where readers do not see them; the time coordinate and the commits are written by one
thread of this loop (:mod:`stpipe.io.ingest_commits`), in file order, each file's once its
write and every earlier commit are done, while the loop goes on. Writes of several
files run at once unless they share a time chunk (then the later one waits). A file that
overlaps the store is compared with it once every earlier file is committed. A store's
first commit renames the staging store, so the first file is committed before the next
write starts. A killed ingest thus leaves whole files committed, and the next ingest's
:func:`stpipe.io.store.recover` cuts off the rest.

Checksums are cached under each file's stat signature (:mod:`stpipe.io.checksums`), so a
no-op re-run costs one ``stat`` per file.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from stpipe.core.errors import SourceError, StoreError, StpipeError
from stpipe.core.grid import CF_CONVENTIONS, spatial_dims
from stpipe.core.splits import TimeRange, time_gaps
from stpipe.io import store as st
from stpipe.io.checksums import CHECKSUM_CACHE, Signature, cached_checksums, save_checksums
from stpipe.io.compute import (
    collector_skips_existing_objects,
    dask_context,
    keep_freed_memory,
    release_free_memory,
)
from stpipe.io.ingest_checks import check_compatible, check_gap, check_on_step
from stpipe.io.ingest_commits import Commit, CommitQueue, Stopwatch
from stpipe.io.ingest_dask import DaskPool
from stpipe.io.ingest_plan import available_cores
from stpipe.io.ingest_report import IngestReport, finish_report
from stpipe.io.ingest_tasks import Decoded, DecodePool, Decoding
from stpipe.io.ingest_workers import WorkerDied, local_pool
from stpipe.io.layout import blosc_codecs
from stpipe.io.manifest import FileEntry, Manifest
from stpipe.io.settings import DaskSection, SourceSection, StoreSection

log = logging.getLogger(__name__)

ALREADY_INGESTED = "already ingested (same sha256)"


@dataclass(frozen=True)
class IngestJob:
    """What ingest needs of a pipeline: its workdir, ``[source]``, ``[store]`` and ``[dask]``."""

    workdir: Path
    source: SourceSection
    store: StoreSection = field(default_factory=StoreSection)
    dask: DaskSection = field(default_factory=DaskSection)

    @property
    def store_path(self) -> Path:
        return st.store_location(self.workdir)


@dataclass
class _StoreState:
    """The store as the ingest loop plans it: every file decided so far, committed or not
    (``manifest``, ``times``); the arrays' length (``capacity``) and time chunk; the files
    not decided yet, counting the one being decided (``files_left``)."""

    path: Path
    manifest: Manifest | None
    times: np.ndarray
    template: xr.Dataset | None
    capacity: int = 0
    time_chunk: int = 1
    files_left: int = 1


def ingest(job: IngestJob, *, progress: bool = True) -> IngestReport:
    """Ingest the new files of ``job.source`` into ``job.store_path``.

    For generated source kinds (``synthetic-*``: a ``generator`` in
    :data:`stpipe.io.sources.kinds.SOURCE_KINDS`), the daily files are generated first into
    ``workdir/feed`` (existing files kept). Takes the store's lock (StoreError if another
    writer holds it); per-file problems go to the report, not exceptions.
    """
    started = datetime.now(UTC)
    stopwatch = Stopwatch()
    with st.store_lock(job.workdir):
        files = _input_files(job)
        with stopwatch.stage("recover"):
            manifest = st.recover(job.store_path)
        cache = job.workdir / CHECKSUM_CACHE
        checksums = cached_checksums(files, cache=cache)
        known = manifest.checksums if manifest else frozenset()
        skipped = [(p, ALREADY_INGESTED) for p in files if checksums.get(p, (0, ""))[1] in known]
        todo = [p for p in files if checksums.get(p, (0, ""))[1] not in known]
        for path, reason in skipped:
            log.debug("skipped %s: %s", path.name, reason)
        report = IngestReport(job.store_path, skipped=skipped)
        if todo:
            state = _open_state(job.store_path, manifest)
            if state.template is not None:
                _warn_on_layout_settings(job, state.template)
            keep_freed_memory()
            with collector_skips_existing_objects():
                report = _ingest_files(
                    job, state, todo, checksums, report, progress=progress, stopwatch=stopwatch
                )
            manifest = state.manifest
            with stopwatch.stage("resize"):
                if manifest is not None and state.capacity != manifest.committed_length:
                    st.resize(state.path, manifest.committed_length)
            save_checksums(cache, checksums)
            release_free_memory()
    report = finish_report(report, manifest, started)
    log.info(
        "%d file(s) ingested, %d skipped, %d refused; %s",
        len(report.ingested),
        len(report.skipped),
        len(report.refused),
        report.summary().splitlines()[-1].strip(),
    )
    log.debug("ingest loop seconds: %s", stopwatch.summary())
    return report


@contextlib.contextmanager
def _workers(job: IngestJob, files: list[Path]) -> Iterator[DecodePool]:
    """The cluster at ``[dask] address``, else workers of this machine sized to the work."""
    if job.dask.address:
        with dask_context(job.dask) as client, DaskPool(client, job.source) as pool:
            yield pool
        return
    cores = job.dask.n_workers or available_cores()
    with local_pool(job.source, job.store_path, files, cores=cores) as pool:
        yield pool


def _ingest_files(
    job: IngestJob,
    state: _StoreState,
    files: list[Path],
    checksums: dict[Path, tuple[Signature, str]],
    report: IngestReport,
    *,
    progress: bool,
    stopwatch: Stopwatch,
) -> IngestReport:
    ingested, skipped, refused = [], list(report.skipped), []
    added = nbytes = 0
    not_attempted: list[Path] = []
    with contextlib.ExitStack() as stack:
        with stopwatch.stage("start workers"):
            pool = stack.enter_context(_workers(job, files))
        advance = stack.enter_context(_progress(len(files), shown=progress))
        commits = stack.enter_context(CommitQueue(state.path, stopwatch))
        decodings = [pool.decode(path) for path in files]
        for i, (path, decoding) in enumerate(zip(files, decodings, strict=True)):
            advance(path.name)
            state.files_left = len(files) - i
            with stopwatch.stage("wait for decodes"):
                decoded = decoding.described()
            if decoded.sha256:
                checksums[path] = (decoded.signature, decoded.sha256)
            if state.manifest is not None and decoded.sha256 in state.manifest.checksums:
                decoding.release()
                skipped.append((path, ALREADY_INGESTED))
                continue
            try:
                with stopwatch.stage("check and plan"):
                    outcome = _ingest_one(state, commits, path, decoded, decoding, job=job)
            except (st.StoreWriteError, WorkerDied):
                raise  # the store's file system or a worker failed, not the file: stop
            except StpipeError as exc:
                decoding.release()
                reason = str(exc).removeprefix(f"{path}: ")
                log.error("refused %s: %s", path.name, reason)
                refused.append((path, reason))
                if job.source.on_bad_file == "fail":
                    not_attempted = files[i + 1 :]
                    break
                continue
            commits.make_finished()
            if outcome.appended:
                ingested.append(path)
                added += outcome.appended
                nbytes += outcome.nbytes
                log.info(
                    "ingested %s: %d steps %s … %s",
                    path.name,
                    outcome.appended,
                    *(np.datetime_as_string(t, "s") for t in outcome.range),
                )
            else:
                skipped.append((path, "identical to stored data"))
                log.info("skipped %s: its steps are stored with identical values", path.name)
        commits.make_all()
    return replace(
        report,
        ingested=ingested,
        skipped=skipped,
        refused=refused,
        not_attempted=not_attempted,
        steps_added=added,
        bytes_ingested=nbytes,
    )


@contextlib.contextmanager
def _progress(total: int, *, shown: bool) -> Iterator[Callable[[str], None]]:
    """A function to call as each file starts: it advances a progress bar if ``shown``."""
    if not shown:
        yield lambda name: None
        return
    from rich.progress import Progress  # importing rich takes 0.1-0.2 s: only for a bar

    with Progress(transient=True) as bar:
        task = bar.add_task("ingesting", total=total)
        yield lambda name: bar.update(task, advance=1, description=f"ingesting {name}")


@dataclass(frozen=True)
class _Outcome:
    appended: int
    nbytes: int = 0
    range: TimeRange | None = None


def _ingest_one(
    state: _StoreState,
    commits: CommitQueue,
    path: Path,
    decoded: Decoded,
    decoding: Decoding,
    *,
    job: IngestJob,
) -> _Outcome:
    """Check one decoded file against the planned store and plan its commit (or raise)."""
    if decoded.error is not None:
        raise SourceError(path, decoded.error)
    times, template = decoded.times, decoded.template.to_dataset()
    if state.manifest is None or state.template is None:
        step = template.attrs.get("time_step_s")
        if step is None:
            raise SourceError(path, "cannot tell the time step: one time and no time_step_s")
        check_on_step(path, times, origin=times[0], step_s=int(step))
        manifest = Manifest(time_step_s=int(step), variables=tuple(template.data_vars))
    else:
        manifest = state.manifest
        check_compatible(path, template, state.template, step_s=manifest.time_step_s)
    first = int(np.searchsorted(times, state.times[-1], side="right")) if state.times.size else 0
    if first:
        commits.make_all()  # the comparison reads committed data
        _check_identical(state, path, times[:first], decoding)
    new_times = times[first:]
    entry = FileEntry(
        name=path.name,
        size=decoded.signature[0],
        sha256=decoded.sha256,
        start=times[0],
        end=times[-1],
        n_steps=times.size,
        offset=manifest.committed_length,
        appended=new_times.size,
    )
    if not new_times.size:
        decoding.release()
        state.manifest = replace(manifest, files=(*manifest.files, entry))
        commits.add(Commit(state.manifest, _history(f"recorded duplicate {path.name}")))
        return _Outcome(0)
    if state.times.size:
        check_on_step(path, new_times, origin=state.times[0], step_s=manifest.time_step_s)
        check_gap(path, new_times[0], end=state.times[-1], max_gap_s=job.source.max_gap_s)
    else:
        _create_staging(state, template, job=job, step_s=manifest.time_step_s)
    offset = manifest.committed_length
    length = offset + new_times.size
    target = _write_target(state.path)
    if length > state.capacity:
        # Grow for every file left, if each is like this one: resizing rewrites every
        # array's metadata in the loop, so once per ingest, not per file. Steps beyond the
        # committed length are invisible, and cut off when the ingest (or recovery) ends.
        state.capacity = length + new_times.size * state.files_left
        with commits.stopwatch.stage("resize"):
            st.resize(target, state.capacity)
    chunks = range(offset // state.time_chunk, (length - 1) // state.time_chunk + 1)
    commits.make_through_chunks(chunks)  # an earlier write to a shared chunk finishes first
    writing = decoding.write(target, first=first, offset=offset)
    joined = np.concatenate([state.times[-1:], new_times])
    state.manifest = replace(
        manifest,
        committed_length=length,
        start=manifest.start if manifest.start is not None else new_times[0],
        end=new_times[-1],
        gaps=(*manifest.gaps, *time_gaps(joined, manifest.time_step_s)),
        files=(*manifest.files, entry),
    )
    state.times = np.concatenate([state.times, new_times])
    history = _history(f"appended {new_times.size} steps from {path.name}")
    commits.add(Commit(state.manifest, history, writing, offset, new_times, chunks))
    if target != state.path:
        commits.make_all()  # the first commit renames the staging store the writes go to
    nbytes = new_times.size * sum(_step_bytes(template[name]) for name in template.data_vars)
    return _Outcome(new_times.size, nbytes, (new_times[0], new_times[-1]))


def _create_staging(
    state: _StoreState, template: xr.Dataset, *, job: IngestJob, step_s: int
) -> None:
    grid = tuple(template.sizes[d] for d in spatial_dims(template))
    layout = st.choose_layout(grid, time_step_s=step_s, store=job.store)
    st.create_staging(state.path, template=template, layout=layout, attrs=_global_attrs(template))
    state.template, state.time_chunk = template, layout.time_chunk


def _step_bytes(var: xr.DataArray) -> int:
    """float32 bytes of one time step of ``var``."""
    return int(np.prod(var.shape[1:])) * 4


def _check_identical(
    state: _StoreState, path: Path, old_times: np.ndarray, decoding: Decoding
) -> None:
    """StoreError unless the file's first steps ``old_times`` (not after the store's end)
    are stored with the same values."""
    index = np.searchsorted(state.times, old_times)
    found = (index < state.times.size) & (
        state.times[np.minimum(index, state.times.size - 1)] == old_times
    )
    a, b = (np.datetime_as_string(t, "s") for t in (old_times[0], old_times[-1]))
    if not found.all():
        missing = np.datetime_as_string(old_times[~found][0], "s")
        raise StoreError(
            f"{path}: times {a} … {b} are not after the store's end "
            f"{np.datetime_as_string(state.times[-1], 's')} and {missing} is not in the store; "
            "the store is append-only, so backfilling a gap or earlier times is refused"
        )
    differing = decoding.first_difference(state.path, old_times.size, index)
    if differing is not None:
        raise StoreError(
            f"{path}: overlaps the store over {a} … {b} with different values "
            f"({differing}); refusing to overwrite stored data"
        )


def _open_state(store_path: Path, manifest: Manifest | None) -> _StoreState:
    if manifest is None:
        return _StoreState(store_path, None, np.array([], "datetime64[ns]"), None)
    template = st.open_store(store_path).isel(time=slice(0, 0)).load()
    times = st.read_times(store_path)
    chunks = template[next(iter(template.data_vars))].encoding["chunks"]
    return _StoreState(
        store_path, manifest, times, template, capacity=times.size, time_chunk=chunks[0]
    )


def _warn_on_layout_settings(job: IngestJob, template: xr.Dataset) -> None:
    """The layout is fixed when the store is created; say so if ``[store]`` now asks for another."""
    encoding = template[next(iter(template.data_vars))].encoding
    chunks, wanted = encoding.get("chunks"), job.store
    if chunks and (
        (wanted.time_chunk and wanted.time_chunk != chunks[0])
        or (wanted.spatial_chunk and tuple(wanted.spatial_chunk) != tuple(chunks[1:]))
    ):
        log.warning(
            "[store] time_chunk/spatial_chunk %s/%s differ from the existing store's chunks "
            "%s; the store keeps its layout (ingest into a new workdir to change it)",
            wanted.time_chunk,
            wanted.spatial_chunk,
            tuple(chunks),
        )
    stored = [(c.cname.value, c.clevel) for c in encoding.get("compressors", ())]
    codecs = [(c.cname.value, c.clevel) for c in blosc_codecs(wanted.compressor, wanted.level)]
    # a store made before lz4 became the default keeps zstd unless the user asks otherwise
    if {"compressor", "compression_level"} & wanted.model_fields_set and stored != codecs:
        log.warning(
            "[store] compressor/compression_level %s/%s differ from the existing store's "
            "compression %s; the store keeps its own (ingest into a new workdir to change it)",
            wanted.compressor,
            wanted.level,
            stored,
        )


def _write_target(store_path: Path) -> Path:
    staging = st.staging_path(store_path)
    return staging if staging.exists() else store_path


def _global_attrs(template: xr.Dataset) -> dict[str, Any]:
    per_file = {"source_file", "time_step_s", "history", "Conventions"}
    attrs = {k: v for k, v in template.attrs.items() if k not in per_file}
    return attrs | {"Conventions": CF_CONVENTIONS, "source": attrs.get("source", "stpipe ingest")}


def _history(what: str) -> str:
    return f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} stpipe ingest: {what}"


def _input_files(job: IngestJob) -> list[Path]:
    """The source files: ``[source] paths``, or those the kind's generator writes into
    ``workdir/feed``."""
    generate = job.source.kind_spec.load_generator()
    if generate is None:
        return job.source.files()
    s = job.source.synthetic
    return sorted(
        generate(job.workdir / "feed", days=s.days, start=s.start, seed=s.seed, grid=s.grid)
    )

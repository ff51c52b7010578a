"""Ingest: new source files → the store, one atomic commit per file.

Files are taken in name order (daily files named by date sort by time). Each is
checksummed first: a file whose sha256 the manifest already holds is skipped without being
read. The others are decoded on Dask, several ahead, while the file before them is being
written; each is then checked against the store and

- appended (steps after the store's end; a time gap is allowed and recorded),
- skipped (its steps are already stored, bitwise equal after decoding; steps after the
  end, if any, are appended), or
- refused: values that differ from the stored ones, steps older than the end that the
  store does not hold (a backfill: the store is append-only), another grid, variables or
  units, or a file the reader rejects. ``[source] on_bad_file = "skip"`` goes on with the
  next file; ``"fail"`` stops there, keeping the files committed before it.

Decoding and writing run as tasks of a ``distributed`` client (:func:`stpipe.io.compute.
dask_client`): by default one worker in this process with a thread per core; with
``[dask] address`` the same tasks run on that cluster, the decoded data stays on the
worker that decoded it and that worker writes it (the store must be on a file system the
workers share). netCDF4/HDF5 are not thread-safe, so in one process decodes take turns
(under xarray's HDF5 lock) while the previous file is compressed and written by zarr's
threads. Measured on 2 cores (40 synthetic 256×256 days, benchmarks/bench_ingest.py
machinery): threads 130–150 MB/s, one thread 119–154 MB/s, a warm LocalCluster of 2 worker
processes 81 MB/s (each process decodes and then writes its file, in file order, and the
processes, scheduler and client share the 2 cores), so threads are the default. At most
``threads + 1`` decoded files are held at a time: memory does not grow with the number
of files.

Checksums are cached under each file's stat signature (:mod:`stpipe.io.checksums`), so a
no-op re-run costs one ``stat`` per file.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends.locks import HDF5_LOCK, NETCDFC_LOCK, combine_locks

from stpipe.core.errors import SourceError, StoreError, StpipeError
from stpipe.core.grid import spatial_dims
from stpipe.core.splits import TimeRange, time_gaps
from stpipe.io import store as st
from stpipe.io.checksums import (
    CHECKSUM_CACHE,
    Signature,
    cached_checksums,
    file_sha256,
    file_signature,
    save_checksums,
)
from stpipe.io.compute import dask_client, release_free_memory
from stpipe.io.ingest_checks import check_compatible, check_gap, check_on_step
from stpipe.io.ingest_report import IngestReport, finish_report
from stpipe.io.manifest import FileEntry, Manifest
from stpipe.io.settings import DaskSection, SourceSection, StoreSection
from stpipe.io.sources.kinds import read_source_file

log = logging.getLogger(__name__)

ALREADY_INGESTED = "already ingested (same sha256)"
GROWTH_FILES = 7
_HDF5_LOCKS = combine_locks([HDF5_LOCK, NETCDFC_LOCK])


@dataclass(frozen=True)
class _Loaded:
    """A decoded file, held by the worker that read it, or the reader's complaint."""

    data: xr.Dataset | None
    error: str | None
    signature: Signature
    sha256: str


@dataclass(frozen=True)
class _Decoded:
    """What the ingest loop needs of a ``_Loaded`` file: its times and an empty-time copy
    of it (coords, attributes), or the error; its stat signature and checksum."""

    times: np.ndarray | None
    template: xr.Dataset | None
    error: str | None
    signature: Signature
    sha256: str


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
    """The committed store as the ingest loop knows it."""

    path: Path
    manifest: Manifest | None
    times: np.ndarray
    template: xr.Dataset | None
    capacity: int = 0


def ingest(job: IngestJob, *, progress: bool = True) -> IngestReport:
    """Ingest the new files of ``job.source`` into ``job.store_path``.

    For generated source kinds (``synthetic-*``: a ``generator`` in
    :data:`stpipe.io.sources.kinds.SOURCE_KINDS`), the daily files are generated first into
    ``workdir/feed`` (existing files kept). Takes the store's lock (StoreError if another
    writer holds it); per-file problems go to the report, not exceptions.
    """
    started = datetime.now(UTC)
    with st.store_lock(job.workdir):
        files = _input_files(job)
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
            report = _ingest_files(job, state, todo, checksums, report, progress=progress)
            manifest = state.manifest
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
    return report


def _ingest_files(
    job: IngestJob,
    state: _StoreState,
    files: list[Path],
    checksums: dict[Path, tuple[Signature, str]],
    report: IngestReport,
    *,
    progress: bool,
) -> IngestReport:
    from rich.progress import Progress

    ingested, skipped, refused = [], list(report.skipped), []
    added = nbytes = 0
    not_attempted: list[Path] = []
    with (
        dask_client(job.dask) as client,
        Progress(disable=not progress, transient=True) as bar,
    ):
        task = bar.add_task("ingesting", total=len(files))
        for i, (path, decoded, decoded_future) in enumerate(
            _decode_ahead(client, files, job.source)
        ):
            bar.update(task, advance=1, description=f"ingesting {path.name}")
            if decoded.sha256:
                checksums[path] = (decoded.signature, decoded.sha256)
            if state.manifest is not None and decoded.sha256 in state.manifest.checksums:
                decoded_future.release()
                skipped.append((path, ALREADY_INGESTED))
                continue
            try:
                outcome = _ingest_one(client, state, path, decoded, decoded_future, job=job)
            except st.StoreWriteError:
                raise  # the store's file system failed, not the file: stop, keep the commits
            except StpipeError as exc:
                reason = str(exc).removeprefix(f"{path}: ")
                log.error("refused %s: %s", path.name, reason)
                refused.append((path, reason))
                if job.source.on_bad_file == "fail":
                    not_attempted = files[i + 1 :]
                    break
                continue
            finally:
                decoded_future.release()
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
    return replace(
        report,
        ingested=ingested,
        skipped=skipped,
        refused=refused,
        not_attempted=not_attempted,
        steps_added=added,
        bytes_ingested=nbytes,
    )


def _decode_ahead(
    client: Any, files: list[Path], source: SourceSection
) -> Iterator[tuple[Path, _Decoded, Any]]:
    """Decode files on the cluster, a bounded number ahead; yield them in order."""
    window = sum(client.nthreads().values()) + 1
    pending: deque[tuple[Path, Any, Any]] = deque()
    queue = iter(files)
    try:
        while True:
            while len(pending) < window and (path := next(queue, None)) is not None:
                data = client.submit(_decode, path, source, pure=False)
                pending.append((path, data, client.submit(_describe, data, pure=False)))
            if not pending:
                return
            path, data, described = pending.popleft()
            yield path, described.result(), data
    finally:
        for _, data, described in pending:
            data.cancel()
            described.cancel()


@dataclass(frozen=True)
class _Outcome:
    appended: int
    nbytes: int = 0
    range: TimeRange | None = None


def _ingest_one(
    client: Any,
    state: _StoreState,
    path: Path,
    decoded: _Decoded,
    data: Any,
    *,
    job: IngestJob,
) -> _Outcome:
    if decoded.error is not None:
        raise SourceError(path, decoded.error)
    times, template = decoded.times, decoded.template
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
        _check_identical(client, state, path, times[:first], data)
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
        manifest = replace(manifest, files=(*manifest.files, entry))
        st.commit(state.path, manifest, history=_history(f"recorded duplicate {path.name}"))
        state.manifest = manifest
        return _Outcome(0)
    if state.times.size:
        check_on_step(path, new_times, origin=state.times[0], step_s=manifest.time_step_s)
        check_gap(path, new_times[0], end=state.times[-1], max_gap_s=job.source.max_gap_s)
    else:
        grid = tuple(template.sizes[d] for d in spatial_dims(template))
        layout = st.choose_layout(grid, time_step_s=manifest.time_step_s, store=job.store)
        st.create_staging(
            state.path, template=template, layout=layout, attrs=_global_attrs(template)
        )
        state.template = template
    offset = manifest.committed_length
    length = offset + new_times.size
    target = _write_target(state.path)
    if length > state.capacity:
        # Grow for about a week of such files at once: resizing rewrites every array's
        # metadata, a cost worth paying once per several appends.
        state.capacity = length + new_times.size * GROWTH_FILES
        st.resize(target, state.capacity)
    nbytes = client.submit(_write, target, data, first=first, offset=offset, pure=False).result()
    joined = np.concatenate([state.times[-1:], new_times])
    manifest = replace(
        manifest,
        committed_length=length,
        start=manifest.start if manifest.start is not None else new_times[0],
        end=new_times[-1],
        gaps=(*manifest.gaps, *time_gaps(joined, manifest.time_step_s)),
        files=(*manifest.files, entry),
    )
    st.commit(
        state.path, manifest, history=_history(f"appended {new_times.size} steps from {path.name}")
    )
    state.manifest = manifest
    state.times = np.concatenate([state.times, new_times])
    return _Outcome(new_times.size, nbytes, (new_times[0], new_times[-1]))


def _check_identical(
    client: Any, state: _StoreState, path: Path, old_times: np.ndarray, data: Any
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
    differing = client.submit(
        _first_difference, state.path, data, old_times.size, index, pure=False
    ).result()
    if differing is not None:
        raise StoreError(
            f"{path}: overlaps the store over {a} … {b} with different values "
            f"({differing}); refusing to overwrite stored data"
        )


def _first_difference(
    store_path: Path, loaded: _Loaded, n_steps: int, index: np.ndarray
) -> str | None:
    """Where the file's first ``n_steps`` first differ bitwise from stored ``index``."""
    ds = loaded.data
    stored = st.read_steps(store_path, list(ds.data_vars), index)
    for name, var in ds.data_vars.items():
        new, old = var.values[:n_steps], stored[str(name)]
        same = (new.view(np.uint32) == old.view(np.uint32)) | (np.isnan(new) & np.isnan(old))
        if not same.all():
            t = np.unravel_index(np.argmin(same), same.shape)[0]
            when = np.datetime_as_string(ds.time.values[t], "s")
            return f"first in {name!r} at {when}"
    return None


def _decode(path: Path, source: SourceSection) -> _Loaded:
    """Checksum and decode ``path`` (a task: runs on a worker)."""
    try:
        signature, sha256 = file_signature(path), file_sha256(path)
    except OSError as exc:
        return _Loaded(None, f"cannot read the file: {exc.strerror}", [], "")
    try:
        # netCDF4 and h5py are not thread-safe: hold the locks xarray's backends use too.
        with _HDF5_LOCKS:
            return _Loaded(read_source_file(path, source), None, signature, sha256)
    except SourceError as exc:
        # Returned, not raised: SourceError's two-argument constructor does not unpickle.
        return _Loaded(None, exc.problem, signature, sha256)


def _describe(loaded: _Loaded) -> _Decoded:
    if loaded.data is None:
        return _Decoded(None, None, loaded.error, loaded.signature, loaded.sha256)
    return _Decoded(
        loaded.data["time"].values,
        loaded.data.isel(time=slice(0, 0)),
        None,
        loaded.signature,
        loaded.sha256,
    )


def _write(store_path: Path, loaded: _Loaded, *, first: int, offset: int) -> int:
    return st.write_steps(store_path, loaded.data, first=first, offset=offset)


def _open_state(store_path: Path, manifest: Manifest | None) -> _StoreState:
    if manifest is None:
        return _StoreState(store_path, None, np.array([], "datetime64[ns]"), None)
    template = st.open_store(store_path).isel(time=slice(0, 0)).load()
    times = st.read_times(store_path)
    return _StoreState(store_path, manifest, times, template, capacity=times.size)


def _warn_on_layout_settings(job: IngestJob, template: xr.Dataset) -> None:
    """The layout is fixed when the store is created; say so if ``[store]`` now asks for another."""
    chunks = template[next(iter(template.data_vars))].encoding.get("chunks")
    wanted = job.store
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


def _write_target(store_path: Path) -> Path:
    staging = st.staging_path(store_path)
    return staging if staging.exists() else store_path


def _global_attrs(template: xr.Dataset) -> dict[str, Any]:
    per_file = {"source_file", "time_step_s", "history", "Conventions"}
    attrs = {k: v for k, v in template.attrs.items() if k not in per_file}
    return attrs | {"Conventions": "CF-1.8", "source": attrs.get("source", "stpipe ingest")}


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

"""What one ingest worker runs: a thread of the ingest, or a process forked by the launcher.

A worker (:func:`serve`) answers the pool's commands over a socket: decode a file and keep
it, compare its first steps with the store, write its steps, drop it. Worker processes come
from one launcher process (:func:`launch`, started by
:class:`stpipe.io.ingest_workers.LocalPool`) that imports the reader and forks them, so none
pays the imports; this module and what it imports load numpy, zarr and the reader's format
library but neither xarray, pandas nor pydantic, which took most of a launcher's start
(about 0.5 s of 0.6 on the 2-core machine; ``benchmarks/bench_ingest.py`` prints when the
processes were ready).

A worker process dies with the ingest: the launcher gets SIGKILL when the ingest process
dies, and its workers when it dies. Each worker holds the store's data-write lock shared for
its whole life, so recovery after a killed ingest (:func:`stpipe.io.store.recover`, which
takes that lock exclusively) waits until no orphaned write can still land.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from stpipe.io.compute import keep_freed_memory
from stpipe.io.ingest_tasks import Loaded, decode, describe, first_difference, write_loaded
from stpipe.io.store_writes import CRASH_ENV, data_write_lock

_COMMANDS: dict[str, Callable[..., Any]] = {
    "write": lambda held, target, first, offset: write_loaded(
        target, held, first=first, offset=offset
    ),
    "difference": lambda held, store_path, n, index: first_difference(store_path, held, n, index),
}


def serve(conn: Connection, store_path: Path) -> None:
    """A worker: run the commands that come over ``conn`` until it closes."""
    held: Loaded | None = None
    with contextlib.suppress(EOFError, OSError), conn, data_write_lock(store_path, shared=True):
        conn.send(("ready", None))
        while True:
            command, *args = conn.recv()
            try:
                if command == "decode":
                    held = decode(*args)
                    answer: Any = describe(held)
                elif command == "release":
                    held = None
                    continue
                else:
                    answer = _COMMANDS[command](held, *args)
                    if command == "write":
                        held = None
            except Exception as exc:
                held = None if command == "write" else held
                conn.send(("error", _portable(exc)))
                continue
            conn.send(("ok", answer))


UNUSED_IN_WORKERS = ("cupy", "dask.array")
"""Modules that libraries import where installed but that ingest workers never use: workers
hold numpy arrays, yet where CuPy is installed zarr imports it for its GPU buffers (0.55 s of
the launcher's 1.15 s of imports on the 16-core machine), and a reader that builds xarray
objects (GRIB, through cfgrib) makes xarray check each new variable for dask arrays by
importing dask.array (with scipy, and CuPy: 0.7 s there). The launcher marks them absent in
``sys.modules`` before any import; zarr and xarray take an absent module as not installed."""

# The launcher skips the interpreter's teardown (0.3 s of CPU freeing modules one by one).
LAUNCHER = (
    f"import os, sys; sys.modules.update(dict.fromkeys({UNUSED_IN_WORKERS!r})); "
    "from stpipe.io.ingest_serve import launch; launch(sys.argv[1:]); os._exit(0)"
)


def launch(argv: list[str]) -> None:
    """The launcher process: import the reader once, then fork a worker per socket.

    ``argv``: the ingest's pid, the store path, the reader's module, the workers' socket
    file descriptors. Forked workers share the imports (no start-up each); the launcher
    waits for them and dies with the ingest, and they die with it.
    """
    ingest_pid, store_path, reader, *fds = argv
    _die_with_parent()
    if os.getppid() != int(ingest_pid):
        return  # the ingest died before the line above
    os.environ.pop(CRASH_ENV, None)  # crash tests count the ingest process's writes
    importlib.import_module(reader)
    keep_freed_memory()
    gc.freeze()  # the imports' objects: never scanned by a worker's collector, never copied
    children = []
    sockets = [int(fd) for fd in fds]
    for i, fd in enumerate(sockets):
        pid = os.fork()
        if pid == 0:
            try:  # a worker never returns into the launcher's loop
                for later in sockets[i + 1 :]:  # the earlier ones are closed here already
                    os.close(later)
                _die_with_parent()
                serve(Connection(fd), Path(store_path))
            finally:
                os._exit(0)
        os.close(fd)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

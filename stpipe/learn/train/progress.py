"""The progress bar of a training run (rich; drawn by rank 0 only)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ProgressBar:
    """A rich progress bar per epoch with the running loss and samples/s (or nothing)."""

    REFRESH_S = 0.5

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self._last = 0.0

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[rate]:.0f} samples/s"),
                TimeElapsedColumn(),
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def epoch(
        self, epoch: int, epochs: int, steps: int
    ) -> Callable[[int, Callable[[], float], float], None] | None:
        """A fresh bar for ``epoch``; returns the ``on_step`` of
        :func:`~stpipe.learn.train.train_epoch` (None when the bar is off)."""
        if self._progress is None:
            return None
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(
            f"epoch {epoch}/{epochs}", total=steps, loss=0.0, rate=0.0
        )

        def update(step: int, loss: Callable[[], float], rate: float) -> None:
            now = time.perf_counter()
            if step < steps and now - self._last < self.REFRESH_S:
                return
            self._last = now
            self._progress.update(self._task, completed=step, loss=loss(), rate=rate)

        return update

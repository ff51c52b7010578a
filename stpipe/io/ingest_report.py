"""What one ingest did: files ingested, skipped and refused, and what the store holds after."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from stpipe.core.splits import TimeRange
from stpipe.io.manifest import Manifest, manifest_digest


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did. ``refused`` holds (file, reason); MB are float32 bytes / 1e6."""

    store: Path
    ingested: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    not_attempted: list[Path] = field(default_factory=list)
    steps_added: int = 0
    bytes_ingested: int = 0
    committed_length: int = 0
    time_range: TimeRange | None = None
    gaps: list[TimeRange] = field(default_factory=list)
    digest: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"{self.store}: {len(self.ingested)} file(s) ingested ({self.steps_added} steps, "
            f"{self.bytes_ingested / 1e6:.1f} MB), {len(self.skipped)} skipped, "
            f"{len(self.refused)} refused in {self.seconds:.1f} s"
        ]
        lines += [f"  refused {path.name}: {reason}" for path, reason in self.refused]
        if self.not_attempted:
            lines.append(
                f"  stopped at the refused file (on_bad_file = 'fail'): files before it are "
                f"committed; {len(self.not_attempted)} file(s) after it not attempted"
            )
        if self.time_range is None:
            lines.append("  store is empty")
        else:
            a, b = (np.datetime_as_string(t, "s") for t in self.time_range)
            gaps = ", ".join(
                f"{np.datetime_as_string(x, 's')} → {np.datetime_as_string(y, 's')}"
                for x, y in self.gaps
            )
            lines.append(
                f"  store holds {a} … {b} ({self.committed_length} steps), "
                + (f"gaps after: {gaps}" if gaps else "no gaps")
                + f"; digest {self.digest}"
            )
        return "\n".join(lines)


def finish_report(
    report: IngestReport, manifest: Manifest | None, started: datetime
) -> IngestReport:
    """``report`` with its run time and what the store holds after it (from ``manifest``)."""
    seconds = (datetime.now(UTC) - started).total_seconds()
    if manifest is None or manifest.start is None:
        return replace(report, seconds=seconds)
    return replace(
        report,
        committed_length=manifest.committed_length,
        time_range=(manifest.start, manifest.end),
        gaps=list(manifest.gaps),
        digest=manifest_digest(manifest),
        seconds=seconds,
    )

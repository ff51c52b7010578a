"""The ``[forecast]`` section: where forecasts are written and how tiles overlap."""

from __future__ import annotations

from typing import Any

import fsspec
from pydantic import Field, NonNegativeInt, PositiveFloat, field_validator

from stpipe.core.settings import Settings
from stpipe.forecast.store import LOCK_TIMEOUT_S

TRANSIENT_PROTOCOLS = ("memory",)


class ForecastSection(Settings):
    store: str = Field(default="", description="Path or fsspec URL; empty: workdir/forecasts.zarr")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options of a URL store, e.g. {endpoint_url = 'http://...'} for S3.",
    )
    overlap: tuple[NonNegativeInt, NonNegativeInt] | None = Field(
        default=None,
        description="Cells shared by neighbouring tiles (rows, cols), each smaller than [patches] "
        "size; default: a quarter of the size.",
    )
    lock_timeout_s: PositiveFloat = Field(
        default=LOCK_TIMEOUT_S,
        description="How long a forecast write waits for another process writing the same "
        "(local) forecast store before it gives up.",
    )

    @field_validator("store")
    @classmethod
    def _persistent_store(cls, store: str) -> str:
        protocol, _ = fsspec.core.split_protocol(store)
        if protocol is None or protocol == "file":
            return store
        if protocol in TRANSIENT_PROTOCOLS:
            raise ValueError(
                f"{store!r} lives in the memory of one process: forecasts written there are "
                "lost when the process ends; use a path or an object-store URL (s3://...)"
            )
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise ValueError(
                f"unknown protocol {protocol!r} in {store!r}; use a path or a URL of a "
                "filesystem fsspec knows (s3://, gs://, az://, ...)"
            ) from None
        except ImportError as exc:
            raise ValueError(
                f"{protocol}:// stores need a package that is missing: {exc}"
            ) from None
        return store

    def check_overlap(self, size: tuple[int, int]) -> None:
        """ValueError unless ``overlap`` is smaller than the tile ``size`` (rows, cols)."""
        if self.overlap is not None and any(
            o >= s for o, s in zip(self.overlap, size, strict=True)
        ):
            raise ValueError(
                f"[forecast] overlap: {self.overlap} must be smaller than [patches] size "
                f"{tuple(size)} in both directions (neighbouring tiles would not advance)"
            )

"""The ``[forecast]`` section: where forecasts are written and how tiles overlap."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from stpipe.core.settings import Settings


class ForecastSection(Settings):
    store: str = Field(default="", description="Path or fsspec URL; empty: workdir/forecasts.zarr")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options of a URL store, e.g. {endpoint_url = 'http://...'} for S3.",
    )
    overlap: tuple[int, int] | None = Field(
        default=None,
        description="Cells shared by neighbouring tiles (rows, cols); default: a quarter of "
        "[patches] size.",
    )

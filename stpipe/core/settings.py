"""Settings base and the sections of the config file that the core reads.

Every section of a pipeline's TOML file is a frozen pydantic model that forbids unknown keys;
each layer defines the sections it consumes (``stpipe.io.settings``,
``stpipe.learn.settings``, ...) and the application's ``Config`` only assembles them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PositiveInt,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema

SCALARS = ("int", "float", "bool")


def _strict_scalars(schema: Any) -> None:
    """Mark every int/float/bool schema inside the core schema ``schema`` strict, in place."""
    if isinstance(schema, dict):
        if schema.get("type") in SCALARS:
            schema["strict"] = True
        for key, value in schema.items():
            if key != "default":  # a default value is data, not schema
                _strict_scalars(value)
    elif isinstance(schema, list):
        for item in schema:
            _strict_scalars(item)


class Settings(BaseModel):
    """A config section: frozen, unknown keys refused, numbers and booleans strict.

    Pydantic's lax mode reads ``true`` as 1 and ``1`` or ``"yes"`` as True; a config file
    that says ``batch_size = true`` is a mistake, so every int, float and bool of a section
    (nested in lists and tuples too) validates strictly: ints take ints, floats take ints and
    floats, bools take booleans. Everything else stays lax, as TOML needs: dates and strings
    become datetimes, strings Paths, lists tuples.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema = handler(source)
        _strict_scalars(schema)
        return schema


class PatchesSection(Settings):
    input_steps: PositiveInt = Field(description="History length, in time steps.")
    leads: list[PositiveInt] = Field(min_length=1, description="Steps ahead to forecast.")
    size: tuple[PositiveInt, PositiveInt] = Field(description="Patch (height, width) in cells.")
    stride: tuple[PositiveInt, PositiveInt] | None = Field(
        default=None, description="Spatial stride between patches; default: size (no overlap)."
    )
    time_stride: PositiveInt = 1
    halo: int = Field(default=0, ge=0, description="Extra context cells on each side.")
    edge: Literal["pad", "reflect", "wrap", "drop"] = Field(
        default="pad", description="How patches reaching past the grid edge are filled."
    )
    input_variables: list[str] | None = Field(default=None, description="Default: all.")
    target_variables: list[str] | None = Field(default=None, description="Default: inputs.")
    time_features: bool = Field(default=True, description="Hour of day, day of week (sin/cos).")
    static_features: list[Literal["lat", "lon", "mask"]] = Field(default_factory=list)
    nan_policy: Literal["skip", "mask"] = "skip"

    def inputs(self, variables: Sequence[str]) -> list[str]:
        """The input variables: ``input_variables``, or every one of ``variables``."""
        return list(self.input_variables or variables)

    def targets(self, variables: Sequence[str]) -> list[str]:
        """The target variables: ``target_variables``, or the inputs."""
        return list(self.target_variables or self.inputs(variables))

    @field_validator("leads")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"leads must be strictly increasing, got {v}")
        return v


class SplitSection(Settings):
    """Train/validation/test by time: fixed dates, or rolling windows counted back from the
    newest complete day of the store (``val_days``/``test_days``), which move forward as
    nights of data arrive."""

    train_start: datetime | None = None
    val_start: datetime | None = Field(default=None, description="Fixed: validation from here.")
    test_start: datetime | None = Field(default=None, description="Fixed: test from here.")
    test_end: datetime | None = None
    val_days: PositiveInt | None = Field(
        default=None,
        description="Rolling: validate on the N days before the test days, on which early "
        "stopping and the per-lead calibration weigh the model: 5 suit a few weeks of data, "
        "14 a year or more (benchmarks/QUALITY.md).",
    )
    test_days: PositiveInt | None = Field(
        default=None, description="Rolling: test on the newest M complete days of the store."
    )

    @property
    def rolling(self) -> bool:
        return self.val_days is not None

    @model_validator(mode="after")
    def _ordered(self) -> SplitSection:
        fixed = (self.val_start, self.test_start)
        rolling = (self.val_days, self.test_days)
        if any(v is not None for v in fixed) and any(v is not None for v in rolling):
            raise ValueError(
                "give either val_start and test_start (fixed dates) or val_days and test_days "
                "(rolling windows), not both"
            )
        if None in fixed and None in rolling:
            raise ValueError(
                "needs val_start and test_start (fixed dates), or val_days and test_days "
                "(rolling windows counted back from the newest data)"
            )
        if self.rolling and self.test_end is not None:
            raise ValueError("test_end goes with fixed dates; rolling windows end at the data")
        points = [self.train_start, self.val_start, self.test_start, self.test_end]
        given = [p for p in points if p is not None]
        if any(b <= a for a, b in itertools.pairwise(given)):
            raise ValueError(
                "split dates must increase: train_start < val_start < test_start < test_end, "
                f"got {[str(p) for p in given]}"
            )
        return self

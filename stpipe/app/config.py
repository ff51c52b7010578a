"""Pipeline configuration: one TOML file per pipeline, validated when it is loaded.

The sections and keys are the documented config contract (README); every key is documented on
its field. Relative paths (``workdir``, ``paths``, ``[forecast] store``) are resolved
against the directory of the config file, so a config can be moved with its data.

Errors name the file, the key and the problem::

    ConfigError: runs/era5.toml: [patches] leads: leads must be strictly increasing, got [3, 1]
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import (
    BaseModel,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from stpipe.core.errors import ConfigError
from stpipe.core.patches import PatchSpec
from stpipe.core.settings import PatchesSection, Settings, SplitSection
from stpipe.forecast.settings import ForecastSection
from stpipe.io.ingestion import IngestJob
from stpipe.io.settings import DaskSection, SourceSection, StoreSection
from stpipe.io.store import store_location
from stpipe.learn.settings import TrainSection
from stpipe.models.registry import MODELS, ModelUnion, model_settings
from stpipe.tracking.settings import MlflowSection

PIPELINE_LOCK_TIMEOUT_S = 4 * 3600.0


class PipelineSection(Settings):
    name: str = Field(description="Pipeline name; used for the store, run names and locks.")
    workdir: Path = Field(description="Store, mlflow.db, artifacts and forecasts live here.")
    lock_timeout_s: PositiveFloat = Field(
        default=PIPELINE_LOCK_TIMEOUT_S,
        description="How long a flow run waits for a running flow of this pipeline (the "
        "night overrunning into the morning forecast) before it stops with an error.",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"must be letters, digits, '.', '_' or '-', got {v!r}")
        return v


class Config(Settings):
    pipeline: PipelineSection
    source: SourceSection
    store: StoreSection = Field(default_factory=StoreSection)
    patches: PatchesSection
    split: SplitSection
    model: ModelUnion = Field(default_factory=model_settings)
    train: TrainSection = Field(default_factory=TrainSection)
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    forecast: ForecastSection = Field(default_factory=ForecastSection)
    dask: DaskSection = Field(default_factory=DaskSection)

    path: Path | None = Field(default=None, exclude=True, description="File it was loaded from.")

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        known = set(self.source.variables)
        for key in ("input_variables", "target_variables"):
            chosen = getattr(self.patches, key)
            if chosen is not None and not set(chosen) <= known:
                raise ValueError(
                    f"[patches] {key} {chosen} names variables not in [source] variables "
                    f"{self.source.variables}"
                )
        if self.patches.target_variables is not None and not set(
            self.patches.target_variables
        ) <= set(self.input_variables):
            raise ValueError(
                f"[patches] target_variables {self.patches.target_variables} must be a subset "
                f"of the input variables {self.input_variables}"
            )
        self.forecast.check_overlap(self.patches.size)
        return self

    @property
    def input_variables(self) -> list[str]:
        return self.patches.inputs(self.source.variables)

    @property
    def target_variables(self) -> list[str]:
        return self.patches.targets(self.source.variables)

    @property
    def workdir(self) -> Path:
        return self.pipeline.workdir

    @property
    def store_path(self) -> Path:
        return store_location(self.workdir)

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.pipeline.name

    @property
    def model_name(self) -> str:
        return self.mlflow.model_name or self.pipeline.name

    @property
    def forecast_store(self) -> str:
        return self.forecast.store or str(self.workdir / "forecasts.zarr")

    def source_files(self) -> list[Path]:
        """Files matching the ``[source]`` globs, sorted by name."""
        return self.source.files()

    @property
    def ingest_job(self) -> IngestJob:
        return IngestJob(self.workdir, self.source, store=self.store, dask=self.dask)

    def flat_params(self) -> dict[str, str]:
        """The config as ``section.key`` → value text (nested tables joined by dots)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, inner)
            else:
                out[prefix] = json.dumps(value) if not isinstance(value, str) else value

        walk("", self.model_dump(mode="json"))
        return out

    def to_toml(self) -> str:
        """The resolved config as TOML (paths absolute, defaults filled in, unset keys left
        out), loadable with :func:`load_config`."""

        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items() if v is not None}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return str(value) if isinstance(value, Path) else value

        return tomli_w.dumps(clean(self.model_dump(mode="python")))

    def patch_spec(self) -> PatchSpec:
        """``[patches]`` over ``[source] variables``."""
        return PatchSpec.from_settings(self.patches, variables=self.source.variables)


def _format_location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if not parts:
        return "(top level)"
    if len(parts) == 1:
        return f"[{parts[0]}]" if parts[0] in Config.model_fields else parts[0]
    return f"[{parts[0]}] " + ".".join(parts[1:])


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The settings class a field holds (through ``Annotated`` and ``X | None``), if any."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _model_class(typing.get_args(annotation)[0])
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    classes = [c for a in typing.get_args(annotation) if (c := _model_class(a)) is not None]
    return classes[0] if len(classes) == 1 else None


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the table at ``loc[:-1]`` accepts (the sections at the top level); a
    ``[model]`` location names the family (``("model", "scnn_lstm", key)``)."""
    section: type[BaseModel] | None = Config
    for part in map(str, loc[:-1]):
        if section is None:
            return []
        if part in section.model_fields:
            section = _model_class(section.model_fields[part].annotation)
        elif part in MODELS:
            section = MODELS[part].settings
        else:
            return []
    if section is None:
        return []
    return [name for name, field in section.model_fields.items() if not field.exclude]


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """``unknown key``, and the closest known key of that table if one is close."""
    close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1) if loc else []
    return f"unknown key (did you mean `{close[0]}`?)" if close else "unknown key"


def apply_overrides(
    raw: Mapping[str, Any], overrides: Mapping[str, Any], *, origin: str
) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted keys of ``overrides`` set (``{"train.epochs": 2}``,
    ``{"source.synthetic.days": 5}``); tables on the way are created as needed.

    ConfigError naming ``origin`` for a key without a section or through a non-table value.
    """
    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"{origin}: override {dotted!r} must be 'section.key'")
        table = out
        for depth, part in enumerate(parts[:-1], start=1):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(
                    f"{origin}: override {dotted!r}: {'.'.join(parts[:depth])} is a value, "
                    "not a table"
                )
        table[parts[-1]] = value
    return out


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def rel(p: str) -> str:
        return p if "://" in p or Path(p).is_absolute() else os.path.normpath(base / p)

    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    pipeline, source, forecast = (raw.get(k) for k in ("pipeline", "source", "forecast"))
    if isinstance(pipeline, dict) and isinstance(pipeline.get("workdir"), str):
        pipeline["workdir"] = rel(pipeline["workdir"])
    if isinstance(source, dict):
        paths = source.get("paths")
        if isinstance(paths, str):
            source["paths"] = rel(paths)
        elif isinstance(paths, list):
            source["paths"] = [rel(p) if isinstance(p, str) else p for p in paths]
    if isinstance(forecast, dict) and isinstance(forecast.get("store"), str) and forecast["store"]:
        forecast["store"] = rel(forecast["store"])
    return raw


def config_from_dict(
    raw: dict[str, Any],
    *,
    origin: str = "<dict>",
    base: Path | None = None,
    check_paths: bool = False,
) -> Config:
    """Validate a config given as a dict (as parsed from TOML); relative paths join ``base``."""
    if base is not None:
        raw = _resolve_paths(raw, base)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = _unknown_key(err["loc"])
            problems.append(f"{_format_location(err['loc'])}: {msg}")
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None
    if check_paths and config.source.kind_spec.needs_paths and not config.source_files():
        raise ConfigError(f"{origin}: [source] paths: no file matches {config.source.path_globs}")
    return config


def load_config(
    path: str | Path, *, check_paths: bool = False, overrides: dict[str, Any] | None = None
) -> Config:
    """Read and validate a TOML config file.

    ``check_paths`` also requires the source globs to match at least one file (ingest does).
    ``overrides`` are dotted keys (``{"train.epochs": 2}``, ``{"source.synthetic.days": 5}``)
    applied before validation (:func:`apply_overrides`), as the CLI's ``--set`` and the
    flows' parameters do.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    raw = apply_overrides(raw, overrides or {}, origin=str(path))
    config = config_from_dict(
        raw, origin=str(path), base=path.resolve().parent, check_paths=check_paths
    )
    return config.model_copy(update={"path": path.resolve()})

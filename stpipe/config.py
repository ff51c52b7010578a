"""Pipeline configuration: one TOML file per pipeline, validated when it is loaded.

The sections and keys are the contract in ``shared/design.md``; every key is documented on
its field. Relative paths (``workdir``, ``paths``, ``[forecast] store``) are resolved
against the directory of the config file, so a config can be moved with its data.

Errors name the file, the key and the problem::

    ConfigError: runs/era5.toml: [patches] leads: leads must be strictly increasing, got [3, 1]
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import tomllib
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from stpipe.errors import ConfigError

SourceKind = Literal["netcdf", "grib", "taxibj", "synthetic-weather", "synthetic-traffic"]
FILE_KINDS: frozenset[str] = frozenset({"netcdf", "grib", "taxibj"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineSection(_Section):
    name: str = Field(description="Pipeline name; used for the store, run names and locks.")
    workdir: Path = Field(description="Store, mlflow.db, artifacts and forecasts live here.")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"must be letters, digits, '.', '_' or '-', got {v!r}")
        return v


class SyntheticSection(_Section):
    """Options of the built-in generators (``synthetic-*`` source kinds, ``stpipe generate``)."""

    seed: int = 0
    start: date = date(2024, 1, 1)
    days: PositiveInt = 30
    grid: tuple[PositiveInt, PositiveInt] | None = Field(
        default=None, description="(ny, nx); default 64×64 for weather, 32×32 for traffic."
    )


class SourceSection(_Section):
    kind: SourceKind
    paths: str | list[str] | None = Field(
        default=None, description="Glob(s) of input files; required for netcdf, grib, taxibj."
    )
    variables: list[str] = Field(min_length=1, description="Variable names as stored.")
    rename: dict[str, str] = Field(
        default_factory=dict, description="Name in the file → name in the store."
    )
    longitude: Literal["-180..180", "0..360"] = Field(
        default="-180..180", description="Longitude convention of the store (lat/lon grids)."
    )
    on_bad_file: Literal["fail", "skip"] = "fail"
    synthetic: SyntheticSection = Field(default_factory=SyntheticSection)

    @model_validator(mode="after")
    def _paths_for_file_kinds(self) -> SourceSection:
        if self.kind in FILE_KINDS and not self.paths:
            raise ValueError(f"source kind {self.kind!r} needs 'paths' (a glob of input files)")
        if len(set(self.variables)) != len(self.variables):
            raise ValueError(f"variables has duplicates: {self.variables}")
        return self

    @property
    def path_globs(self) -> list[str]:
        if self.paths is None:
            return []
        return [self.paths] if isinstance(self.paths, str) else list(self.paths)


class StoreSection(_Section):
    """Layout of the Zarr store; defaults are chosen from the data (see stpipe.store)."""

    time_chunk: PositiveInt | None = None
    spatial_chunk: tuple[PositiveInt, PositiveInt] | None = None
    compression_level: int = Field(default=3, ge=1, le=22, description="zstd level.")


class PatchesSection(_Section):
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

    @field_validator("leads")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"leads must be strictly increasing, got {v}")
        return v


class SplitSection(_Section):
    train_start: datetime | None = None
    val_start: datetime
    test_start: datetime
    test_end: datetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> SplitSection:
        points = [self.train_start, self.val_start, self.test_start, self.test_end]
        given = [p for p in points if p is not None]
        if any(b <= a for a, b in itertools.pairwise(given)):
            raise ValueError(
                "split dates must increase: train_start < val_start < test_start < test_end, "
                f"got {[str(p) for p in given]}"
            )
        return self


class ModelSection(_Section):
    name: Literal[
        "scnn_lstm",
        "scnn_gru",
        "convlstm",
        "persistence",
        "climatology",
        "persistence_clim_change",
    ] = Field(default="scnn_lstm", description="Learned model, or a baseline (evaluation).")
    hidden: PositiveInt = Field(default=64, description="Width of the latent maps / RNN state.")
    encoder_layers: PositiveInt = Field(default=2, description="Down-sampling conv stages.")
    temporal_kernel: PositiveInt = Field(default=3, description="SCNN kernel along time.")
    rnn_layers: PositiveInt = 1
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    residual: bool = Field(default=True, description="Predict the change over a baseline.")
    baseline: Literal["auto", "persistence", "climatology", "persistence_clim_change"] = Field(
        default="auto",
        description="What a residual model adds its output to (and predicts when untrained): "
        "'auto' is the per-lead least-squares blend of persistence, climatology and "
        "persistence + climatological change fitted on the train split with the climatology "
        "held out (persistence when there is no climatology).",
    )
    climatology_period: Literal["auto", "day", "week"] = Field(
        default="auto",
        description="Climatology slots: hour of day ('day') or time of day × day of week "
        "('week'); 'auto': 'day' on lat/lon grids, 'week' on cell grids (traffic).",
    )
    convlstm_hidden: tuple[PositiveInt, ...] = Field(
        default=(128, 128, 128, 128), min_length=1, description="ConvLSTM hidden size per layer."
    )
    convlstm_filter: PositiveInt = Field(default=5, description="ConvLSTM kernel size (odd).")
    convlstm_patch: PositiveInt = Field(
        default=2, description="ConvLSTM space-to-depth factor (patch size must divide by it)."
    )


class TrainSection(_Section):
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    patience: PositiveInt = Field(default=5, description="Early stopping, in epochs.")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    cuda_graph: bool = Field(
        default=True,
        description="On one GPU without compile or fp16: replay each step as a CUDA graph.",
    )
    num_workers: int = Field(default=0, ge=0)
    max_batches_per_epoch: PositiveInt | None = None
    max_val_batches: PositiveInt | None = Field(
        default=None, description="Cap on validation batches per epoch; default: the whole split."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="Autocast dtype; 'auto': bf16 on GPUs that have it (else fp16), fp32 on CPU.",
    )
    schedule: Literal["cosine", "onecycle", "constant"] = Field(
        default="cosine", description="Per-step learning-rate schedule after the warm-up."
    )
    warmup_frac: float = Field(
        default=0.05, ge=0, lt=1, description="Share of all steps spent warming up the lr."
    )
    calibrate: bool = Field(
        default=True,
        description="After training, blend each lead with its best baseline by least squares "
        "on the validation split (scnn models).",
    )
    lead_weighting: Literal["baseline", "uniform"] = Field(
        default="baseline",
        description="Loss weight per lead: 1/MSE of the best baseline at that lead, or equal.",
    )


class MlflowSection(_Section):
    tracking_uri: str = Field(default="", description="Empty: sqlite in workdir.")
    experiment: str = ""
    model_name: str = ""
    metric: str = Field(
        default="rmse_wmean",
        description="Promotion metric, lower is better: 'rmse_wmean' (latitude-weighted RMSE "
        "on lat/lon grids, RMSE elsewhere) or '<rmse|mae|rmse_lat_weighted|mse_openstl|"
        "mae_openstl>_mean', each the mean over leads on the validation split.",
    )
    retries: PositiveInt = Field(
        default=4,
        description="Attempts to reach a tracking server before a job starts (requests "
        "during a job follow MLflow's own MLFLOW_HTTP_REQUEST_MAX_RETRIES).",
    )
    retry_backoff_s: float = Field(
        default=1.0, ge=0, description="Wait before the 2nd attempt; doubles each time."
    )


class ForecastSection(_Section):
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


class DaskSection(_Section):
    address: str = Field(default="", description="tcp://host:port of a running scheduler.")
    n_workers: int = Field(default=0, ge=0, description="Local cluster size; 0: one per core.")


class Config(_Section):
    pipeline: PipelineSection
    source: SourceSection
    store: StoreSection = Field(default_factory=StoreSection)
    patches: PatchesSection
    split: SplitSection
    model: ModelSection = Field(default_factory=ModelSection)
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
        return self

    @property
    def input_variables(self) -> list[str]:
        return self.patches.input_variables or list(self.source.variables)

    @property
    def target_variables(self) -> list[str]:
        return self.patches.target_variables or self.input_variables

    @property
    def workdir(self) -> Path:
        return self.pipeline.workdir

    @property
    def store_path(self) -> Path:
        return self.workdir / "store.zarr"

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
        """Files matching the source globs, sorted by name (daily files sort by date)."""
        found: set[Path] = set()
        for pattern in self.source.path_globs:
            found.update(Path(p) for p in glob.glob(pattern, recursive=True))
        return sorted(p for p in found if p.is_file())


def _format_location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if not parts:
        return "(top level)"
    if len(parts) == 1:
        return f"[{parts[0]}]" if parts[0] in Config.model_fields else parts[0]
    return f"[{parts[0]}] " + ".".join(parts[1:])


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
                msg = "unknown key"
            problems.append(f"{_format_location(err['loc'])}: {msg}")
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None
    if check_paths and config.source.kind in FILE_KINDS and not config.source_files():
        raise ConfigError(f"{origin}: [source] paths: no file matches {config.source.path_globs}")
    return config


def load_config(
    path: str | Path, *, check_paths: bool = False, overrides: dict[str, Any] | None = None
) -> Config:
    """Read and validate a TOML config file.

    ``check_paths`` also requires the source globs to match at least one file (ingest does).
    ``overrides`` are dotted keys (``{"train.epochs": 2}``) applied before validation, as the
    CLI's ``--set`` and the flows' parameters do.
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
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{path}: override {dotted!r} must be 'section.key'")
        raw.setdefault(section, {})[key] = value
    config = config_from_dict(
        raw, origin=str(path), base=path.resolve().parent, check_paths=check_paths
    )
    return config.model_copy(update={"path": path.resolve()})

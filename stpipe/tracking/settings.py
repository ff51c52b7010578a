"""The ``[mlflow]`` section: where runs and models are tracked and how to reach it."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from stpipe.core.settings import Settings


class MlflowSection(Settings):
    tracking_uri: str = Field(default="", description="Empty: sqlite in workdir.")
    experiment: str = ""
    model_name: str = ""
    metric: str = Field(
        default="rmse_wmean",
        description="Promotion metric, lower is better: 'rmse_wmean' (latitude-weighted RMSE "
        "on lat/lon grids, RMSE elsewhere) or '<rmse|mae|rmse_lat_weighted|mse_openstl|"
        "mae_openstl>_mean', each the mean over leads on the validation split.",
    )
    baseline_tolerance: float = Field(
        default=0.02,
        ge=0,
        description="Promotion refuses a candidate worse than the best baseline (persistence, "
        "climatology, persistence + climatological change) at any lead on the validation "
        "window by more than this fraction of that baseline's error ('inf': never).",
    )
    retries: PositiveInt = Field(
        default=4,
        description="Attempts to reach a tracking server before a job starts, and per "
        "MLflow request during a job (MLflow's own default retries for minutes).",
    )
    retry_backoff_s: float = Field(
        default=1.0, ge=0, description="Wait before the 2nd attempt; doubles each time."
    )

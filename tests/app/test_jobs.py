"""The jobs end to end on a tiny synthetic store with MLflow on SQLite: train → log →
register → promote, forecasts into the store, verification, the version table, and the
errors a user meets (no champion, a champion for another store)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stpipe.app import jobs
from stpipe.app.cli import main
from stpipe.app.config import Config, load_config
from stpipe.app.jobs import data_context, model_card, tracking_for
from stpipe.app.promotion import score_promotion
from stpipe.core.errors import ConfigError, TrackingError
from stpipe.forecast.predict import forecast_grid
from stpipe.forecast.store import open_forecasts
from stpipe.io.ingestion import ingest
from stpipe.io.store import open_store, store_digest
from stpipe.learn import scores
from stpipe.learn.context import build_forecaster, make_split_loader
from stpipe.learn.evaluate import evaluate_model
from stpipe.tracking import registry, runs
from stpipe.tracking.model import load_model, log_model
from stpipe.tracking.registry import Promotion

PIPELINE = """
[pipeline]
name = "tiny"
workdir = "work"

[source]
kind = "synthetic-weather"
variables = {variables}

[source.synthetic]
days = 6
grid = {grid}

[patches]
input_steps = 4
leads = [1, 3]
size = [8, 8]
target_variables = ["t2m"]

[split]
val_start = 2024-01-04
test_start = 2024-01-05

[model]
name = "convlstm"
hidden = [4]

[train]
epochs = 1
members = 1
batch_size = 16
max_batches_per_epoch = 3
device = "cpu"

[mlflow]
model_name = "tiny-t2m"
baseline_tolerance = {baseline_tolerance}
{mlflow}
{extra}
"""


def pipeline(
    root: Path,
    *,
    grid=(20, 24),
    variables=("t2m", "u10"),
    mlflow: str = "",
    extra: str = "",
    baseline_tolerance: float = math.inf,
) -> Config:
    """A tiny synthetic weather pipeline in ``root``, ingested; ``mlflow`` adds keys to
    ``[mlflow]``, ``extra`` more tables. The candidates here are no forecasters (a ConvLSTM
    of one epoch, persistence shifted), so promotion ignores the baselines unless
    ``baseline_tolerance`` is given."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "pipeline.toml"
    path.write_text(
        PIPELINE.format(
            grid=list(grid),
            variables=json.dumps(list(variables)),
            mlflow=mlflow,
            extra=extra,
            baseline_tolerance=baseline_tolerance,
        )
    )
    config = load_config(path)
    ingest(config.ingest_job, progress=False)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, jobs.TrainingOutcome]:
    config = pipeline(tmp_path_factory.mktemp("jobs"))
    return config, jobs.run_training(config, progress=False)


class Shifted(nn.Module):
    """A forecaster plus a constant: a model that is worse by a known amount."""

    def __init__(self, model: nn.Module, offset: float) -> None:
        super().__init__()
        self.model, self.offset = model, offset

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch) + self.offset


def register_baseline(config: Config, *, offset: float = 0.0) -> Promotion:
    """Log persistence (+ ``offset``) as a candidate, score it against the champion on the
    validation window, register it: a version without training."""
    data = data_context(config)
    tracking = tracking_for(config)
    run_id = runs.start_run(tracking, run_name="baseline", tags={})
    example = next(
        iter(
            make_split_loader(
                data,
                split="val",
                batch_size=2,
                shuffle=False,
                drop_last=False,
                max_batches=1,
            )
        )
    )
    model = Shifted(build_forecaster(config.model, data, name="persistence").eval(), offset)
    logged = log_model(tracking, run_id, model, example=example, card=model_card(config, data.ds))
    promotion = score_promotion(tracking, config, data, candidate_uri=logged.uri)
    registry.register(
        tracking, model_id=logged.model_id, run_id=run_id, promotion=promotion, tags={}
    )
    runs.end_run(tracking, run_id, failed=False)
    return promotion


# --- training --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_training_run_logs_config_lineage_epochs_evaluation_model_and_system(trained) -> None:
    config, outcome = trained
    tracking = tracking_for(config)
    run = tracking.client.get_run(outcome.run_id)

    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "convlstm"
    assert run.data.params["patches.leads"] == "[1, 3]"
    config_text = tracking.client.download_artifacts(outcome.run_id, "config.toml")
    assert load_config(config_text).model_dump() == config.model_dump()
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["tiny-store/test", "tiny-store/train", "tiny-store/val"]
    train = inputs["tiny-store/train"]
    assert train.dataset.digest == store_digest(config.store_path)
    tags = {t.key: t.value for t in train.tags}
    assert tags["mlflow.data.context"] == "train"
    assert tags["time_start"].startswith("2024-01-01T00:00")
    assert tags["time_end"].startswith("2024-01-03T23:00")
    assert tags["stpipe.store"] == str(config.store_path)

    history = tracking.client.get_metric_history(outcome.run_id, "train_loss")
    assert [m.step for m in history] == [1]
    per_lead = tracking.client.get_metric_history(outcome.run_id, "test_rmse_model")
    assert sorted((m.step, m.value) for m in per_lead) == list(
        zip((1, 3), scores.per_lead(outcome.test, "rmse")["model"], strict=True)
    )
    assert "test_rmse_persistence" in run.data.metrics
    artifacts = {a.path for a in tracking.client.list_artifacts(outcome.run_id, "plots")}
    assert {"plots/rmse_vs_lead.png", "plots/sample_maps.png"} <= artifacts
    evaluation = json.loads(
        Path(tracking.client.download_artifacts(outcome.run_id, "evaluation/test.json")).read_text()
    )
    assert evaluation["leads"] == [1.0, 3.0] and evaluation["lead_unit"] == "h"
    assert run.data.tags["system.device"] == "cpu"
    assert run.data.tags["system.torch"] == torch.__version__
    assert run.data.metrics["train_samples_per_s"] > 0
    assert run.outputs.model_outputs, "the model is an output of the run"

    assert outcome.promotion.promoted and outcome.promotion.reason == "no champion yet"
    assert run.data.metrics["promotion_candidate_score"] == outcome.promotion.candidate_score
    assert run.data.tags["stpipe.decision"] == "champion"
    assert registry.aliases(tracking) == {"champion": outcome.version}
    version_tags = tracking.client.get_model_version("tiny-t2m", outcome.version).tags
    assert version_tags["stpipe.decision"] == "champion"
    assert version_tags["stpipe.store_digest"] == store_digest(config.store_path)
    assert version_tags["stpipe.data_end"].startswith("2024-01-06T23:00")


@pytest.mark.slow
def test_champion_moves_only_to_a_better_candidate_on_the_same_window(tmp_path: Path) -> None:
    config = pipeline(tmp_path)
    first = register_baseline(config, offset=2.0)
    assert first.promoted, "the first version becomes champion"

    better = register_baseline(config)
    data = data_context(config)
    persistence = build_forecaster(config.model, data, name="persistence").eval()
    expected = registry.promotion_score(
        evaluate_model(persistence, data, split="val", baselines=False), "rmse_wmean"
    )
    assert better.promoted and better.candidate_score == pytest.approx(expected, rel=1e-6)
    assert better.champion_score > better.candidate_score

    tie = register_baseline(config)
    assert tie.alias == "challenger" and tie.reason == "tie with v2, which stays champion"
    assert tie.champion_score == tie.candidate_score

    worse = register_baseline(config, offset=1.0)
    assert worse.alias == "challenger" and worse.reason == "not better than v2"
    assert worse.champion_score == pytest.approx(better.candidate_score, rel=1e-6)
    assert registry.aliases(tracking_for(config)) == {"champion": "2", "challenger": "4"}


# --- forecasts -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_forecast_store_holds_the_champions_stitched_full_grid_forecast(trained) -> None:
    config, first = trained
    outcome = jobs.run_forecast(config)

    store = open_store(config.store_path)
    assert outcome.init_time == store["time"].values[-1]
    forecasts = open_forecasts(config.forecast_store)
    latest = forecasts.sel(init_time=outcome.init_time)
    assert latest["t2m"].dims == ("lead_time", "lat", "lon")
    assert latest["t2m"].shape == (2, 20, 24)
    assert latest["t2m"].attrs["units"] == store["t2m"].attrs["units"]
    assert str(latest["model_version"].values) == first.version
    assert str(latest["run_id"].values) == first.run_id
    assert str(latest["store_digest"].values) == store_digest(config.store_path)
    assert forecasts.attrs["model_name"] == "tiny-t2m"
    assert forecasts.attrs["Conventions"] == "CF-1.10"

    tracking = tracking_for(config)
    champion = load_model(tracking, f"models:/tiny-t2m/{first.version}")
    direct = forecast_grid(
        champion, store, card=champion.card, end=store.sizes["time"] - 1, overlap=(2, 2)
    )
    np.testing.assert_array_equal(latest["t2m"].values, direct["t2m"].values[0])
    assert np.isfinite(latest["t2m"].values).all()

    rerun = jobs.run_forecast(config)
    assert rerun.replaced
    assert (
        open_forecasts(config.forecast_store).sizes["init_time"] == (forecasts.sizes["init_time"])
    )


@pytest.mark.slow
def test_a_past_forecast_is_verified_once_into_its_run(trained) -> None:
    config, first = trained
    init = np.datetime64("2024-01-05T12:00", "ns")
    outcome = jobs.run_forecast(config, init_time="2024-01-05T12:00")

    assert outcome.init_time == init
    verified = [v for v in outcome.verified if v.init_time == init]
    assert len(verified) == 1 and verified[0].run_id == first.run_id
    tracking = tracking_for(config)
    history = tracking.client.get_metric_history(first.run_id, "verify_rmse_t2m_lead1")
    step = int(init.astype("datetime64[s]").astype(np.int64))
    assert [m.value for m in history if m.step == step] == [
        pytest.approx(verified[0].scores["rmse_t2m_lead1"])
    ]
    assert "stpipe.verified.20240105T120000" in tracking.client.get_run(first.run_id).data.tags

    assert all(v.init_time != init for v in jobs.verify_forecasts(config)), "scored once"


@pytest.mark.slow
def test_compare_lists_every_version_with_metrics_per_lead(trained, tmp_path: Path) -> None:
    config, first = trained
    table = jobs.compare_versions(config)

    versions = [row["version"] for row in table.rows]
    assert first.version in versions and versions == sorted(versions, key=int, reverse=True)
    row = next(r for r in table.rows if r["version"] == first.version)
    assert "champion" in row["aliases"]
    assert row["run"] == first.run_id
    assert row["+1h"] == pytest.approx(scores.per_lead(first.test, "rmse_lat_weighted")["model"][0])
    assert row["+3h"] == pytest.approx(scores.per_lead(first.test, "rmse_lat_weighted")["model"][1])
    assert row["data"].startswith("2024-01-01T00:00")
    assert row["decision"] == "champion"

    csv_text = table.to_csv(tmp_path / "versions.csv").read_text().splitlines()
    assert csv_text[0].split(",")[:5] == ["version", "aliases", "registered", "run", "data"]
    assert len(csv_text) == 1 + len(table.rows)
    payload = json.loads(table.to_json(tmp_path / "versions.json").read_text())
    assert payload["metric"] == "rmse_wmean" and len(payload["rows"]) == len(table.rows)
    assert table.to_rich().row_count == len(table.rows)


@pytest.mark.slow
def test_compare_printed_to_a_pipe_keeps_whole_run_ids_and_values(trained, capsys) -> None:
    config, first = trained
    assert main(["-q", "compare", str(config.path)]) == 0
    printed = capsys.readouterr().out
    assert first.run_id in printed
    assert f"{scores.per_lead(first.test, 'rmse_lat_weighted')['model'][0]:.4g}" in printed


@pytest.mark.slow
def test_evaluate_writes_the_champion_and_baselines_per_lead(trained, tmp_path: Path) -> None:
    config, first = trained
    evaluation = jobs.run_evaluation(config, json_path=tmp_path / "eval.json")
    raw = json.loads((tmp_path / "eval.json").read_text())
    assert raw["leads"] == [1.0, 3.0]
    assert {"model", "persistence", "climatology"} <= raw["metrics"]["rmse"].keys()
    assert raw["metrics"]["rmse"]["model"] == pytest.approx(
        scores.per_lead(evaluation, "rmse")["model"]
    )
    assert raw["model_version"] == first.version == evaluation.attrs["model_version"]


@pytest.mark.slow
def test_evaluate_prints_every_baseline_in_words_and_the_margin(trained, capsys) -> None:
    config, first = trained
    assert main(["-q", "evaluate", str(config.path)]) == 0
    printed = capsys.readouterr().out
    assert f"Champion v{first.version} on the test split" in printed
    assert "latitude-weighted RMSE (K) per lead" in printed
    assert "persistence + climatological change" in printed and "best baseline" in printed
    assert "margin = 1 − champion" in printed


# --- errors ----------------------------------------------------------------------------------


def test_a_metric_that_is_not_an_error_is_refused_before_training() -> None:
    registry.check_metric("mae_mean")
    with pytest.raises(ConfigError, match=r"lower is better.*got 'acc_mean'"):
        registry.check_metric("acc_mean")


@pytest.mark.slow
def test_forecasting_without_a_champion_says_what_to_run(trained) -> None:
    config, _ = trained
    nobody = config.model_copy(
        update={"mlflow": config.mlflow.model_copy(update={"model_name": "nobody"})}
    )
    with pytest.raises(TrackingError, match=r"'nobody' has no champion yet; run `stpipe train"):
        jobs.run_forecast(nobody)


@pytest.mark.slow
def test_a_champion_trained_for_another_store_is_refused(trained, tmp_path: Path) -> None:
    config, first = trained
    other = pipeline(
        tmp_path,
        grid=(12, 12),
        variables=("t2m",),
        mlflow=f'tracking_uri = "sqlite:///{config.workdir / "mlflow.db"}"',
    )
    with pytest.raises(TrackingError) as info:
        jobs.run_forecast(other)
    message = str(info.value)
    assert f"champion tiny-t2m v{first.version}" in message
    assert "variables ['t2m', 'u10'] vs ['t2m']" in message
    assert "grid lat×lon 20×24" in message and "vs lat×lon 12×12" in message
    assert not Path(other.forecast_store).exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"patches.size": [12, 12]}, r"patch_shape \[8, 8\] vs \[12, 12\] \(v1 vs config\)"),
        ({"model.name": "scnn_lstm", "model.hidden": 8}, r"model convlstm vs scnn_lstm"),
        ({"model.hidden": [6]}, r"weight \S+ \[\d+, \d+(, \d+)*\] vs \[\d+, \d+(, \d+)*\]"),
        ({"train.init_from": 99}, r"init_from = 99: tiny-t2m has no version 99 \(it has [\d, ]+\)"),
        # v1 trained until 2024-01-04: a validation window from 01-03 holds days it learned
        (
            {"split.val_start": "2024-01-03"},
            r"v1 trained on days up to 2024-01-04T00:00:00, inside this run's validation window "
            r"\[2024-01-03T00:00:00, 2024-01-05T00:00:00\)",
        ),
    ],
)
def test_fine_tuning_refuses_a_version_that_does_not_fit_before_a_run_starts(
    trained, overrides: dict, problem: str
) -> None:
    config, first = trained
    tuned = load_config(config.path, overrides={"train.init_from": "champion"} | overrides)
    tracking = tracking_for(config)
    runs_before = tracking.client.search_runs([tracking.experiment_id])

    with pytest.raises(ConfigError, match=problem) as info:
        jobs.run_training(tuned, progress=False)

    assert str(info.value).startswith("[train] init_from = ")
    assert "\n" not in str(info.value)
    assert len(tracking.client.search_runs([tracking.experiment_id])) == len(runs_before)
    assert str(registry.champion(tracking).version) == first.version


def test_a_forecast_outcome_names_its_init_time_to_the_minute() -> None:
    outcome = jobs.ForecastOutcome(
        init_time=np.datetime64("2024-01-20T23:00:00.000000000"),
        store="/w/forecasts.zarr",
        model_version="3",
        run_id="r",
        replaced=False,
        verified=(),
    )

    assert outcome.summary() == (
        "wrote the forecast of 2024-01-20T23:00 in /w/forecasts.zarr with v3; "
        "verified 0 past forecast(s)"
    )

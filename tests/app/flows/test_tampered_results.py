"""A record planted among the flows' stored results never runs code on the next run.

Prefect reads a result record with the serializer the record itself names, so a record
saying ``pickle`` is unpickled whatever the task was configured with. The payload here
writes a marker file when unpickled.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from prefect.results import ResultRecord, ResultRecordMetadata
from prefect.serializers import PickleSerializer
from prefect.utilities.hashing import hash_objects

from stpipe.app.flows.common import OUTCOMES_DIR, pipeline_config, statistics_task, training_task
from stpipe.app.flows.ingest import ingest_flow
from stpipe.io.store import store_digest

RESULTS_DIR = "prefect-results"


class Payload:
    """Unpickling this writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def hostile_record(key: str, marker: Path) -> bytes:
    """A Prefect result record under ``key`` whose result is a cloudpickled payload."""
    metadata = ResultRecordMetadata(storage_key=key, serializer=PickleSerializer())
    return ResultRecord(metadata=metadata, result=Payload(marker)).serialize()


def tamper_all(directory: Path, marker: Path) -> list[Path]:
    """Replace every file under ``directory`` by a hostile record; the files replaced."""
    files = [p for p in directory.rglob("*") if p.is_file()] if directory.is_dir() else []
    for path in files:
        path.write_bytes(hostile_record(path.name, marker))
    return files


@flow(name="statistics-again")
def statistics_again(config_path: str):
    config = pipeline_config(config_path, None)
    return statistics_task(config, return_state=True)


def test_a_planted_statistics_record_is_not_unpickled(new_pipeline, tmp_path: Path) -> None:
    # given: a store, and a pickle record where the statistics cache key of this store was
    pipeline = new_pipeline(days=5, arrived=4)
    ingest_flow(str(pipeline.config))
    config = pipeline_config(str(pipeline.config), None)
    key = "stats-" + hash_objects(
        store_digest(config.store_path),
        config.input_variables,
        config.split.model_dump(mode="json"),
    )
    results = pipeline.workdir / RESULTS_DIR
    results.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    (results / key).write_bytes(hostile_record(key, marker))

    # when: the statistics task runs, and again after every stored result was replaced
    first = statistics_again(str(pipeline.config))
    tamper_all(results, marker)
    second = statistics_again(str(pipeline.config))

    # then: no payload ran, and both runs got the statistics of this store
    assert not marker.exists(), "the planted record was unpickled"
    assert first.is_completed() and second.is_completed(), (first, second)
    digest = store_digest(config.store_path)
    assert first.result().store_digest == second.result().store_digest == digest


@flow(name="train-retried", retries=2)
def train_retried(config_path: str, marker: str, versions: str):
    """The flows' training task in a flow run that fails twice after it: the first retry
    finds the stored outcome as it was written, the second after every stored result was
    replaced by a hostile record. ``versions`` collects the version each attempt got."""
    config = pipeline_config(config_path, None)
    outcome = training_task(config)
    seen = Path(versions)
    got = [*(seen.read_text().split() if seen.exists() else []), outcome.version]
    seen.write_text(" ".join(got))
    if len(got) == 2:
        for folder in (RESULTS_DIR, OUTCOMES_DIR):
            tamper_all(config.workdir / folder, Path(marker))
    if len(got) < 3:
        raise RuntimeError("fail after training, so that the flow run is retried")
    return outcome


@pytest.mark.slow
def test_a_retried_flow_run_reuses_the_training_outcome_and_never_unpickles_it(
    new_pipeline, tmp_path: Path
) -> None:
    pipeline = new_pipeline(days=6, arrived=6)
    ingest_flow(str(pipeline.config))
    marker, versions = tmp_path / "payload-ran", tmp_path / "versions"

    outcome = train_retried(str(pipeline.config), str(marker), str(versions))

    assert not marker.exists(), "the stored training outcome was unpickled"
    # the first retry reused v1; the tampered record did not read as an outcome: trained again
    assert versions.read_text().split() == ["1", "1", "2"]
    assert outcome.version == "2"
    stored = list((pipeline.workdir / OUTCOMES_DIR).iterdir())
    assert len(stored) == 1 and (stored[0] / "training.json").is_file(), stored

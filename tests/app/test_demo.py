"""``stpipe demo``, on a reduced size, end to end in a fresh process (as a user runs it)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from stpipe.app.config import load_config
from stpipe.app.demo import CONFIG_NAME, run_demo
from stpipe.core.errors import ConfigError

DEMO = """
import json
from stpipe.app.demo import run_demo
from stpipe.learn.scores import lead_hours
s = run_demo({workdir!r}, nights=1, overrides={{"train.epochs": 1, "train.max_batches_per_epoch": 2}})
print("SUMMARY " + json.dumps({{
    "champion": s.champion_version,
    "versions": [n.training.version for n in s.nights],
    "ingested": [len(n.ingest.ingested) for n in s.nights],
    "leads": list(lead_hours(s.last.champion)),
    "per_lead": s.last.per_lead(),
    "forecast_store": s.last.forecast.store,
    "plots": [str(p) for p in s.plots],
}}))
"""


@pytest.mark.slow
def test_demo_replays_nights_and_reports_the_champion_per_lead(tmp_path):
    # given: a fresh process with its own Prefect home (ephemeral API, no server)
    workdir = tmp_path / "demo"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "COLUMNS": "120",
    }
    env.pop("PREFECT_API_URL", None)

    # when: the demo runs its first night and one more
    done = subprocess.run(
        [sys.executable, "-c", DEMO.format(workdir=str(workdir))],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )

    # then: it succeeded and summarised both nights and the champion per lead
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SUMMARY "))
    summary = json.loads(line.removeprefix("SUMMARY "))
    assert summary["ingested"] == [8, 1]
    assert summary["versions"] == ["1", "2"]
    assert summary["champion"] in {"1", "2"}
    assert summary["leads"] == [1, 3, 6, 12]
    for name in ("model", "persistence", "climatology"):
        values = summary["per_lead"][name]
        assert len(values) == 4 and all(math.isfinite(v) and v > 0 for v in values), name
    assert summary["forecast_store"] == str(workdir / "forecasts.zarr")
    assert all(os.path.getsize(p) > 0 for p in summary["plots"])
    # the table, the stores and the commands to open the UIs were printed
    out = done.stdout
    assert f"Champion v{summary['champion']} on the test split" in out, out
    assert f"mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}" in out, out
    assert "prefect server start" in out, out
    # the written config is a valid pipeline config over the arrived feed
    config = load_config(workdir / CONFIG_NAME, check_paths=True)
    assert len(config.source_files()) == 9


def test_demo_refuses_a_workdir_that_holds_something_else(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty and holds no previous demo \(demo\.toml\)"):
        run_demo(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"

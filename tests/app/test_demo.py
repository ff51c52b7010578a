"""``stpipe demo``, on a reduced size, end to end in a fresh process (as a user runs it)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from stpipe.app.config import load_config
from stpipe.app.demo import CONFIG_NAME, run_demo
from stpipe.core.errors import ConfigError

DEMO = """
import json
import sys
from stpipe.app import cli, demo
from stpipe.learn.scores import lead_hours

summaries = []
run_demo = demo.run_demo


def recorded(*args, **kwargs):
    summaries.append(run_demo(*args, **kwargs))
    return summaries[-1]


demo.run_demo = recorded  # the real demo, through the CLI; its summary kept for the checks
code = cli.main(
    ["demo", "--workdir", {workdir!r}, "--nights", "1",
     "--set", "train.epochs=1", "--set", "train.max_batches_per_epoch=2"]
)
s = summaries[-1]
with open({summary!r}, "w") as f:
    json.dump({{
        "champion": s.champion_version,
        "versions": [n.training.version for n in s.nights],
        "ingested": [len(n.ingest.ingested) for n in s.nights],
        "leads": list(lead_hours(s.last.champion)),
        "per_lead": s.last.per_lead(),
        "forecast_store": s.last.forecast.store,
        "plots": [str(p) for p in s.plots],
    }}, f)
sys.exit(code)
"""
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
BASELINES = {
    "persistence": "persistence",
    "climatology": "climatology",
    "persistence_clim_change": "persistence + climatological change",
    "advection": "advected anomaly + climatology",
}


def tool(name: str) -> str:
    """The command the demo prints for a tool of this environment."""
    script = Path(sys.executable).parent / name
    return str(script) if script.is_file() else f"{sys.executable} -m {name}"


@pytest.mark.slow
def test_demo_replays_nights_and_reports_the_champion_per_lead(tmp_path):
    # given: a fresh process, no Prefect server configured (the ephemeral API)
    workdir = tmp_path / "demo"
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        env.pop(key, None)

    # when: `stpipe demo` runs its first night and one more
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            DEMO.format(workdir=str(workdir), summary=str(tmp_path / "summary.json")),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )

    # then: it succeeded and summarised both nights and the champion per lead
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ingested"] == [8, 1]
    assert summary["versions"] == ["1", "2"]
    assert summary["champion"] in {"1", "2"}
    assert summary["leads"] == [1, 3, 6, 12]
    for name in ("model", "persistence", "climatology"):
        values = summary["per_lead"][name]
        assert len(values) == 4 and all(math.isfinite(v) and v > 0 for v in values), name
    assert summary["forecast_store"] == str(workdir / "forecasts.zarr")
    assert all(os.path.getsize(p) > 0 for p in summary["plots"])
    # the output is short, says nothing twice; logs on stderr, tables and summary on stdout
    out, err = done.stdout, done.stderr
    lines = [x for x in (out + err).splitlines() if x.strip()]
    assert len(lines) <= 60, out + err
    assert [x for x, n in Counter(lines).items() if n > 1] == [], out + err
    assert not any(LOG_LINE.match(x) for x in out.splitlines()), out
    assert all(LOG_LINE.match(x) or x.startswith(" ") for x in err.splitlines() if x.strip()), err
    assert "ERROR" not in err and "Traceback" not in err, err
    assert "night 2/2: data through 2024-01-09T23:00" in err, err
    # the champion per lead beside every baseline, and the best baseline at each lead
    assert f"Champion v{summary['champion']} on the test split" in out, out
    table = {}
    for row in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", row.strip("│┃ "))]
        if cells[0] in {"lead (h)", "1", "3", "6", "12"} and len(cells) == 9:  # not the nights
            table[cells[0]] = cells
    champion = f"champion v{summary['champion']}"
    assert table.pop("lead (h)") == [
        "lead (h)",
        champion,
        *BASELINES.values(),
        "best baseline",
        "best value",
        "margin",
    ]
    assert sorted(table, key=float) == ["1", "3", "6", "12"], out
    for i, lead in enumerate(summary["leads"]):
        scores = {b: summary["per_lead"][b][i] for b in BASELINES}
        assert table[f"{lead:g}"][-3] == BASELINES[min(scores, key=scores.get)], table
    # the commands that open the UIs run as printed, on the demo's own Prefect home
    mlflow_ui = f"{tool('mlflow')} ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}"
    assert mlflow_ui in out, out
    assert f"PREFECT_HOME={workdir / '.prefect'} {tool('prefect')} server start" in out, out
    assert (workdir / ".prefect" / "prefect.db").is_file()
    # the written config is a valid pipeline config over the arrived feed
    config = load_config(workdir / CONFIG_NAME, check_paths=True)
    assert len(config.source_files()) == 9


def test_demo_refuses_a_workdir_that_holds_something_else(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty and holds no previous demo \(demo\.toml\)"):
        run_demo(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"

"""deployments/prefect.yaml, as ``stpipe serve`` and ``prefect deploy`` read it, and one
deployment run to completion on a real ``prefect server``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import zoneinfo
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stpipe.app.config import load_config
from stpipe.app.serve import DEFAULT_PREFECT_FILE, build_deployments, read_deployments
from stpipe.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
WEATHER = REPO / "data" / "configs" / "weather.toml"
TRAFFIC = REPO / "data" / "configs" / "traffic.toml"


def test_prefect_yaml_schedules_nightly_and_morning_runs_of_both_example_configs():
    specs = {s.name: s for s in read_deployments()}

    assert sorted(specs) == [
        "traffic-morning-forecast",
        "traffic-nightly",
        "traffic-weekly-retrain",
        "weather-morning-forecast",
        "weather-nightly",
        "weather-weekly-retrain",
    ]
    for name, spec in specs.items():
        kind = name.split("-")[0]
        assert spec.config_path == (WEATHER if kind == "weather" else TRAFFIC), name
        load_config(spec.config_path)  # every deployed config is valid
        (schedule,) = spec.schedules
        zoneinfo.ZoneInfo(schedule["timezone"])  # a real IANA time zone
        flow_file = "forecast" if name.endswith("forecast") else "nightly"
        assert spec.entrypoint == f"flows/{flow_file}.py:{flow_file}_flow", name
        assert (REPO / spec.entrypoint.split(":")[0]).is_file(), name
        assert spec.concurrency_limit == {"limit": 1, "collision_strategy": "ENQUEUE"}, name
    assert specs["weather-nightly"].schedules[0] == {
        "cron": "0 2 * * *",
        "timezone": "Europe/London",
    }
    assert specs["traffic-morning-forecast"].parameters["ingest_first"] is True
    # nightly: fine-tune the champion (the config's init_from); weekly: a full retrain
    for kind in ("weather", "traffic"):
        nightly, weekly = specs[f"{kind}-nightly"], specs[f"{kind}-weekly-retrain"]
        assert load_config(nightly.config_path).train.init_from == "champion"
        assert "overrides" not in nightly.parameters
        assert weekly.parameters["overrides"] == {"train.init_from": "none"}
        retrain = load_config(weekly.config_path, overrides=weekly.parameters["overrides"])
        assert retrain.train.init_from == "none"
        assert weekly.schedules[0]["cron"] == "0 4 * * 0"


def test_serve_builds_the_file_s_deployments_for_the_configs_asked_for():
    deployments = build_deployments(read_deployments(configs=[WEATHER]))

    assert [d.name for d in deployments] == [
        "weather-nightly",
        "weather-weekly-retrain",
        "weather-morning-forecast",
    ]
    nightly = deployments[0]
    assert nightly.entrypoint == "stpipe.app.flows.nightly.nightly_flow"
    assert nightly.parameters == {"config_path": str(WEATHER)}
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/London")
    assert nightly.concurrency_limit == 1


def test_serve_refuses_a_config_that_no_deployment_runs(tmp_path):
    other = tmp_path / "mine.toml"
    with pytest.raises(ConfigError, match=r"no deployment runs .*mine\.toml; deployed configs are"):
        read_deployments(configs=[other])


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("- name: a\n  entrypoint: flows/nightly.py:nightly_flow\n", "parameters.config_path"),
        (
            "- name: a\n  entrypoint: nightly_flow\n  parameters: {config_path: x.toml}\n",
            "entrypoint must be",
        ),
        (
            "- name: a\n  entrypoint: flows/nightly.py:nightly_flow\n  parameters: {config_path: x.toml}\n"
            "  schedules: [{cron: '0 2 * * *', timezone: UTC, every: day}]\n",
            r"unknown schedule keys \['every'\]",
        ),
    ],
)
def test_a_malformed_deployment_is_an_error_naming_it(tmp_path, entry, problem):
    path = tmp_path / "deployments" / "prefect.yaml"
    path.parent.mkdir()
    path.write_text("deployments:\n" + entry)
    with pytest.raises(ConfigError, match=rf"prefect\.yaml: .*{problem}"):
        read_deployments(path)


EVERY_SCHEDULE_KEY = """\
deployments:
  - name: hourly
    entrypoint: flows/forecast.py:forecast_flow
    parameters: {config_path: data/configs/weather.toml}
    concurrency_limit: 2
    schedules:
      - interval: 3600
        anchor_date: "2024-01-01T00:30:00+00:00"
        timezone: UTC
        parameters: {ingest_first: false}
        slug: hourly
        replaces: hourly-v1
        active: false
      - cron: "0 6 * * 1-5"
        day_or: false
        timezone: Asia/Shanghai
      - rrule: "FREQ=DAILY;BYHOUR=7"
        timezone: Europe/London
"""


def _prefect_yaml(root: Path, text: str) -> Path:
    """``root/deployments/prefect.yaml``; ``root`` has no ``flows/`` folder, as a wheel."""
    path = root / "deployments" / "prefect.yaml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def test_serve_takes_every_schedule_key_prefect_deploy_takes(tmp_path):
    (spec,) = read_deployments(_prefect_yaml(tmp_path, EVERY_SCHEDULE_KEY))
    assert spec.config_path == tmp_path / "data" / "configs" / "weather.toml"

    (deployment,) = build_deployments([spec])

    # flows/forecast.py is not there: the entrypoint is the package's flow
    assert deployment.entrypoint == "stpipe.app.flows.forecast.forecast_flow"
    assert deployment.concurrency_limit == 2
    hourly, weekdays, daily = deployment.schedules
    assert hourly.schedule.interval == timedelta(hours=1)
    assert hourly.schedule.anchor_date == datetime(2024, 1, 1, 0, 30, tzinfo=UTC)
    assert (hourly.parameters, hourly.slug, hourly.replaces, hourly.active) == (
        {"ingest_first": False},
        "hourly",
        "hourly-v1",
        False,
    )
    assert (weekdays.schedule.cron, weekdays.schedule.day_or) == ("0 6 * * 1-5", False)
    assert weekdays.schedule.timezone == "Asia/Shanghai"
    assert daily.schedule.rrule.splitlines()[-1] == "FREQ=DAILY;BYHOUR=7"  # after a DTSTART
    assert daily.schedule.timezone == "Europe/London"


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        (
            "{cron: '0 2 * * *', interval: 3600}",
            r"deployment 'a': schedules\.0: .*Exactly one of 'cron', 'interval', or 'rrule'",
        ),
        ("{cron: '0 2 * * *', timezone: Mars/Olympus}", r"deployment 'a': invalid schedule: "),
        ("{cron: 'at two'}", r"deployment 'a': invalid schedule: .*at two"),
    ],
)
def test_a_schedule_prefect_refuses_is_an_error_naming_the_deployment(tmp_path, schedule, problem):
    path = _prefect_yaml(
        tmp_path,
        "deployments:\n- name: a\n  entrypoint: flows/nightly.py:nightly_flow\n"
        f"  parameters: {{config_path: x.toml}}\n  schedules: [{schedule}]\n",
    )
    with pytest.raises(ConfigError, match=rf"prefect\.yaml: {problem}"):
        read_deployments(path)


def test_a_missing_deployments_file_or_flow_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read deployments file"):
        read_deployments(tmp_path / "absent.yaml")
    path = _prefect_yaml(
        tmp_path,
        "deployments:\n- name: a\n  entrypoint: flows/nope.py:nope_flow\n"
        "  parameters: {config_path: x.toml}\n",
    )
    with pytest.raises(ConfigError, match=r"deployment 'a': entrypoint 'flows/nope\.py:nope_flow'"):
        build_deployments(read_deployments(path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout_s} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.integration
@pytest.mark.slow
def test_a_served_deployment_runs_to_completion_on_a_prefect_server(
    tmp_path, tiny_pipeline, first_night
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": url,
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    serve = None
    try:
        _wait_healthy(url, server, timeout_s=180)
        # production path: a process work pool and `prefect deploy` of the whole file
        for cmd in (
            ["work-pool", "create", "stpipe", "--type", "process"],
            ["--no-prompt", "deploy", "--prefect-file", str(DEFAULT_PREFECT_FILE), "--all"],
        ):
            done = subprocess.run(
                [prefect, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stdout + done.stderr
        with temporary_settings({PREFECT_API_URL: url}):
            with get_client(sync_client=True) as client:
                deployed = {d.name: d for d in client.read_deployments()}
            assert sorted(deployed) == sorted(s.name for s in read_deployments()), sorted(deployed)
            nightly = deployed["weather-nightly"]
            assert nightly.work_pool_name == "stpipe"
            assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [
                ("0 2 * * *", "Europe/London")
            ]

            # one machine: `stpipe serve` takes over the weather deployments and runs them
            serve = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from stpipe.app.serve import serve_deployments; serve_deployments([{str(WEATHER)!r}])",
                ],
                env=env,
                stdout=(tmp_path / "serve.log").open("w"),
                stderr=subprocess.STDOUT,
            )
            run = run_deployment(
                "forecast/weather-morning-forecast",
                parameters={"config_path": str(tiny_pipeline.config)},
                timeout=300,
            )
        assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-3000:])
        assert run.parameters["ingest_first"] is True  # the deployment's own default
    finally:
        for proc in (serve, server):
            if proc is not None:
                _stop(proc)
        log.close()

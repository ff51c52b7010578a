"""Serve the deployments of ``deployments/prefect.yaml`` from one process (``stpipe serve``).

``prefect.yaml`` is the one place where the schedules live. In production ``prefect deploy
--prefect-file deployments/prefect.yaml --all`` registers its deployments with a work pool
and a worker runs them; on a single machine :func:`serve_deployments` reads the same file
and serves the same deployments (names, flows, parameters, cron schedules, time zones,
concurrency limits) with ``prefect.serve``, no work pool or worker needed.

Paths in the file (entrypoints, ``config_path``) are relative to the repository root, the
directory above the one holding ``prefect.yaml``, as ``prefect deploy`` run from the root
reads them. Prefect is imported lazily, so ``import stpipe.app.serve`` works without it.
"""

from __future__ import annotations

import datetime
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stpipe.core.errors import ConfigError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

DEFAULT_PREFECT_FILE = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"
_SCHEDULE_KEYS = frozenset({"cron", "interval", "rrule", "timezone", "day_or", "active", "slug"})


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of ``deployments:`` in prefect.yaml, with ``config_path`` made absolute."""

    name: str
    entrypoint: str  # "flows/nightly.py:nightly_flow"
    parameters: dict[str, Any]
    schedules: tuple[dict[str, Any], ...]
    description: str = ""
    tags: tuple[str, ...] = ()
    concurrency_limit: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return Path(self.parameters["config_path"])


def read_deployments(
    prefect_file: str | Path = DEFAULT_PREFECT_FILE, *, configs: Sequence[str | Path] = ()
) -> list[DeploymentSpec]:
    """The deployments of ``prefect_file``; with ``configs``, only those that run one of them.

    ConfigError (naming the file and the deployment) if the file is unreadable, an entry
    lacks ``name``/``entrypoint``/``parameters.config_path`` or has a malformed schedule,
    or a given config is not the ``config_path`` of any deployment.
    """
    import yaml

    prefect_file = Path(prefect_file)
    try:
        raw = yaml.safe_load(prefect_file.read_text())
    except OSError as exc:
        raise ConfigError(f"{prefect_file}: cannot read deployments file: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{prefect_file}: not valid YAML: {exc}") from None
    entries = raw.get("deployments") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{prefect_file}: expected a non-empty 'deployments' list")
    root = prefect_file.resolve().parent.parent
    specs = [_spec(entry, origin=str(prefect_file), root=root) for entry in entries]
    if not configs:
        return specs
    wanted = {Path(c).resolve() for c in configs}
    deployed = {spec.config_path for spec in specs}
    if missing := sorted(str(c) for c in wanted - deployed):
        raise ConfigError(
            f"{prefect_file}: no deployment runs {', '.join(missing)}; deployed configs are "
            f"{sorted(str(p) for p in deployed)} (add a deployment for it to the file)"
        )
    return [spec for spec in specs if spec.config_path in wanted]


def build_deployments(specs: Sequence[DeploymentSpec]) -> list[RunnerDeployment]:
    """Prefect runner deployments for ``specs`` (flows imported by module path)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Schedule

    deployments = []
    for spec in specs:
        limit = spec.concurrency_limit
        deployments.append(
            _load_flow(spec.entrypoint).to_deployment(
                name=spec.name,
                schedules=[Schedule(**s) for s in spec.schedules],
                parameters=spec.parameters,
                description=spec.description or None,
                tags=list(spec.tags),
                concurrency_limit=ConcurrencyLimitConfig(**limit) if limit else None,
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def serve_deployments(
    configs: Sequence[str | Path] = (),
    *,
    prefect_file: str | Path = DEFAULT_PREFECT_FILE,
    limit: int | None = None,
) -> None:
    """Serve the deployments of ``prefect_file`` (those of ``configs`` if given) until killed.

    The runs execute in subprocesses of this process, which inherit the environment that the
    file gives the work pool's jobs (``job_variables.env``), as a worker's runs would.
    ``limit`` caps the runs executing at once.
    """
    from prefect import serve

    specs = read_deployments(prefect_file, configs=configs)
    for spec in specs:
        for key, value in spec.env.items():
            os.environ.setdefault(key, value)
    serve(*build_deployments(specs), limit=limit)


def _spec(entry: Any, *, origin: str, root: Path) -> DeploymentSpec:
    name = entry.get("name") if isinstance(entry, dict) else None
    where = f"{origin}: deployment {name!r}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{origin}: every deployment needs a 'name', got {entry!r}")
    entrypoint = entry.get("entrypoint")
    if not isinstance(entrypoint, str) or ".py:" not in entrypoint:
        raise ConfigError(f"{where}: entrypoint must be 'path/to/file.py:flow', got {entrypoint!r}")
    parameters = dict(entry.get("parameters") or {})
    if not isinstance(parameters.get("config_path"), str):
        raise ConfigError(f"{where}: parameters.config_path (a config file) is required")
    parameters["config_path"] = str((root / parameters["config_path"]).resolve())
    schedules = tuple(_schedule(s, where=where) for s in entry.get("schedules") or ())
    work_pool = entry.get("work_pool") or {}
    env = (work_pool.get("job_variables") or {}).get("env") or {}
    return DeploymentSpec(
        name=name,
        entrypoint=entrypoint,
        parameters=parameters,
        schedules=schedules,
        description=entry.get("description") or "",
        tags=tuple(entry.get("tags") or ()),
        concurrency_limit=entry.get("concurrency_limit"),
        env={str(k): str(v) for k, v in env.items()},
    )


def _schedule(raw: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw.keys() & {"cron", "interval", "rrule"}:
        raise ConfigError(f"{where}: a schedule needs cron, interval or rrule, got {raw!r}")
    if unknown := sorted(set(raw) - _SCHEDULE_KEYS):
        raise ConfigError(f"{where}: unknown schedule keys {unknown} in {raw!r}")
    schedule = dict(raw)
    if isinstance(schedule.get("interval"), int | float):
        schedule["interval"] = datetime.timedelta(seconds=schedule["interval"])
    return schedule


def _load_flow(entrypoint: str) -> Any:
    path, _, attr = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, attr)

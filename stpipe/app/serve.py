"""Serve the deployments of ``deployments/prefect.yaml`` from one process (``stpipe serve``).

``prefect.yaml`` is the one place where the schedules live. In production ``prefect deploy
--prefect-file deployments/prefect.yaml --all`` registers its deployments with a work pool
and a worker runs them; on a single machine :func:`serve_deployments` reads the same file
and serves the same deployments (names, flows, parameters, schedules, concurrency limits)
with ``prefect.serve``, no work pool or worker needed.

The file is read as ``prefect deploy`` reads it: validated by Prefect's own prefect.yaml
schema, each schedule turned into Prefect's schedule by Prefect's own function, so every
schedule key Prefect accepts (``cron``/``interval``/``rrule``, ``timezone``, ``anchor_date``,
``day_or``, ``active``, ``parameters``, ``slug``, ``replaces``) means the same here. Both
live in Prefect's ``prefect.cli.deploy`` package (there, with ``replaces``, since 3.6.17).

Paths in the file (entrypoints, ``config_path``) are relative to the directory above the
one holding ``prefect.yaml``: the repository root, as ``prefect deploy`` run from the root
reads them, or the copy of that layout that stpipe ships (:mod:`stpipe.app.resources`, the
default file). An entrypoint ``flows/<name>.py:<flow>`` (the repository's entrypoint files,
which only re-export the package's flows; a wheel has no ``flows/`` folder) is served from
``stpipe.app.flows.<name>``. Prefect is imported lazily, so ``import stpipe.app.serve``
works without it.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stpipe.app.resources import PREFECT_FILE
from stpipe.core.errors import ConfigError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.deployments.runner import RunnerDeployment
    from pydantic import ValidationError

DEFAULT_PREFECT_FILE = PREFECT_FILE
_FLOW_FILE = re.compile(r"flows/(?P<module>\w+)\.py")
_FIELD = re.compile(r"[a-z_]\w*")  # a field name in a validation error's location


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of ``deployments:`` in prefect.yaml, with ``config_path`` made absolute."""

    name: str
    entrypoint: str  # "flows/nightly.py:nightly_flow"
    parameters: dict[str, Any]
    schedules: tuple[dict[str, Any], ...]  # as in the file: {"cron": ..., "timezone": ...}
    description: str = ""
    tags: tuple[str, ...] = ()
    concurrency_limit: int | dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return Path(self.parameters["config_path"])


def read_deployments(
    prefect_file: str | Path = DEFAULT_PREFECT_FILE, *, configs: Sequence[str | Path] = ()
) -> list[DeploymentSpec]:
    """The deployments of ``prefect_file``; with ``configs``, only those that run one of them.

    ConfigError (naming the file, and the deployment where there is one) if the file is
    unreadable, fails Prefect's validation of prefect.yaml (an unknown schedule key, two
    schedule kinds in one schedule, a bad time zone, ...), an entry lacks
    ``name``/``entrypoint``/``parameters.config_path``, or a given config is not the
    ``config_path`` of any deployment.
    """
    prefect_file = Path(prefect_file)
    entries = _validated_entries(prefect_file)
    if not entries:
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

    deployments = []
    for spec in specs:
        where = f"deployment {spec.name!r}"
        limit = spec.concurrency_limit
        deployments.append(
            _load_flow(spec.entrypoint, where=where).to_deployment(
                name=spec.name,
                schedules=_prefect_schedules(spec.schedules, where=where),
                parameters=spec.parameters,
                description=spec.description or None,
                tags=list(spec.tags),
                concurrency_limit=ConcurrencyLimitConfig(**limit)
                if isinstance(limit, dict)
                else limit,
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


def _validated_entries(prefect_file: Path) -> list[dict[str, Any]]:
    """The file's deployments as ``prefect deploy`` sees them: validated by Prefect's schema
    of prefect.yaml, keys the file leaves out left out."""
    import yaml
    from prefect.cli.deploy._models import PrefectYamlModel  # prefect.yaml's own schema
    from pydantic import ValidationError

    try:
        raw = yaml.safe_load(prefect_file.read_text())
    except OSError as exc:
        raise ConfigError(f"{prefect_file}: cannot read deployments file: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{prefect_file}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefect_file}: expected a mapping with a 'deployments' list")
    try:
        model = PrefectYamlModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{prefect_file}: {_problem(exc, raw)}") from None
    return [d.model_dump(exclude_unset=True, mode="json") for d in model.deployments]


def _problem(exc: ValidationError, raw: dict[str, Any]) -> str:
    """Prefect's validation errors as one line: the deployment, the field, what is wrong."""
    errors = exc.errors()
    # A schedule is validated against a union of shapes; the one prefect.yaml documents (and
    # `prefect deploy` reads) is RawScheduleConfig: report its errors only.
    errors = [e for e in errors if any("RawScheduleConfig" in str(p) for p in e["loc"])] or errors
    loc = errors[0]["loc"]
    path = [p for p in loc if isinstance(p, int) or _FIELD.fullmatch(str(p))]
    prefix = ""
    if path[:1] == ["deployments"] and len(path) > 1:
        entry = (raw.get("deployments") or [])[path[1]]
        name = entry.get("name") if isinstance(entry, dict) else None
        prefix = f"deployment {name or f'#{path[1]}'!r}: "
        path = path[2:]
    if path[:1] == ["schedules"] and len(path) > 1:
        same = [e for e in errors if e["loc"][:5] == loc[:5]]
        if unknown := sorted(str(e["loc"][-1]) for e in same if e["type"] == "extra_forbidden"):
            schedule = raw["deployments"][loc[1]]["schedules"][path[1]]
            return f"{prefix}unknown schedule keys {unknown} in {schedule!r}"
    # the field (and the schedule's index); deeper parts name union members, not fields
    field = ".".join(map(str, path[:2] if path[:1] == ["schedules"] else path[:1]))
    return f"{prefix}{field}: {errors[0]['msg']}" if field else f"{prefix}{errors[0]['msg']}"


def _spec(entry: dict[str, Any], *, origin: str, root: Path) -> DeploymentSpec:
    name = entry.get("name")
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
    schedules = tuple(entry.get("schedules") or ())
    _prefect_schedules(schedules, where=where)  # a bad cron or time zone fails here, not later
    env = (entry.get("work_pool") or {}).get("job_variables", {}).get("env") or {}
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


def _prefect_schedules(
    schedules: Sequence[dict[str, Any]], *, where: str
) -> list[DeploymentScheduleCreate]:
    """The file's schedules as Prefect's, made by the function ``prefect deploy`` uses."""
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from pydantic import ValidationError

    try:
        return [
            DeploymentScheduleCreate(**_schedule_config_to_deployment_schedule(schedule))
            for schedule in schedules
        ]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: invalid schedule: {problems}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid schedule: {exc}") from None


def _load_flow(entrypoint: str, *, where: str) -> Flow:
    path, _, attr = entrypoint.partition(":")
    # The repository's flows/<name>.py only re-export stpipe.app.flows.<name>, and a wheel has
    # no flows/ folder: serve the package's module, which imports from any directory.
    match = _FLOW_FILE.fullmatch(path)
    module = f"stpipe.app.flows.{match['module']}" if match else path[:-3].replace("/", ".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: entrypoint {entrypoint!r}: {exc}") from None

"""The package's layers import downward only, with no cycle, and modules stay small.

Layers, lowest first: ``core`` < ``models`` < ``io`` < ``learn`` < ``forecast`` <
``tracking`` < ``app``. A module may import its own layer and the ones below it; only the
application layer reads the config file or knows that Prefect exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stpipe"
LAYERS = ("core", "models", "io", "learn", "forecast", "tracking", "app")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every stpipe import in ``path``, at any depth (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from stpipe.tracking import registry` imports the module stpipe.tracking.registry
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m == "stpipe" or m.startswith("stpipe.")]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer_or_is_a_top_level_helper() -> None:
    loose = [
        _name(p)
        for p in _modules()
        if _layer(_name(p)) is None and _name(p) not in {"stpipe", "stpipe.__main__"}
    ]
    assert loose == ["stpipe.testing"], f"modules outside the layers: {loose}"


def test_imports_go_downward_only() -> None:
    upward = []
    for path in _modules():
        me = _layer(_name(path))
        if me is None:
            continue
        for line, module in _imports(path):
            other = _layer(module)
            if other is None and module != "stpipe.testing":
                other = -1
            if other is not None and other > me:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
            if module.startswith(("prefect", "stpipe.app")) and me < LAYERS.index("app"):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules() -> None:
    known = {_name(p): p for p in _modules()}
    graph = {
        name: {m for _, m in _imports(path) if m in known and m != name}
        for name, path in known.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    cycles = [c for s in sorted(graph) if s not in state and (c := visit(s, []))]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


def test_only_the_app_layer_reads_the_config_file_or_prefect() -> None:
    readers = sorted(
        _name(p)
        for p in _modules()
        if any(m.startswith(("stpipe.app.config", "prefect")) for _, m in _imports(p))
        or "import prefect" in p.read_text()
        or "from prefect" in p.read_text()
    )
    assert readers and all(r.startswith("stpipe.app") for r in readers), readers


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_fit_a_few_screens(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: over {MAX_MODULE_LINES} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"

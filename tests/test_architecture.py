"""The code's shape, checked: small files, no import circles, backends asked for capabilities."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fewtune"
MAX_LINES = 400
BACKEND_CLASSES = {"HFBackend", "OpenAICompatBackend", "FakeBackend", "GenerateAndParse"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """fewtune modules imported when ``path`` is imported (module level, outside TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in modules}


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_file_is_past_the_line_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines: split it"


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {name: _top_level_imports(path, modules) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            loop = [*trail[trail.index(name) :], name]
            raise AssertionError("import circle: " + " -> ".join(loop))
        state[name] = "open"
        for dependency in sorted(graph[name]):
            visit(dependency, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_no_isinstance_on_a_backend_class_outside_backends() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if "backends" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                classes = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if classes & BACKEND_CLASSES:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, f"ask backend.capabilities instead of isinstance: {offenders}"

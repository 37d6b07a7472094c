"""The house keeps its floors: a room imports only rooms below it (or beside it, above floor 4),
lazy and type-checking imports included, and no module imports itself back through others.

docs/architecture.md draws the same table; when this test fails, fix the import, not the table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "poolcast"

# room -> the rooms it may import (besides itself)
_BASE = {"poolcast", "spec", "log"}
ALLOWED: dict[str, set[str]] = {
    "poolcast": set(),  # the package root: __version__ only
    "spec": set(),
    "log": set(),
    "settings": _BASE,
    "store": _BASE | {"settings"},
    "engines": _BASE | {"settings", "store"},
    "model": _BASE | {"settings"},
    "stages": _BASE | {"settings", "store", "engines", "model"},
}
_FLOOR_5 = _BASE | {"settings", "store", "engines", "model", "stages"}
for room in ("runs", "evaluation", "ops"):
    ALLOWED[room] = _FLOOR_5 | {"runs", "evaluation", "ops"}
for room in ("cli", "jobs", "deploy"):
    ALLOWED[room] = set(ALLOWED) | {"cli", "jobs", "deploy"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "poolcast"


def _imports(path: Path) -> set[str]:
    """Every poolcast module ``path`` imports, wherever the import statement sits."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "poolcast"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _module_name(path)
                if path.name != "__init__.py":
                    package = package.rpartition(".")[0]
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "poolcast":
                continue
            for alias in node.names:  # `from poolcast.x import y` may import module x.y
                sub = f"{base}.{alias.name}"
                found.add(sub if _known(sub) else base)
    return found


def _known(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_room_is_declared() -> None:
    rooms = {_room(m) for m in _graph()}
    assert rooms <= set(ALLOWED), f"rooms missing from ALLOWED: {sorted(rooms - set(ALLOWED))}"


def test_no_room_imports_a_room_above_it() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _room(target) != _room(module) and _room(target) not in ALLOWED[_room(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("limit", [600])
def test_no_module_over_the_size_limit(limit: int) -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > limit
    }
    assert not long, f"modules over {limit} lines: {long}"


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The rule itself: a store module that imports a stage is reported."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from poolcast.stages import metrics_stage\n")
    targets = _imports(bad)
    assert "poolcast.stages" in targets
    assert "stages" not in ALLOWED["store"]

"""The architecture the folder tree shows, held by the imports themselves (read statically, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("etl", "workers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports anywhere in it (``from a import b`` counts ``a.b`` when that
    is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_etl_never_imports_workers() -> None:
    offenders = {name: sorted(i for i in deps if i.startswith("workers")) for name, deps in graph().items()
                 if name.startswith("etl")}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_import_circle_between_modules() -> None:
    edges = graph()
    # A package's __init__ is imported on the way to its modules; a circle through it alone is not a design circle.
    edges = {name: {d for d in deps if not ROOT.joinpath(*d.split("."), "__init__.py").exists()}
             for name, deps in edges.items()}
    circles = sorted(name for name in edges if name in reachable(edges, name))
    assert not circles, f"modules that import themselves through others: {circles}"


def test_the_bridge_process_does_not_load_the_actors() -> None:
    loaded = reachable(graph(), "workers.bridge")
    assert "etl.pipeline.handoff" in loaded
    assert not loaded & {"etl.actors", "etl.app", "etl.sinks.registry"}, "the bridge only enqueues"


def test_the_actors_module_stays_where_dramatiq_loads_it() -> None:
    assert (ROOT / "etl" / "actors.py").is_file()  # `dramatiq etl.actors` is what users run

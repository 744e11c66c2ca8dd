"""What the package declares, held to what it needs: ``pyproject.toml``'s dependency ranges, ``requirements.txt``'s
exact lock of them and of everything they pull in, and the version ``etl --version`` reads back. Read from the files
and the installed packages' metadata; ``tests/integration/test_package.py`` installs the wheel for real."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from etl import version
from etl.cli import main

ROOT = Path(__file__).resolve().parents[2]


def project() -> dict[str, Any]:
    project_table: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project_table


def declared() -> list[Requirement]:
    return [Requirement(text) for text in project().get("dependencies", [])]


def locked() -> dict[NormalizedName, Requirement]:
    """requirements.txt's lines by package name."""
    lines = (ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines())
    return {canonicalize_name(req.name): req for req in map(Requirement, filter(None, lines))}


def pinned_version(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"requirements.txt pins exactly: {req}"
    return spec.version


def needed(roots: Iterable[Requirement]) -> set[NormalizedName]:
    """Every distribution ``roots`` need on this Python, themselves included, from the installed packages' metadata
    (their requirements, with the extras asked for and the environment markers evaluated)."""
    seen: set[NormalizedName] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        if canonicalize_name(req.name) in seen:
            continue
        seen.add(canonicalize_name(req.name))
        extras = req.extras or {""}
        for text in metadata.requires(req.name) or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(dep)
    return seen


def test_every_declared_dependency_is_a_range_from_its_locked_version() -> None:
    pins = locked()
    assert declared(), "pyproject.toml declares the runtime dependencies"
    for req in declared():
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is declared in pyproject.toml but not locked in requirements.txt"
        lowest = {spec.version for spec in req.specifier if spec.operator == ">="}
        assert lowest == {pinned_version(pin)}, f"{req}: its lower bound is the locked {pin}, moved together"
        assert any(spec.operator == "<" for spec in req.specifier), f"{req}: a range, up to a next major version"


def test_the_lock_holds_exactly_what_the_declared_dependencies_need() -> None:
    # Lines whose marker is false here (a Python older than this one) are checked by the installs that need them.
    here = {name: req for name, req in locked().items() if req.marker is None or req.marker.evaluate()}
    assert needed(declared()) == set(here), "requirements.txt: no dependency unpinned, nothing dev-only"
    installed = {name: metadata.version(name) for name in here}
    assert installed == {name: pinned_version(req) for name, req in here.items()}, "bin/setup installs the lock"


def test_the_version_is_read_from_the_installed_metadata_of_this_project() -> None:
    assert version.DISTRIBUTION == project()["name"]
    result = CliRunner().invoke(main, ["--version"])
    assert (result.exit_code, result.output) == (0, f"etl, version {project()['version']}\n")


def test_the_version_of_a_tree_never_installed_says_so() -> None:
    assert version.installed_version("aegisflux-etl-never-installed") == version.NOT_INSTALLED

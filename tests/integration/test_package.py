"""The package as a user gets it: a wheel built from the sources, installed into a fresh venv with the dependencies
it declares (resolved by pip from the package registry, as ``pip install .`` would), and the ``etl`` it installs
run there, away from this checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from etl.cli import main
from etl.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# One build and one install, from the registry (pip's cache makes a second run faster, not a first one).
INSTALL_TIMEOUT_S = 600.0
COMMAND_TIMEOUT_S = 60.0
pytestmark = pytest.mark.timeout(2 * INSTALL_TIMEOUT_S + COMMAND_TIMEOUT_S)

# Imports every module the wheel installs, one by one, and says where the package was imported from.
IMPORT_ALL = """
import importlib, pkgutil, sys
import etl
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    for module in pkgutil.walk_packages(package.__path__, top + "."):
        importlib.import_module(module.name)
print(etl.__file__)
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    home: Path  # the commands' working directory, and HOME: nothing of this checkout in reach


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def packages() -> list[str]:
    """The top-level packages pyproject.toml ships (``etl``, ``workers``)."""
    return [p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]


def run(argv: list[str | Path], env: Mapping[str, str], cwd: Path, timeout_s: float) -> str:
    done = subprocess.run([str(a) for a in argv], env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's shell without this checkout's PYTHONPATH or virtualenv."""
    return {"PATH": os.defpath, "HOME": str(home), "LANG": "C.UTF-8", **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("package")
    source, home = work / "source", work / "home"
    home.mkdir()
    # Built from a copy of what the image copies (the Dockerfile): a build leaves build/ and *.egg-info beside its
    # sources, and this checkout stays as it was.
    source.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", source / "pyproject.toml")
    for name in packages():
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", work / "dist", source],
        pip_env, work, INSTALL_TIMEOUT_S)
    (wheel,) = (work / "dist").glob("*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", venv], pip_env, work, COMMAND_TIMEOUT_S)
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel], pip_env, work, INSTALL_TIMEOUT_S)
    return Installed(wheel=wheel, venv=venv, home=home)


def etl(installed: Installed, *args: str, **env: str) -> str:
    return run([installed.venv / "bin" / "etl", *args], user_env(installed.home, **env), installed.home,
               COMMAND_TIMEOUT_S)


def test_the_wheel_holds_every_module_and_file_of_the_packages(installed: Installed) -> None:
    shipped = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in packages():
        sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / name).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
        assert sources <= shipped, f"not in the wheel: {sorted(sources - shipped)}"


def test_the_declared_dependencies_are_all_the_code_imports(installed: Installed) -> None:
    python = installed.venv / "bin" / "python"
    where = run([python, "-c", IMPORT_ALL, *packages()], user_env(installed.home), installed.home, COMMAND_TIMEOUT_S)
    assert Path(where.strip()).is_relative_to(installed.venv), "imported from the venv, not from this checkout"
    run([python, "-m", "pip", "check"], user_env(installed.home), installed.home, COMMAND_TIMEOUT_S)


def test_etl_help_lists_every_command(installed: Installed) -> None:
    shown = etl(installed, "--help")
    assert main.commands and all(f"  {name} " in shown for name in main.commands), shown


def test_etl_version_is_the_pyproject_version(installed: Installed) -> None:
    assert etl(installed, "--version") == f"etl, version {pyproject()['project']['version']}\n"


def test_etl_config_prints_the_settings_with_secrets_redacted(installed: Installed) -> None:
    env = {"PG_PASSWORD": "hunter2", "MAX_BATCH_SIZE": "7"}
    shown = etl(installed, "config", **env)
    assert json.loads(shown) == json.loads(json.dumps(Settings.from_env(env).redacted()))
    assert "hunter2" not in shown

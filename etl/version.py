"""The package's version. It is declared once, in ``pyproject.toml``; an installed package reads it back from its
distribution's metadata, so nothing here repeats it."""

from __future__ import annotations

from importlib import metadata

# pyproject.toml's project name (tests/unit/test_packaging.py holds the two together).
DISTRIBUTION = "aegisflux-etl"
# What ``etl --version`` says when the code runs from a source tree that was never installed (no metadata to read).
NOT_INSTALLED = "unknown (not installed: pip install . to have one)"


def installed_version(distribution: str = DISTRIBUTION) -> str:
    """The installed distribution's version, or ``NOT_INSTALLED``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED

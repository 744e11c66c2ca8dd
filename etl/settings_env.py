"""A dataclass of settings declared with ``etl.envvalues.setting`` and the environment: its variables read and
parsed (a secret also from the file ``<VAR>_FILE`` names), written back for a child process, and shown with
secrets hidden. Generic over the class: ``etl.config.Settings`` is the one there is; its cross-setting checks
are its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from etl import credentials
from etl.envvalues import declaration, redact_url

SECRET_SHOWN = "***"


def read_env(cls: type, environ: Mapping[str, str]) -> dict[str, Any]:
    """The parsed value of each of ``cls``'s fields whose variable ``environ`` sets, by field name. Raises
    ``ConfigError`` (one line naming the variable) on the first bad value or unreadable secret file."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        declared = declaration(f)
        raw = credentials.secret_value(environ, declared.var) if declared.secret else environ.get(declared.var)
        if raw is not None:
            values[f.name] = declared.parse(declared.var, raw)
    return values


def env_of(settings: Any) -> dict[str, str]:
    """``settings`` (a dataclass instance) as environment variables, secrets included; a field without a value
    (``None``) is left out."""
    out: dict[str, str] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is not None:
            declared = declaration(f)
            out[declared.var] = declared.text(value)
    return out


def redacted(settings: Any) -> dict[str, Any]:
    """``settings`` keyed by environment variable, secrets shown as ``SECRET_SHOWN`` (empty when unset), URLs
    without their credentials, a list as its variable's text."""
    out: dict[str, Any] = {}
    for f in fields(settings):
        declared = declaration(f)
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            value = declared.text(value)
        if declared.secret:
            value = SECRET_SHOWN if value else ""
        elif isinstance(value, str) and "://" in value:
            value = redact_url(value)
        out[declared.var] = value
    return out


def env_vars(cls: type) -> tuple[str, ...]:
    """The variables of ``cls``'s fields, in their order."""
    return tuple(declaration(f).var for f in fields(cls))


def secret_file_vars(cls: type) -> tuple[str, ...]:
    """``<VAR>_FILE`` of each secret of ``cls``, which ``read_env`` also reads."""
    return tuple(credentials.file_var(declaration(f).var) for f in fields(cls) if declaration(f).secret)

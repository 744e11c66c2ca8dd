"""Secrets: read from their variable or from a file it names, and refused in production when well known.

Every setting declared ``secret=True`` (``etl.config``) may instead come from ``<VAR>_FILE``, the path of a file
holding it (a Docker or Kubernetes secret): ``secret_value`` reads one. ``weak_secrets`` names the variables whose
password is empty or well known, which ``Settings`` refuses when ``AF_ENV`` says production (``is_production``).
Nothing here logs or returns a secret's value in a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from etl.errors import ConfigError

FILE_SUFFIX = "_FILE"
# A secret is a line, not a document: a bigger file is a wrong path (say, a log or /dev/zero).
MAX_SECRET_FILE_BYTES = 64 * 1024
# AF_ENV values that mean production, case-insensitively: `prod`, `production`, and either followed by `-`, `_`
# or `.` and a qualifier (`prod-eu`, `production_2`).
PRODUCTION_ENV = re.compile(r"prod(uction)?([-_.].*)?", re.IGNORECASE | re.DOTALL)
# Passwords that ship as defaults: ours and the original AegisFlux's (`password`), and the servers' and their
# images' documented ones. Compared case-insensitively; an empty password is refused as well.
WELL_KNOWN_PASSWORDS = frozenset({
    "password", "postgres", "neo4j", "redis", "nats", "admin", "changeme", "secret", "root", "default", "falkordb",
})


def file_var(var: str) -> str:
    """The variable naming a file that holds ``var``'s value: ``PG_PASSWORD`` -> ``PG_PASSWORD_FILE``."""
    return var + FILE_SUFFIX


def secret_value(environ: Mapping[str, str], var: str) -> str | None:
    """``var``'s value: from the file ``<var>_FILE`` names when that is set (not empty), without its trailing
    newline; else ``environ[var]``; ``None`` when neither is set. Raises ``ConfigError`` naming the variable when
    both are set, or when the file cannot be read as UTF-8 text of at most ``MAX_SECRET_FILE_BYTES``."""
    path = environ.get(file_var(var))
    if not path:
        return environ.get(var)
    if environ.get(var):
        raise ConfigError(f"{var} and {file_var(var)} are both set: set one of them")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise ConfigError(f"{file_var(var)} names a file of more than {MAX_SECRET_FILE_BYTES} bytes: {path!r}")
        text = data.decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{file_var(var)} names a file that cannot be read ({e.strerror}): {path!r}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file_var(var)} names a file that is not UTF-8 text: {path!r}") from None
    return text.rstrip("\r\n")


def url_password(url: str) -> str | None:
    """The password ``url`` carries: in its userinfo (``redis://user:pw@host``), else in its query
    (``?password=pw``, which redis-py reads); ``None`` when it carries none. ``url`` has been validated."""
    parts = urlsplit(url)
    if parts.password is not None:
        return unquote(parts.password)
    found = parse_qs(parts.query, keep_blank_values=True).get("password")
    return found[0] if found else None


def is_production(af_env: str) -> bool:
    """Whether ``AF_ENV``'s value means production (``PRODUCTION_ENV``), surrounding blanks ignored."""
    return PRODUCTION_ENV.fullmatch(af_env.strip()) is not None


def is_weak(password: str) -> bool:
    """Whether ``password`` is empty, blank or one of ``WELL_KNOWN_PASSWORDS``."""
    return password.strip().lower() in WELL_KNOWN_PASSWORDS or not password.strip()


def refuse_weak(passwords: Iterable[tuple[str, str]], af_env: str) -> None:
    """Raise ``ConfigError`` naming the first of ``passwords`` ((what, password) pairs, ``what`` naming its
    variable: ``PG_PASSWORD``, ``the password in REDIS_URL``) that ``is_weak``; never the password itself."""
    for what, password in passwords:
        if is_weak(password):
            kind = "empty" if not password.strip() else "a well-known default"
            raise ConfigError(f"{what} is {kind}, refused with AF_ENV={af_env.strip()} (production): "
                              "set a secret of your own")

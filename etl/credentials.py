"""Secrets: read from their variable or from a file it names, and refused in production when well known.

Every setting declared ``secret=True`` (``etl.config``) may instead come from ``<VAR>_FILE``, the path of a file
holding it (a Docker or Kubernetes secret): ``secret_value`` reads one. ``check`` refuses a password given twice
(in a URL and in its own variable) and, when ``AF_ENV`` says production (``is_production``), any password the
settings would send that is empty or well known (``passwords_in_use``). Nothing here logs or returns a secret's value
in a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from etl.errors import ConfigError
from etl.sinks.graph.backend import FALKOR_SCHEME

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


class SecretSettings(Protocol):
    """What ``check`` reads of ``etl.config.Settings`` (which imports this module)."""

    @property
    def af_env(self) -> str: ...
    @property
    def pg_password(self) -> str: ...
    @property
    def pg_sslcert(self) -> str: ...
    @property
    def neo4j_uri(self) -> str: ...
    @property
    def neo4j_password(self) -> str | None: ...
    @property
    def graph_password(self) -> str: ...
    @property
    def redis_url(self) -> str: ...
    @property
    def redis_password(self) -> str: ...
    @property
    def nats_urls(self) -> tuple[str, ...]: ...
    @property
    def nats_password(self) -> str: ...


def check(settings: SecretSettings) -> None:
    """Raise ``ConfigError`` when a password is given both in a URL and in its own variable, when a Neo4j URI
    carries credentials, or when ``settings`` say production and a password they would send ``is_weak``."""
    if settings.redis_password and url_password(settings.redis_url) is not None:
        raise ConfigError("REDIS_PASSWORD is set and REDIS_URL carries a password too: give one of them")
    if settings.nats_password:
        if any(url_password(url) is not None for url in settings.nats_urls):
            raise ConfigError("NATS_PASSWORD is set and NATS_URL carries a password too: give one of them")
        if len({urlsplit(url).username for url in settings.nats_urls}) > 1:
            raise ConfigError("NATS_PASSWORD needs every URL of NATS_URL to name the same user, or none")
    graph_uri = urlsplit(settings.neo4j_uri)
    if graph_uri.scheme != FALKOR_SCHEME and "@" in graph_uri.netloc:
        # The Neo4j driver refuses them with an error that repeats the URI, password and all.
        raise ConfigError("NEO4J_URI carries credentials, which Neo4j does not take from its URI: give them in "
                          "NEO4J_USER and NEO4J_PASSWORD")
    if settings.neo4j_password and url_password(settings.neo4j_uri) is not None:
        raise ConfigError("NEO4J_PASSWORD is set and NEO4J_URI carries a password too: give one of them")
    if is_production(settings.af_env):
        refuse_weak(passwords_in_use(settings), settings.af_env)


def passwords_in_use(settings: SecretSettings) -> list[tuple[str, str]]:
    """(what, password) for each password ``settings`` send, ``what`` naming its variable: ``PG_PASSWORD`` (unless
    empty beside a client certificate, ``PG_SSLCERT``), the graph's ``NEO4J_PASSWORD`` (with FalkorDB only when
    not empty: a FalkorDB without one takes none), ``REDIS_PASSWORD`` and ``NATS_PASSWORD`` when set, and any a
    URL carries."""
    s = settings
    found = [] if s.pg_sslcert and not s.pg_password else [("PG_PASSWORD", s.pg_password)]
    if s.graph_password or urlsplit(s.neo4j_uri).scheme != FALKOR_SCHEME:
        found.append(("NEO4J_PASSWORD", s.graph_password))
    found += [(var, value) for var, value in (("REDIS_PASSWORD", s.redis_password),
                                              ("NATS_PASSWORD", s.nats_password)) if value]
    for var, urls in (("NATS_URL", s.nats_urls), ("REDIS_URL", (s.redis_url,)), ("NEO4J_URI", (s.neo4j_uri,))):
        found += [(f"the password in {var}", pw) for pw in map(url_password, urls) if pw is not None]
    return found

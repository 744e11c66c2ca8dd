"""How a setting is declared (``setting``: its variable, default, parser and help) and the parsers of environment
values, one per kind. A parser takes the variable's name and its raw text, returns the value and raises
``ConfigError`` with one line naming the variable. A list (NATS URLs, nameservers, Sentinels, metrics URLs) is
parsed into a tuple, once; ``*_text`` functions write one back as its variable's text. Also ``redact_url``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import Field, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from etl.errors import ConfigError

Parser = Callable[[str, str], Any]
MAX_NATS_STREAM_REPLICAS = 5  # JetStream's limit
DNS_PORT = 53
DEFAULT_SENTINEL_PORT = 26379
HTTP_SCHEMES = ("http", "https")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_NATS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# A comma starts the next URL of a list only before a scheme: a comma inside a password stays in its URL.
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# Before a URL's credentials: its scheme and slashes.
_URL_HEAD = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*:/*")
# A query parameter that carries a secret (redis-py takes ``?password=``), up to its value's end.
_SECRET_PARAM = re.compile(r"((?:^|[&;])[^=&;]*(?:pass|pwd|token|secret|auth|cred)[^=&;]*)=[^&;#]*", re.IGNORECASE)
# A duration: a whole number and a unit (``90s``, ``15m``, ``12h``, ``30d``), or a bare number of seconds.
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
DURATION_UNITS_S = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}  # largest first: how ``duration_text`` writes one
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
DECLARATION = "etl.setting"  # the key of a field's metadata holding its ``Declaration``


def value_text(value: Any) -> str:
    """A scalar setting as its variable's text: ``true`` or ``false`` for a boolean."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Declaration:
    """What the environment and the README know of one setting."""

    var: str
    parse: Parser
    help: str
    secret: bool = False
    # The value as its variable's text, for ``to_env`` and the README's default column.
    text: Callable[[Any], str] = value_text
    # The README's default column, where the value alone would mislead.
    shown_default: str | None = None
    # Listed in the README's short table too (most deployments set it), not only in docs/configuration.md.
    essential: bool = False


def setting(var: str, default: Any, parse: Parser, help: str, *, secret: bool = False,
            text: Callable[[Any], str] = value_text, shown_default: str | None = None, essential: bool = False) -> Any:
    """A dataclass field read from ``var`` by ``parse`` (which raises ``ConfigError``), ``default`` when unset."""
    declared = Declaration(var, parse, help, secret, text, shown_default, essential)
    return field(default=default, metadata={DECLARATION: declared})


def declaration(f: Field[Any]) -> Declaration:
    """The declaration of a field made by ``setting``."""
    found: Declaration = f.metadata[DECLARATION]
    return found


def positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
    return value


def non_negative_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {raw!r}")
    return value


def port_number(name: str, raw: str) -> int:
    value = non_negative_int(name, raw)
    if value > 65535:
        raise ConfigError(f"{name} must be a TCP port from 0 to 65535, got {raw!r}")
    return value


def percent(name: str, raw: str) -> int:
    value = non_negative_int(name, raw)
    if value > 100:
        raise ConfigError(f"{name} must be a percentage from 0 to 100, got {raw!r}")
    return value


def choice(*allowed: str, upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def boolean(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def identifier(name: str, raw: str) -> str:
    if not _IDENT.match(raw):
        raise ConfigError(f"{name} must be an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63 chars), got {raw!r}")
    return raw


def nats_name(name: str, raw: str) -> str:
    if not _NATS_NAME.match(raw):
        raise ConfigError(f"{name} must be a NATS name ([A-Za-z0-9_-], at most 64 chars), got {raw!r}")
    return raw


def subject(name: str, raw: str) -> str:
    if not _SUBJECT.match(raw):
        raise ConfigError(f"{name} must be a literal NATS subject such as 'events.raw', got {raw!r}")
    return raw


def url(schemes: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        try:
            parts = urlsplit(raw)
        except ValueError:  # say, an unclosed IPv6 bracket
            parts = urlsplit("")
        if parts.scheme not in schemes or not parts.hostname:
            raise ConfigError(f"{name} must be a URL with scheme {' or '.join(schemes)} and a host, "
                              f"got {redact_url(raw)!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"{name} has an invalid port, got {redact_url(raw)!r}") from None
        return raw

    return parse


def split_urls(raw: str) -> list[str]:
    """A comma-separated list of URLs -> the URLs, stripped."""
    return [url.strip() for url in _NEXT_URL.split(raw.strip().strip(","))]


def url_list(families: tuple[tuple[str, ...], ...]) -> Callable[[str, str], tuple[str, ...]]:
    """Comma-separated URLs, each checked as ``url`` does, all of one scheme family -> the URLs."""
    one = url(tuple(scheme for family in families for scheme in family))

    def parse(name: str, raw: str) -> tuple[str, ...]:
        urls = tuple(one(name, each) for each in split_urls(raw))
        if not any(all(urlsplit(url).scheme in family for url in urls) for family in families):
            allowed = " or ".join("/".join(family) for family in families)
            raise ConfigError(f"{name} mixes URL schemes: use {allowed} for all, got {redact_url(raw)!r}")
        return urls

    return parse


def http_urls(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated http(s) URLs with a host, blanks dropped; nothing else may be fetched (say, ``file://``)."""
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for each in urls:
        if not is_http_url(each):
            raise ConfigError(f"{name} must be comma-separated http:// or https:// URLs with a host, "
                              f"got {redact_url(each)!r}")
    return urls


def is_http_url(text: str) -> bool:
    """Whether ``text`` is an http:// or https:// URL with a host."""
    parts = urlsplit(text)
    return parts.scheme in HTTP_SCHEMES and bool(parts.hostname)


def urls_text(urls: Iterable[str]) -> str:
    """A tuple of URLs as its variable's text: comma-separated."""
    return ",".join(urls)


def optional(parse: Parser) -> Parser:
    """``parse``, except that an empty value stays empty (meaning none)."""

    def parse_or_empty(name: str, raw: str) -> Any:
        return raw and parse(name, raw)

    return parse_or_empty


def stream_replicas(name: str, raw: str) -> int:
    value = positive_int(name, raw)
    if value > MAX_NATS_STREAM_REPLICAS:
        raise ConfigError(f"{name} must be from 1 to {MAX_NATS_STREAM_REPLICAS}, got {raw!r}")
    return value


def duration(name: str, raw: str) -> int:
    """A duration in whole seconds: ``<n><unit>`` with unit ``s``, ``m``, ``h`` or ``d`` (``30d``, ``12h``,
    ``90m``), or a bare number of seconds; empty is 0 (none)."""
    found = _DURATION.match(raw.lower()) if raw.strip() else None
    if raw.strip() and found is None:
        raise ConfigError(f"{name} must be a duration such as 90s, 15m, 12h or 30d (or seconds), got {raw!r}")
    return int(found.group(1)) * DURATION_UNITS_S[found.group(2) or "s"] if found else 0


def positive_duration(name: str, raw: str) -> int:
    """``duration``, more than 0 seconds."""
    value = duration(name, raw)
    if value <= 0:
        raise ConfigError(f"{name} must be a duration of at least 1s, got {raw!r}")
    return value


def duration_text(seconds: int) -> str:
    """Seconds as a duration's text, in the largest unit that divides them (``2592000`` -> ``30d``); ``0`` for
    none."""
    for unit, size in DURATION_UNITS_S.items():
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return "0"


def text(name: str, raw: str) -> str:
    return raw


def readable_file(name: str, raw: str) -> str:
    """A path to a readable file, or empty for none."""
    if raw and not os.access(raw, os.R_OK):
        raise ConfigError(f"{name} must name a readable file, got {raw!r}")
    return raw


def _lookup_path(name: str, raw: str, *, directory_allowed: bool) -> str:
    """One path of a lookup file, stripped. It need not exist yet (a feed may be delivered after the start; the
    worker loads it when it appears), but a control character in it is a typo, and so is a file setting naming a
    directory that exists."""
    path = raw.strip()
    if any(ord(c) < 32 for c in path):
        raise ConfigError(f"{name} must be a path without control characters, got {raw!r}")
    if not directory_allowed and os.path.isdir(path):
        raise ConfigError(f"{name} must name a file, not a directory, got {raw!r}")
    return path


def lookup_file(name: str, raw: str) -> str:
    """The path of one lookup file (see ``_lookup_path``), or empty for none."""
    return _lookup_path(name, raw, directory_allowed=False) if raw.strip() else ""


def lookup_paths(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated files or directories of lookup files (see ``_lookup_path``), blanks dropped."""
    return tuple(_lookup_path(name, each, directory_allowed=True) for each in raw.split(",") if each.strip())


def paths_text(paths: Iterable[str]) -> str:
    """A tuple of paths as its variable's text: comma-separated."""
    return ",".join(paths)


def _split_host_port(item: str, default_port: int = DNS_PORT) -> tuple[str, str]:
    """``host``, ``host:port`` or ``[ipv6]:port`` -> (host, port text); ``default_port`` when absent."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else rest or str(default_port)
    if item.count(":") == 1:  # more than one colon is a bare IPv6 address
        host, port = item.split(":")
        return host, port
    return item, str(default_port)


def _endpoints(raw: str, default_port: int) -> list[tuple[str, int | None]]:
    """The comma-separated ``host[:port]`` entries of ``raw`` (empty ones skipped), each with its port as a number
    (``default_port`` when absent), or ``None`` for a port that is not one."""
    out: list[tuple[str, int | None]] = []
    for item in (part.strip() for part in raw.split(",")):
        if item:
            host, port = _split_host_port(item, default_port)
            out.append((host, int(port) if port.isdigit() and 0 < int(port) <= 65535 else None))
    return out


def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def parse_nameservers(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    """``RDNS_NAMESERVERS`` as (address, port) pairs: comma-separated ``ip``, ``ip:port`` or ``[ipv6]:port``,
    port 53 when none is given. Empty means the system's resolvers. Raises ``ConfigError`` on a bad entry."""
    out = []
    for host, port in _endpoints(raw, DNS_PORT):
        address = _ip(host)
        if address is None or port is None:
            raise ConfigError(f"{name} must be comma-separated IP addresses, each with an optional :port "
                              f"([addr]:port for IPv6), got {raw!r}")
        out.append((address, port))
    return tuple(out)


def parse_sentinels(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    """``REDIS_SENTINELS`` as (host, port) pairs: comma-separated ``host``, ``host:port`` or ``[ipv6]:port``,
    port 26379 when none is given. Empty means no Sentinel. Raises ``ConfigError`` on a bad entry."""
    out = []
    for host, port in _endpoints(raw, DEFAULT_SENTINEL_PORT):
        if not host or port is None:
            raise ConfigError(f"{name} must be comma-separated host[:port] entries ([addr]:port for IPv6), "
                              f"got {raw!r}")
        out.append((host, port))
    return tuple(out)


def endpoints_text(endpoints: Iterable[tuple[str, int]]) -> str:
    """(host, port) pairs as their variable's text: ``host:port``, ``[ipv6]:port``, comma-separated."""
    return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in endpoints)


def redact_url(url: str) -> str:
    """Return ``url`` with any password or token in it replaced by ``***``; each URL of a comma-separated list.

    Read as text, not parsed, so that a malformed URL (the one a configuration error names) is redacted too: the
    credentials are everything before the last ``@`` (``user:***`` when there is a user, else ``***``), and a
    query parameter whose name says password, token, secret, auth or credential keeps its name only. It errs on
    the side of hiding: an ``@`` in a query hides what precedes it."""
    return ",".join(map(_redact_one, split_urls(url))) if _NEXT_URL.search(url) else _redact_one(url)


def _redact_one(url: str) -> str:
    head = _URL_HEAD.match(url)
    at = url.rfind("@")
    start = head.end() if head else 0
    if at >= start:
        user, colon, _ = url[start:at].partition(":")
        url = f"{url[:start]}{user}:***{url[at:]}" if colon else f"{url[:start]}***{url[at:]}"
    base, question, query = url.partition("?")
    return base + question + _SECRET_PARAM.sub(r"\1=***", query) if question else url

"""Settings, parsed once from the environment at the edge of each process.

``Settings.from_env()`` is the only reader of ``os.environ``. A bad value raises ``ConfigError`` with one line
naming the variable, the value and what was expected; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

from etl.errors import ConfigError

T = TypeVar("T")

DEFAULT_MAX_BATCH_SIZE = 100
DEFAULT_BATCH_LINGER_MS = 50
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DEFAULT_PROCESSING_TIMEOUT_S = 30
DEFAULT_RETRY_MAX = 8
DEFAULT_RETRY_MIN_BACKOFF_MS = 500
DEFAULT_RETRY_MAX_BACKOFF_MS = 60_000
DEFAULT_DLQ_RETENTION_DAYS = 14
DEFAULT_MAX_QUEUE_DEPTH = 200
DEFAULT_QUEUE_LOW_WATER_PERCENT = 50
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_COOLDOWN_MS = 5_000
DEFAULT_NATS_STREAM_REPLICAS = 1
MAX_NATS_STREAM_REPLICAS = 5  # JetStream's limit
# URL schemes nats-py lets one connection mix: TCP (plain or TLS) or WebSocket, not both.
NATS_SCHEME_FAMILIES = (("nats", "tls"), ("ws", "wss"))
RDNS_MODES = ("off", "fake", "ptr")
DEFAULT_RDNS_TIMEOUT_MS = 500
DEFAULT_RDNS_BATCH_BUDGET_MS = 1_000
DEFAULT_RDNS_CACHE_SIZE = 100_000
DEFAULT_RDNS_MIN_TTL_S = 60
DEFAULT_RDNS_MAX_TTL_S = 86_400
DEFAULT_RDNS_NEGATIVE_TTL_S = 30
DNS_PORT = 53
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_SENTINEL_MASTER = "etl"

# Names that end up in SQL, Cypher or NATS subjects are validated, never quoted blindly.
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_NATS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# A comma starts the next URL of a list only before a scheme: a comma inside a password stays in its URL.
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_SECRET_FIELDS = frozenset({"pg_password", "neo4j_password"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _non_negative_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {raw!r}")
    return value


def _port(name: str, raw: str) -> int:
    value = _non_negative_int(name, raw)
    if value > 65535:
        raise ConfigError(f"{name} must be a TCP port from 0 to 65535, got {raw!r}")
    return value


def _percent(name: str, raw: str) -> int:
    value = _non_negative_int(name, raw)
    if value > 100:
        raise ConfigError(f"{name} must be a percentage from 0 to 100, got {raw!r}")
    return value


def _choice(*allowed: str, upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _identifier(name: str, raw: str) -> str:
    if not _IDENT.match(raw):
        raise ConfigError(f"{name} must be an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63 chars), got {raw!r}")
    return raw


def _nats_name(name: str, raw: str) -> str:
    if not _NATS_NAME.match(raw):
        raise ConfigError(f"{name} must be a NATS name ([A-Za-z0-9_-], at most 64 chars), got {raw!r}")
    return raw


def _subject(name: str, raw: str) -> str:
    if not _SUBJECT.match(raw):
        raise ConfigError(f"{name} must be a literal NATS subject such as 'events.raw', got {raw!r}")
    return raw


def _url(schemes: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.hostname:
            raise ConfigError(f"{name} must be a URL with scheme {' or '.join(schemes)} and a host, got {raw!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"{name} has an invalid port, got {raw!r}") from None
        return raw

    return parse


def split_urls(raw: str) -> list[str]:
    """A comma-separated list of URLs -> the URLs, stripped."""
    return [url.strip() for url in _NEXT_URL.split(raw.strip().strip(","))]


def _url_list(families: tuple[tuple[str, ...], ...]) -> Callable[[str, str], str]:
    """Comma-separated URLs, each checked as ``_url`` does, all of one scheme family; kept comma-joined."""
    one = _url(tuple(scheme for family in families for scheme in family))

    def parse(name: str, raw: str) -> str:
        urls = [one(name, url) for url in split_urls(raw)]
        if not any(all(urlsplit(url).scheme in family for url in urls) for family in families):
            allowed = " or ".join("/".join(family) for family in families)
            raise ConfigError(f"{name} mixes URL schemes: use {allowed} for all, got {redact_url(raw)!r}")
        return ",".join(urls)

    return parse


def _replicas(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > MAX_NATS_STREAM_REPLICAS:
        raise ConfigError(f"{name} must be from 1 to {MAX_NATS_STREAM_REPLICAS}, got {raw!r}")
    return value


def _text(name: str, raw: str) -> str:
    return raw


def _file(name: str, raw: str) -> str:
    """A path to a readable file, or empty for none."""
    if raw and not os.access(raw, os.R_OK):
        raise ConfigError(f"{name} must name a readable file, got {raw!r}")
    return raw


def _split_host_port(item: str, default_port: int = DNS_PORT) -> tuple[str, str]:
    """``host``, ``host:port`` or ``[ipv6]:port`` -> (host, port text); ``default_port`` when absent."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else rest or str(default_port)
    if item.count(":") == 1:  # more than one colon is a bare IPv6 address
        host, port = item.split(":")
        return host, port
    return item, str(default_port)


def parse_nameservers(name: str, raw: str) -> list[tuple[str, int]]:
    """``RDNS_NAMESERVERS`` as (address, port) pairs: comma-separated ``ip``, ``ip:port`` or ``[ipv6]:port``,
    port 53 when none is given. Empty means the system's resolvers. Raises ``ConfigError`` on a bad entry."""
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, port = _split_host_port(item)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"{name} must be comma-separated IP addresses, each with an optional :port "
                              f"([addr]:port for IPv6), got {raw!r}")
        out.append((str(address), int(port)))
    return out


def _nameservers(name: str, raw: str) -> str:
    parse_nameservers(name, raw)
    return raw.strip()


def parse_sentinels(name: str, raw: str) -> list[tuple[str, int]]:
    """``REDIS_SENTINELS`` as (host, port) pairs: comma-separated ``host``, ``host:port`` or ``[ipv6]:port``,
    port 26379 when none is given. Empty means no Sentinel. Raises ``ConfigError`` on a bad entry."""
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, port = _split_host_port(item, DEFAULT_SENTINEL_PORT)
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"{name} must be comma-separated host[:port] entries ([addr]:port for IPv6), "
                              f"got {raw!r}")
        out.append((host, int(port)))
    return out


def _sentinels(name: str, raw: str) -> str:
    parse_sentinels(name, raw)
    return raw.strip()


def redact_url(url: str) -> str:
    """Return ``url`` with any password or token in it replaced by ``***``; each URL of a comma-separated list."""
    urls = split_urls(url)
    if len(urls) > 1:
        return ",".join(map(_redact_one, urls))
    return _redact_one(url)


def _redact_one(url: str) -> str:
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    cred = f"{user}:***" if parts.password else "***"
    return urlunsplit((parts.scheme, f"{cred}@{host}{port}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Settings:
    """Every setting of the service. Field metadata names its environment variable."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_stream: str = "EVENTS"
    nats_subject_raw: str = "events.raw"
    nats_consumer: str = "etl-bridge"
    nats_ack_wait_s: int = 60
    nats_subject_enriched: str = "events.enriched"
    nats_enriched_stream: str = "EVENTS_ENRICHED"
    nats_stream_replicas: int = DEFAULT_NATS_STREAM_REPLICAS
    nats_creds: str = ""
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_wait_aof: bool = True
    redis_sentinels: str = ""
    redis_sentinel_master: str = DEFAULT_REDIS_SENTINEL_MASTER
    redis_wait_replicas: int = 0
    pg_host: str = "localhost"
    pg_port: int = 5432
    pg_db: str = "aegisflux"
    pg_user: str = "postgres"
    pg_password: str = "postgres"
    pg_table: str = "events"
    pg_sslmode: str = "prefer"
    pg_sslrootcert: str = ""
    pg_sslcert: str = ""
    pg_sslkey: str = ""
    neo4j_uri: str = "bolt://localhost:7687"
    neo4j_user: str = "neo4j"
    neo4j_password: str = "password"
    neo4j_tls_ca: str = ""
    graph_name: str = "events"
    af_env: str = "dev"
    fake_rdns: bool = False
    # From AF_FAKE_RDNS when RDNS_MODE is not set (see ``from_env``).
    rdns_mode: str = "off"
    rdns_nameservers: str = ""
    rdns_timeout_ms: int = DEFAULT_RDNS_TIMEOUT_MS
    rdns_batch_budget_ms: int = DEFAULT_RDNS_BATCH_BUDGET_MS
    rdns_cache_size: int = DEFAULT_RDNS_CACHE_SIZE
    rdns_min_ttl_s: int = DEFAULT_RDNS_MIN_TTL_S
    rdns_max_ttl_s: int = DEFAULT_RDNS_MAX_TTL_S
    rdns_negative_ttl_s: int = DEFAULT_RDNS_NEGATIVE_TTL_S
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_linger_ms: int = DEFAULT_BATCH_LINGER_MS
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    processing_timeout_s: int = DEFAULT_PROCESSING_TIMEOUT_S
    retry_max: int = DEFAULT_RETRY_MAX
    retry_min_backoff_ms: int = DEFAULT_RETRY_MIN_BACKOFF_MS
    retry_max_backoff_ms: int = DEFAULT_RETRY_MAX_BACKOFF_MS
    dlq_retention_days: int = DEFAULT_DLQ_RETENTION_DAYS
    max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH
    queue_low_water_percent: int = DEFAULT_QUEUE_LOW_WATER_PERCENT
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    breaker_cooldown_ms: int = DEFAULT_BREAKER_COOLDOWN_MS
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    metrics_port: int = 9191
    log_level: str = "INFO"
    log_format: str = "auto"

    @property
    def nats_servers(self) -> list[str]:
        """The URLs of ``NATS_URL``: seeds of one cluster, any of which will do to connect."""
        return split_urls(self.nats_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse ``environ`` (usually ``os.environ``). Raises ``ConfigError`` on the first bad value."""
        values: dict[str, Any] = {}
        for field_name, (var, parse) in _ENV.items():
            raw = environ.get(var)
            if raw is not None:
                values[field_name] = parse(var, raw)
        # AF_FAKE_RDNS=true predates RDNS_MODE and still means fake; an explicit RDNS_MODE wins.
        values.setdefault("rdns_mode", "fake" if values.get("fake_rdns") else "off")
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY go together: set both or neither")
        if self.retry_min_backoff_ms > self.retry_max_backoff_ms:
            raise ConfigError(
                f"RETRY_MIN_BACKOFF_MS ({self.retry_min_backoff_ms}) must not exceed "
                f"RETRY_MAX_BACKOFF_MS ({self.retry_max_backoff_ms})"
            )
        if self.rdns_min_ttl_s > self.rdns_max_ttl_s:
            raise ConfigError(f"RDNS_MIN_TTL_S ({self.rdns_min_ttl_s}) must not exceed "
                              f"RDNS_MAX_TTL_S ({self.rdns_max_ttl_s})")
        if self.rdns_mode == "ptr" and self.rdns_batch_budget_ms >= self.processing_timeout_s * 1000:
            raise ConfigError(f"RDNS_BATCH_BUDGET_MS ({self.rdns_batch_budget_ms}) must be less than "
                              f"PROCESSING_TIMEOUT ({self.processing_timeout_s} s)")

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, secrets included: for starting child processes."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[_ENV[f.name][0]] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def redacted(self) -> dict[str, Any]:
        """The settings keyed by environment variable, with secrets hidden."""
        out: dict[str, Any] = {}
        for f in fields(self):
            var = _ENV[f.name][0]
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                value = "***" if value else ""
            elif isinstance(value, str) and "://" in value:
                value = redact_url(value)
            out[var] = value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({inner})"


_ENV: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "nats_url": ("NATS_URL", _url_list(NATS_SCHEME_FAMILIES)),
    "nats_stream": ("NATS_STREAM", _nats_name),
    "nats_subject_raw": ("NATS_SUBJECT_RAW", _subject),
    "nats_consumer": ("NATS_CONSUMER", _nats_name),
    "nats_ack_wait_s": ("NATS_ACK_WAIT", _positive_int),
    "nats_subject_enriched": ("NATS_SUBJECT_ENRICHED", _subject),
    "nats_enriched_stream": ("NATS_ENRICHED_STREAM", lambda n, r: r and _nats_name(n, r)),
    "nats_stream_replicas": ("NATS_STREAM_REPLICAS", _replicas),
    "nats_creds": ("NATS_CREDS", _file),
    "nats_tls_ca": ("NATS_TLS_CA", _file),
    "nats_tls_cert": ("NATS_TLS_CERT", _file),
    "nats_tls_key": ("NATS_TLS_KEY", _file),
    "redis_url": ("REDIS_URL", _url(("redis", "rediss", "unix"))),
    "redis_wait_aof": ("REDIS_WAIT_AOF", _boolean),
    "redis_sentinels": ("REDIS_SENTINELS", _sentinels),
    "redis_sentinel_master": ("REDIS_SENTINEL_MASTER", _identifier),
    "redis_wait_replicas": ("REDIS_WAIT_REPLICAS", _non_negative_int),
    "pg_host": ("PG_HOST", _text),
    "pg_port": ("PG_PORT", _positive_int),
    "pg_db": ("PG_DB", _text),
    "pg_user": ("PG_USER", _text),
    "pg_password": ("PG_PASSWORD", _text),
    "pg_table": ("PG_TABLE", _identifier),
    "pg_sslmode": ("PG_SSLMODE", _choice("disable", "allow", "prefer", "require", "verify-ca", "verify-full")),
    "pg_sslrootcert": ("PG_SSLROOTCERT", _file),
    "pg_sslcert": ("PG_SSLCERT", _file),
    "pg_sslkey": ("PG_SSLKEY", _file),
    "neo4j_tls_ca": ("NEO4J_TLS_CA", _file),
    "neo4j_uri": ("NEO4J_URI", _url(("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc", "falkor"))),
    "neo4j_user": ("NEO4J_USER", _text),
    "neo4j_password": ("NEO4J_PASSWORD", _text),
    "graph_name": ("GRAPH_NAME", _identifier),
    "af_env": ("AF_ENV", _text),
    "fake_rdns": ("AF_FAKE_RDNS", _boolean),
    "rdns_mode": ("RDNS_MODE", _choice(*RDNS_MODES)),
    "rdns_nameservers": ("RDNS_NAMESERVERS", _nameservers),
    "rdns_timeout_ms": ("RDNS_TIMEOUT_MS", _positive_int),
    "rdns_batch_budget_ms": ("RDNS_BATCH_BUDGET_MS", _positive_int),
    "rdns_cache_size": ("RDNS_CACHE_SIZE", _positive_int),
    "rdns_min_ttl_s": ("RDNS_MIN_TTL_S", _non_negative_int),
    "rdns_max_ttl_s": ("RDNS_MAX_TTL_S", _positive_int),
    "rdns_negative_ttl_s": ("RDNS_NEGATIVE_TTL_S", _positive_int),
    "max_batch_size": ("MAX_BATCH_SIZE", _positive_int),
    "batch_linger_ms": ("BATCH_LINGER_MS", _positive_int),
    "max_event_bytes": ("MAX_EVENT_BYTES", _positive_int),
    "processing_timeout_s": ("PROCESSING_TIMEOUT", _positive_int),
    "retry_max": ("RETRY_MAX", _non_negative_int),
    "retry_min_backoff_ms": ("RETRY_MIN_BACKOFF_MS", _positive_int),
    "retry_max_backoff_ms": ("RETRY_MAX_BACKOFF_MS", _positive_int),
    "dlq_retention_days": ("DLQ_RETENTION_DAYS", _positive_int),
    "max_queue_depth": ("MAX_QUEUE_DEPTH", _positive_int),
    "queue_low_water_percent": ("QUEUE_LOW_WATER_PERCENT", _percent),
    "breaker_failures": ("BREAKER_FAILURES", _positive_int),
    "breaker_cooldown_ms": ("BREAKER_COOLDOWN_MS", _positive_int),
    "health_host": ("HEALTH_HOST", _text),
    "health_port": ("HEALTH_PORT", _port),
    "metrics_port": ("METRICS_PORT", _port),
    "log_level": ("LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True)),
    "log_format": ("LOG_FORMAT", _choice("auto", "json", "text")),
}

def exit_on_config_error(message: str) -> NoReturn:
    """The one way a process reports a bad setting: one line on stderr, exit code 2, no traceback."""
    sys.stderr.write(f"configuration error: {message}\n")
    raise SystemExit(2)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """``Settings.from_env`` for a process's entry point: a bad value ends the process with exit code 2."""
    try:
        return Settings.from_env(environ)
    except ConfigError as e:
        exit_on_config_error(str(e))


ENV_VARS: tuple[str, ...] = tuple(var for var, _ in _ENV.values())

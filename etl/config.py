"""Settings, parsed once from the environment at the edge of each process.

``Settings.from_env()`` is the only reader of ``os.environ``. A bad value raises ``ConfigError`` with one line
naming the variable, the value and what was expected; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from etl import envvalues as v
from etl.errors import ConfigError

# Larger batches cut the CPU spent per event in every process (Redis round trips and fsyncs, Dramatiq messages,
# transactions and graph queries are per batch); 500 against 100: docs/performance.md.
DEFAULT_MAX_BATCH_SIZE = 500
DEFAULT_BATCH_LINGER_MS = 50
# One Dramatiq message carries a whole batch: this keeps it small for Redis whatever the events' sizes.
DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DEFAULT_PROCESSING_TIMEOUT_S = 30
# PostgreSQL connections per worker process: Dramatiq's default thread count. bin/worker sets PG_POOL_SIZE from the
# pool's own thread count (etl/pools.py), since each connection is opened at start and one thread uses one.
DEFAULT_PG_POOL_SIZE = 8
DEFAULT_RETRY_MAX = 8
DEFAULT_RETRY_MIN_BACKOFF_MS = 500
DEFAULT_RETRY_MAX_BACKOFF_MS = 60_000
DEFAULT_DLQ_RETENTION_DAYS = 14
# In batches: 40 of DEFAULT_MAX_BATCH_SIZE is the same 20,000 events per queue as 200 batches of 100 were.
DEFAULT_MAX_QUEUE_DEPTH = 40
DEFAULT_QUEUE_LOW_WATER_PERCENT = 50
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_COOLDOWN_MS = 5_000
DEFAULT_NATS_STREAM_REPLICAS = 1
# URL schemes nats-py lets one connection mix: TCP (plain or TLS) or WebSocket, not both.
NATS_SCHEME_FAMILIES = (("nats", "tls"), ("ws", "wss"))
RDNS_MODES = ("off", "fake", "ptr")
DEFAULT_RDNS_TIMEOUT_MS = 500
DEFAULT_RDNS_BATCH_BUDGET_MS = 1_000
DEFAULT_RDNS_CACHE_SIZE = 100_000
DEFAULT_RDNS_MIN_TTL_S = 60
DEFAULT_RDNS_MAX_TTL_S = 86_400
DEFAULT_RDNS_NEGATIVE_TTL_S = 30
DEFAULT_REDIS_SENTINEL_MASTER = "etl"

# Names that end up in SQL, Cypher or NATS subjects are validated, never quoted blindly.
_SECRET_FIELDS = frozenset({"pg_password", "neo4j_password"})


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
    pg_pool_size: int = DEFAULT_PG_POOL_SIZE
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
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
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
        return v.split_urls(self.nats_url)

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
                value = v.redact_url(value)
            out[var] = value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({inner})"


_ENV: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "nats_url": ("NATS_URL", v.url_list(NATS_SCHEME_FAMILIES)),
    "nats_stream": ("NATS_STREAM", v.nats_name),
    "nats_subject_raw": ("NATS_SUBJECT_RAW", v.subject),
    "nats_consumer": ("NATS_CONSUMER", v.nats_name),
    "nats_ack_wait_s": ("NATS_ACK_WAIT", v.positive_int),
    "nats_subject_enriched": ("NATS_SUBJECT_ENRICHED", v.subject),
    "nats_enriched_stream": ("NATS_ENRICHED_STREAM", lambda n, r: r and v.nats_name(n, r)),
    "nats_stream_replicas": ("NATS_STREAM_REPLICAS", v.stream_replicas),
    "nats_creds": ("NATS_CREDS", v.readable_file),
    "nats_tls_ca": ("NATS_TLS_CA", v.readable_file),
    "nats_tls_cert": ("NATS_TLS_CERT", v.readable_file),
    "nats_tls_key": ("NATS_TLS_KEY", v.readable_file),
    "redis_url": ("REDIS_URL", v.url(("redis", "rediss", "unix"))),
    "redis_wait_aof": ("REDIS_WAIT_AOF", v.boolean),
    "redis_sentinels": ("REDIS_SENTINELS", v.sentinels),
    "redis_sentinel_master": ("REDIS_SENTINEL_MASTER", v.identifier),
    "redis_wait_replicas": ("REDIS_WAIT_REPLICAS", v.non_negative_int),
    "pg_host": ("PG_HOST", v.text),
    "pg_port": ("PG_PORT", v.positive_int),
    "pg_db": ("PG_DB", v.text),
    "pg_user": ("PG_USER", v.text),
    "pg_password": ("PG_PASSWORD", v.text),
    "pg_table": ("PG_TABLE", v.identifier),
    "pg_sslmode": ("PG_SSLMODE", v.choice("disable", "allow", "prefer", "require", "verify-ca", "verify-full")),
    "pg_sslrootcert": ("PG_SSLROOTCERT", v.readable_file),
    "pg_sslcert": ("PG_SSLCERT", v.readable_file),
    "pg_sslkey": ("PG_SSLKEY", v.readable_file),
    "pg_pool_size": ("PG_POOL_SIZE", v.positive_int),
    "neo4j_tls_ca": ("NEO4J_TLS_CA", v.readable_file),
    "neo4j_uri": ("NEO4J_URI", v.url(("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc", "falkor"))),
    "neo4j_user": ("NEO4J_USER", v.text),
    "neo4j_password": ("NEO4J_PASSWORD", v.text),
    "graph_name": ("GRAPH_NAME", v.identifier),
    "af_env": ("AF_ENV", v.text),
    "fake_rdns": ("AF_FAKE_RDNS", v.boolean),
    "rdns_mode": ("RDNS_MODE", v.choice(*RDNS_MODES)),
    "rdns_nameservers": ("RDNS_NAMESERVERS", v.nameservers),
    "rdns_timeout_ms": ("RDNS_TIMEOUT_MS", v.positive_int),
    "rdns_batch_budget_ms": ("RDNS_BATCH_BUDGET_MS", v.positive_int),
    "rdns_cache_size": ("RDNS_CACHE_SIZE", v.positive_int),
    "rdns_min_ttl_s": ("RDNS_MIN_TTL_S", v.non_negative_int),
    "rdns_max_ttl_s": ("RDNS_MAX_TTL_S", v.positive_int),
    "rdns_negative_ttl_s": ("RDNS_NEGATIVE_TTL_S", v.positive_int),
    "max_batch_size": ("MAX_BATCH_SIZE", v.positive_int),
    "batch_linger_ms": ("BATCH_LINGER_MS", v.positive_int),
    "max_batch_bytes": ("MAX_BATCH_BYTES", v.positive_int),
    "max_event_bytes": ("MAX_EVENT_BYTES", v.positive_int),
    "processing_timeout_s": ("PROCESSING_TIMEOUT", v.positive_int),
    "retry_max": ("RETRY_MAX", v.non_negative_int),
    "retry_min_backoff_ms": ("RETRY_MIN_BACKOFF_MS", v.positive_int),
    "retry_max_backoff_ms": ("RETRY_MAX_BACKOFF_MS", v.positive_int),
    "dlq_retention_days": ("DLQ_RETENTION_DAYS", v.positive_int),
    "max_queue_depth": ("MAX_QUEUE_DEPTH", v.positive_int),
    "queue_low_water_percent": ("QUEUE_LOW_WATER_PERCENT", v.percent),
    "breaker_failures": ("BREAKER_FAILURES", v.positive_int),
    "breaker_cooldown_ms": ("BREAKER_COOLDOWN_MS", v.positive_int),
    "health_host": ("HEALTH_HOST", v.text),
    "health_port": ("HEALTH_PORT", v.port_number),
    "metrics_port": ("METRICS_PORT", v.port_number),
    "log_level": ("LOG_LEVEL", v.choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True)),
    "log_format": ("LOG_FORMAT", v.choice("auto", "json", "text")),
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

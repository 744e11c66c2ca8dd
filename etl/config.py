"""Settings, declared once and parsed once from the environment at the edge of each process.

Each field of ``Settings`` is declared with ``etl.envvalues.setting``: its environment variable, default (the
values and why: ``etl.defaults``), parser and help. ``from_env``, ``to_env``, the redacted view
(``etl.settings_env``) and the README's configuration table (``etl.settings_table``) all come from that one
declaration. ``Settings.from_env()`` is the only reader of ``os.environ``. A bad value raises ``ConfigError`` with
one line naming the variable, the value and what was expected; the CLI turns that into exit code 2. Lists are
parsed into tuples here, never again where they are used. A secret (``secret=True``) may come from the file
``<VAR>_FILE`` names, and one that is empty or well known is refused when ``AF_ENV`` says production
(``etl.credentials``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from etl import credentials, settings_env
from etl import defaults as d
from etl import envvalues as v
from etl.envvalues import setting
from etl.errors import EXIT_CONFIG, ConfigError
from etl.sinks.graph.backend import FALKOR_SCHEME

# URL schemes nats-py lets one connection mix: TCP (plain or TLS) or WebSocket, not both.
NATS_SCHEME_FAMILIES = (("nats", "tls"), ("ws", "wss"))
RDNS_MODES = ("off", "fake", "ptr")


@dataclass(frozen=True)
class Settings:
    """Every setting of the service, in the order of the README's table. See ``setting`` for each field's
    variable, parser and help."""

    nats_urls: tuple[str, ...] = setting(
        "NATS_URL", ("nats://127.0.0.1:4222",), v.url_list(NATS_SCHEME_FAMILIES),
        "NATS server, or comma-separated seeds of one cluster (`nats://n1:4222,nats://n2:4222`; all `nats`/`tls` "
        "or all `ws`/`wss`); credentials in each URL are redacted in output", text=v.urls_text, essential=True)
    nats_stream: str = setting("NATS_STREAM", "EVENTS", v.nats_name,
                               "JetStream stream capturing the raw subject (created if missing)")
    nats_subject_raw: str = setting("NATS_SUBJECT_RAW", "events.raw", v.subject, "where agents publish")
    nats_consumer: str = setting("NATS_CONSUMER", "etl-bridge", v.nats_name,
                                 "durable consumer shared by all bridge replicas")
    nats_ack_wait_s: int = setting(
        "NATS_ACK_WAIT", 60, v.positive_int, "seconds before NATS redelivers what a bridge fetched and did not ack "
        "(applies when the consumer is created)")
    nats_subject_enriched: str = setting("NATS_SUBJECT_ENRICHED", "events.enriched", v.subject,
                                         "where enriched events go")
    nats_enriched_stream: str = setting("NATS_ENRICHED_STREAM", "EVENTS_ENRICHED", v.optional(v.nats_name),
                                        "stream capturing the enriched subject; empty for core NATS publishing")
    nats_stream_replicas: int = setting(
        "NATS_STREAM_REPLICAS", d.DEFAULT_NATS_STREAM_REPLICAS, v.stream_replicas,
        "replicas (1 to 5) of the streams the pipeline creates "
        "([docs/scaling.md](docs/scaling.md#running-against-a-nats-cluster))")
    nats_stream_max_bytes: int = setting(
        "NATS_STREAM_MAX_BYTES", d.DEFAULT_RAW_STREAM_MAX_BYTES, v.non_negative_int,
        "bytes `NATS_STREAM` may hold (0: no limit); when full, new events are refused "
        "([docs/operations.md](docs/operations.md#when-the-raw-stream-is-full))")
    nats_stream_max_age_s: int = setting(
        "NATS_STREAM_MAX_AGE", 0, v.non_negative_int,
        "seconds `NATS_STREAM` keeps an event not yet taken by a bridge (0: no limit); older ones are deleted")
    nats_enriched_stream_max_bytes: int = setting(
        "NATS_ENRICHED_STREAM_MAX_BYTES", d.DEFAULT_ENRICHED_STREAM_MAX_BYTES, v.non_negative_int,
        "bytes `NATS_ENRICHED_STREAM` may hold (0: no limit); when full, its oldest events are deleted")
    nats_enriched_stream_max_age_s: int = setting(
        "NATS_ENRICHED_STREAM_MAX_AGE", d.DEFAULT_ENRICHED_STREAM_MAX_AGE_S, v.non_negative_int,
        "seconds `NATS_ENRICHED_STREAM` keeps an event (0: no limit). The four limits apply to existing streams too")
    nats_public_api: bool = setting(
        "ETL_NATS_PUBLIC_API", False, v.boolean, "use nats-py's public API instead of its private hooks on the hot "
        "paths: slower, for ruling the hooks out (see [docs/operations.md](docs/operations.md))")
    nats_password: str = setting(
        "NATS_PASSWORD", "", v.text, "secret: the password of the user `NATS_URL` names (`nats://etl@nats:4222`), "
        "or a token when it names none; instead of one in the URL", secret=True, essential=True)
    nats_creds: str = setting("NATS_CREDS", "", v.readable_file, "a NATS credentials file (JWT and NKey)")
    nats_tls_ca: str = setting("NATS_TLS_CA", "", v.readable_file,
                               "CA file that verifies the NATS server; TLS is also used for a `tls://` URL")
    nats_tls_cert: str = setting("NATS_TLS_CERT", "", v.readable_file,
                                 "client certificate for mutual TLS (with `NATS_TLS_KEY`)")
    nats_tls_key: str = setting("NATS_TLS_KEY", "", v.readable_file,
                                "client key for mutual TLS (with `NATS_TLS_CERT`)")
    redis_url: str = setting("REDIS_URL", "redis://127.0.0.1:6379/0", v.url(("redis", "rediss", "unix")),
                             "Redis behind the Dramatiq queues and the dead-letter queue", essential=True)
    redis_tls_ca: str = setting("REDIS_TLS_CA", "", v.readable_file,
                                "CA file that verifies Redis (and its Sentinels' master) over `rediss://`")
    redis_password: str = setting(
        "REDIS_PASSWORD", "", v.text, "secret: the password of the user `REDIS_URL` names (else of Redis's "
        "`default` user); instead of one in the URL", secret=True, essential=True)
    redis_wait_aof: bool = setting("REDIS_WAIT_AOF", True, v.boolean, "wait for Redis to write each batch to its "
                                   "AOF before acking NATS ([reliability](README.md#reliability)); one wait covers "
                                   "many batches")
    redis_sentinels: tuple[tuple[str, int], ...] = setting(
        "REDIS_SENTINELS", (), v.parse_sentinels,
        "comma-separated `host[:port]` of Redis Sentinels (port 26379 unless given), which find the master",
        text=v.endpoints_text)
    redis_sentinel_master: str = setting("REDIS_SENTINEL_MASTER", d.DEFAULT_REDIS_SENTINEL_MASTER, v.identifier,
                                         "the master's name in the Sentinels' `sentinel monitor` line")
    redis_wait_replicas: int = setting(
        "REDIS_WAIT_REPLICAS", 0, v.non_negative_int,
        "replicas that must also have each batch on disk (`WAITAOF`) before the bridge acks NATS; `1` with "
        "Sentinel, so a failover loses no acked batch (see [docs/scaling.md](docs/scaling.md))")
    pg_host: str = setting("PG_HOST", "localhost", v.text, "PostgreSQL / TimescaleDB host", essential=True)
    pg_port: int = setting("PG_PORT", 5432, v.positive_int, "PostgreSQL port", essential=True)
    pg_db: str = setting("PG_DB", "aegisflux", v.text, "database", essential=True)
    pg_user: str = setting("PG_USER", "postgres", v.text, "user", essential=True)
    pg_password: str = setting("PG_PASSWORD", "password", v.text,
                               "secret; a default one is refused in production (`AF_ENV`)", secret=True, essential=True)
    pg_table: str = setting("PG_TABLE", "events", v.identifier, "table name (an identifier)")
    timescale_retention_s: int = setting(
        "TIMESCALE_RETENTION", 0, v.duration, "how long rows are kept by event time (`30d`, `12h`; `0`: "
        "forever; [retention](docs/operations.md#retention))", text=v.duration_text, essential=True)
    timescale_compress_after_s: int = setting(
        "TIMESCALE_COMPRESS_AFTER", 0, v.duration, "TimescaleDB only: chunks whose rows are older than this are "
        "compressed by a policy (empty or `0`: none)", text=v.duration_text)
    timescale_retention_batch: int = setting(
        "TIMESCALE_RETENTION_BATCH", d.DEFAULT_TIMESCALE_RETENTION_BATCH, v.positive_int,
        "plain PostgreSQL: rows one retention statement deletes")
    pg_sslmode: str = setting(
        "PG_SSLMODE", "prefer", v.choice("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
        "libpq's `sslmode`: `disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`")
    pg_sslrootcert: str = setting("PG_SSLROOTCERT", "", v.readable_file, "libpq's CA file")
    pg_sslcert: str = setting("PG_SSLCERT", "", v.readable_file, "libpq's client certificate file")
    pg_sslkey: str = setting("PG_SSLKEY", "", v.readable_file, "libpq's client key file")
    pg_pool_size: int = setting(
        "PG_POOL_SIZE", d.DEFAULT_PG_POOL_SIZE, v.positive_int,
        "PostgreSQL connections per timescale worker process, all opened at start",
        shown_default=f"the pool's threads + 1 (`bin/worker`), else `{d.DEFAULT_PG_POOL_SIZE}`")
    neo4j_uri: str = setting(
        "NEO4J_URI", "bolt://localhost:7687",
        v.url(("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc", "falkor")),
        "graph database: `bolt://`, `neo4j://` (Neo4j) or `falkor://` (FalkorDB)", essential=True)
    neo4j_user: str = setting("NEO4J_USER", "neo4j", v.text, "Neo4j user (FalkorDB takes its user from the URI)",
                              essential=True)
    # None: the backend's default (``graph_password``).
    neo4j_password: str | None = setting(
        "NEO4J_PASSWORD", None, v.text, "secret: the graph database's password (FalkorDB's may be in `NEO4J_URI` "
        "instead); a default one is refused in production (`AF_ENV`)", secret=True,
        shown_default=f"`{d.DEFAULT_NEO4J_PASSWORD}` with Neo4j, none with FalkorDB", essential=True)
    neo4j_tls_ca: str = setting(
        "NEO4J_TLS_CA", "", v.readable_file,
        "with a plain `bolt://`/`neo4j://` URI: encrypt and trust this CA (`+s` URIs choose TLS themselves)")
    graph_name: str = setting("GRAPH_NAME", "events", v.identifier, "FalkorDB graph name (an identifier)")
    graph_retention_s: int = setting(
        "GRAPH_RETENTION", 0, v.duration, "how long Event nodes are kept by event time; other nodes stay "
        "([retention](docs/operations.md#retention))", text=v.duration_text, essential=True)
    graph_retention_batch: int = setting("GRAPH_RETENTION_BATCH", d.DEFAULT_GRAPH_RETENTION_BATCH, v.positive_int,
                                         "Event nodes one retention statement removes")
    retention_interval_s: int = setting(
        "RETENTION_INTERVAL", d.DEFAULT_RETENTION_INTERVAL_S, v.positive_duration,
        "how often the graph and timescale pools remove expired data, one replica at a time", text=v.duration_text)
    af_env: str = setting(
        "AF_ENV", "dev", v.text, "the `env` added to every event; `prod` or `production` (also `prod-eu`, ...) is "
        "production, where an empty or default password stops the process ([docs/operations.md]"
        "(docs/operations.md#secrets))", essential=True)
    # Its default is "fake" when AF_FAKE_RDNS is true (see ``from_env``).
    rdns_mode: str = setting(
        "RDNS_MODE", "off", v.optional(v.choice(*RDNS_MODES)), "reverse DNS of `rdns` and `dst_rdns`: `off` "
        "(null), `fake` (`host-N.local`) or `ptr` (real PTR lookups: [reverse DNS](README.md#reverse-dns))",
        essential=True)
    fake_rdns: bool = setting("AF_FAKE_RDNS", False, v.boolean, "`true` means `RDNS_MODE=fake` when `RDNS_MODE` "
                              "is not set or empty (kept for compatibility)")
    rdns_nameservers: tuple[tuple[str, int], ...] = setting(
        "RDNS_NAMESERVERS", (), v.parse_nameservers,
        "`ptr`: comma-separated nameserver addresses, each with an optional port (`10.0.0.53`, `127.0.0.1:5353`, "
        "`[::1]:53`); empty: those of `/etc/resolv.conf`", text=v.endpoints_text, shown_default="(the system's)")
    rdns_timeout_ms: int = setting("RDNS_TIMEOUT_MS", d.DEFAULT_RDNS_TIMEOUT_MS, v.positive_int,
                                   "`ptr`: the longest one lookup may take, shared among the nameservers")
    rdns_batch_budget_ms: int = setting(
        "RDNS_BATCH_BUDGET_MS", d.DEFAULT_RDNS_BATCH_BUDGET_MS, v.positive_int, "`ptr`: the longest a batch waits "
        "for DNS; what is unanswered by then is `null` (less than `PROCESSING_TIMEOUT`)")
    rdns_cache_size: int = setting("RDNS_CACHE_SIZE", d.DEFAULT_RDNS_CACHE_SIZE, v.positive_int,
                                   "`ptr`: addresses cached per worker process")
    rdns_cache_bytes: int = setting(
        "RDNS_CACHE_BYTES", d.DEFAULT_RDNS_CACHE_BYTES, v.positive_int, "`ptr`: bytes the cache may hold per worker "
        "process (its addresses and names, plus a fixed overhead per entry)")
    rdns_min_ttl_s: int = setting("RDNS_MIN_TTL_S", d.DEFAULT_RDNS_MIN_TTL_S, v.non_negative_int,
                                  "`ptr`: a name is cached at least this long, whatever its record's TTL")
    rdns_max_ttl_s: int = setting("RDNS_MAX_TTL_S", d.DEFAULT_RDNS_MAX_TTL_S, v.positive_int,
                                  "`ptr`: and at most this long")
    rdns_negative_ttl_s: int = setting("RDNS_NEGATIVE_TTL_S", d.DEFAULT_RDNS_NEGATIVE_TTL_S, v.positive_int,
                                       "`ptr`: how long NXDOMAIN, SERVFAIL, no record or a timeout is cached")
    intel_paths: tuple[str, ...] = setting(
        "INTEL_PATHS", (), v.lookup_paths, "comma-separated indicator feeds: files (plain lists, CSV, JSON lines, "
        "STIX 2.1 bundles), or directories of them; a path missing at the start is loaded when it appears",
        text=v.paths_text)
    assets_path: str = setting("ASSETS_PATH", "", v.lookup_file, "the asset inventory, a CSV of CIDRs with site, "
                               "owner and criticality; empty: none")
    geoip_city_path: str = setting("GEOIP_CITY_PATH", "", v.lookup_file,
                                   "a MaxMind City or Country database (`.mmdb`) for `dst_geo`; empty: none")
    geoip_asn_path: str = setting("GEOIP_ASN_PATH", "", v.lookup_file,
                                  "a MaxMind ASN database (`.mmdb`) for `dst_geo`; empty: none")
    lookup_reload_s: int = setting(
        "LOOKUP_RELOAD_S", d.DEFAULT_LOOKUP_RELOAD_S, v.non_negative_int,
        "seconds between an enrich worker's checks of the lookup files for a change, which it loads and swaps in "
        "without a restart (0: never; [docs/operations.md](docs/operations.md#lookup-tables))")
    max_batch_size: int = setting("MAX_BATCH_SIZE", d.DEFAULT_MAX_BATCH_SIZE, v.positive_int,
                                  "events per batch (bridge)")
    max_batch_bytes: int = setting(
        "MAX_BATCH_BYTES", d.DEFAULT_MAX_BATCH_BYTES, v.positive_int, "bytes of raw events per batch (bridge), passed "
        "by at most one message")
    batch_linger_ms: int = setting("BATCH_LINGER_MS", d.DEFAULT_BATCH_LINGER_MS, v.positive_int,
                                   "how long the bridge waits to fill a batch after its first event")
    bridge_max_unacked: int = setting(
        "BRIDGE_MAX_UNACKED", d.DEFAULT_BRIDGE_MAX_UNACKED, v.positive_int,
        "events a bridge replica holds un-acked (enqueued, waiting for Redis's disk); higher helps `appendfsync "
        "everysec`, lower saves memory")
    bridge_max_unacked_bytes: int = setting(
        "BRIDGE_MAX_UNACKED_BYTES", d.DEFAULT_BRIDGE_MAX_UNACKED_BYTES, v.positive_int,
        "and the same bound in bytes of raw events")
    max_event_bytes: int = setting("MAX_EVENT_BYTES", d.DEFAULT_MAX_EVENT_BYTES, v.positive_int,
                                   "larger events are dead-lettered without being parsed")
    processing_timeout_s: int = setting(
        "PROCESSING_TIMEOUT", d.DEFAULT_PROCESSING_TIMEOUT_S, v.positive_int,
        f"seconds one batch may take in any pool (Dramatiq's time limit); the sinks give up {d.SINK_TIME_MARGIN_S:g} s "
        f"before it, but not before {d.MIN_SINK_BUDGET_SHARE:.0%} of it, with their own error", essential=True)
    retry_max: int = setting("RETRY_MAX", d.DEFAULT_RETRY_MAX, v.non_negative_int,
                             "retries of a transient failure before a batch is dead-lettered")
    retry_min_backoff_ms: int = setting("RETRY_MIN_BACKOFF_MS", d.DEFAULT_RETRY_MIN_BACKOFF_MS, v.positive_int,
                                        "first retry delay; doubles each time, with jitter")
    retry_max_backoff_ms: int = setting("RETRY_MAX_BACKOFF_MS", d.DEFAULT_RETRY_MAX_BACKOFF_MS, v.positive_int,
                                        "the longest retry delay")
    dlq_retention_days: int = setting("DLQ_RETENTION_DAYS", d.DEFAULT_DLQ_RETENTION_DAYS, v.positive_int,
                                      "how long dead letters are kept")
    dlq_max_bytes: int = setting(
        "DLQ_MAX_BYTES", d.DEFAULT_DLQ_MAX_BYTES, v.positive_int, "bytes of Redis the dead-letter queue may hold; "
        "past it, dead letters are counted but not kept (see [docs/operations.md](docs/operations.md))")
    dlq_max_entries: int = setting("DLQ_MAX_ENTRIES", d.DEFAULT_DLQ_MAX_ENTRIES, v.positive_int,
                                   "entries the dead-letter queue may hold; past it, the same")
    dlq_entry_max_bytes: int = setting(
        "DLQ_ENTRY_MAX_BYTES", d.DEFAULT_DLQ_ENTRY_MAX_BYTES, v.positive_int, "a dead letter whose event is larger "
        "keeps only its first KiB (at most this many bytes), its length and its SHA-256 (and cannot be replayed)")
    max_queue_depth: int = setting("MAX_QUEUE_DEPTH", d.DEFAULT_MAX_QUEUE_DEPTH, v.positive_int,
                                   "messages (batches) in the deepest queue above which the bridge stops fetching")
    queue_low_water_percent: int = setting(
        "QUEUE_LOW_WATER_PERCENT", d.DEFAULT_QUEUE_LOW_WATER_PERCENT, v.percent,
        "the bridge resumes when the deepest queue is below this share of `MAX_QUEUE_DEPTH`")
    breaker_failures: int = setting("BREAKER_FAILURES", d.DEFAULT_BREAKER_FAILURES, v.positive_int,
                                    "consecutive connection failures that open a sink's circuit breaker")
    breaker_cooldown_ms: int = setting("BREAKER_COOLDOWN_MS", d.DEFAULT_BREAKER_COOLDOWN_MS, v.positive_int,
                                       "how long an open breaker waits before letting one probe through")
    health_host: str = setting("HEALTH_HOST", "0.0.0.0", v.text,
                               "address the health and metrics endpoints bind to")
    health_port: int = setting("HEALTH_PORT", 8080, v.port_number,
                               "the bridge's `/healthz`, `/readyz` and `/metrics`")
    metrics_port: int = setting("METRICS_PORT", 9191, v.port_number,
                                "a worker pool's `/metrics` (served by Dramatiq's main process)")
    log_level: str = setting("LOG_LEVEL", "INFO", v.choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True),
                             "`DEBUG`, `INFO`, `WARNING` or `ERROR`", essential=True)
    log_format: str = setting("LOG_FORMAT", "auto", v.choice("auto", "json", "text"),
                              "`json` (ECS, one object per line), `text`, `auto`: text in a terminal, JSON otherwise")
    status_metrics_urls: tuple[str, ...] = setting(
        "STATUS_METRICS_URLS", (), v.http_urls,
        "for `etl status`: comma-separated `/metrics` URLs to read breaker and pause states from", text=v.urls_text)
    worker_processes: int | None = setting(
        "WORKER_PROCESSES", None, v.positive_int, "for `bin/worker` / `python -m workers.run`: Dramatiq "
        "processes of the pool started", shown_default="per pool, see below")
    worker_threads: int | None = setting(
        "WORKER_THREADS", None, v.positive_int, "for `bin/worker` / `python -m workers.run`: threads per process",
        shown_default="per pool, see below")

    @property
    def nats_url(self) -> str:
        """``NATS_URL`` as one text: the URLs of ``nats_urls``, comma-separated."""
        return v.urls_text(self.nats_urls)

    @property
    def nats_servers(self) -> list[str]:
        """The URLs of ``NATS_URL`` as the list nats-py takes: seeds of one cluster, any of which will do."""
        return list(self.nats_urls)

    @property
    def graph_password(self) -> str:
        """The graph database's password: ``NEO4J_PASSWORD`` when set, else the backend's default:
        ``d.DEFAULT_NEO4J_PASSWORD`` with Neo4j, none (empty) with FalkorDB."""
        if self.neo4j_password is not None:
            return self.neo4j_password
        return "" if urlsplit(self.neo4j_uri).scheme == FALKOR_SCHEME else d.DEFAULT_NEO4J_PASSWORD

    @property
    def sink_budget_s(self) -> float:
        """Seconds a sink may spend on one call (opening it, a write, a check) before it gives up with its own
        error: ``PROCESSING_TIMEOUT`` less ``d.SINK_TIME_MARGIN_S``, and at least ``d.MIN_SINK_BUDGET_SHARE`` of it.
        Always shorter than the actors' time limit, so a sink reports a failure before Dramatiq interrupts it."""
        timeout_s = float(self.processing_timeout_s)
        return max(timeout_s - d.SINK_TIME_MARGIN_S, timeout_s * d.MIN_SINK_BUDGET_SHARE)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse ``environ`` (usually ``os.environ``). Raises ``ConfigError`` on the first bad value."""
        values = settings_env.read_env(cls, environ)
        # AF_FAKE_RDNS=true predates RDNS_MODE and still means fake; an explicit RDNS_MODE wins. An empty one is
        # none: a compose file passes RDNS_MODE through only when set, and some Compose versions pass it empty.
        if not values.get("rdns_mode"):
            values["rdns_mode"] = "fake" if values.get("fake_rdns") else "off"
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY go together: set both or neither")
        if self.redis_tls_ca and not self.redis_url.startswith("rediss://"):
            raise ConfigError("REDIS_TLS_CA needs a rediss:// REDIS_URL")
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
        credentials.check(self)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, secrets included: for starting child processes. A setting
        without a value (``None``) is left out."""
        return settings_env.env_of(self)

    def redacted(self) -> dict[str, Any]:
        """The settings keyed by environment variable, with secrets hidden; a list as its variable's text."""
        return settings_env.redacted(self)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({inner})"


def exit_on_config_error(message: str) -> NoReturn:
    """The one way a process reports a bad setting: one line on stderr, exit code 2, no traceback."""
    sys.stderr.write(f"configuration error: {message}\n")
    raise SystemExit(EXIT_CONFIG)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """``Settings.from_env`` for a process's entry point: a bad value ends the process with exit code 2."""
    try:
        return Settings.from_env(environ)
    except ConfigError as e:
        exit_on_config_error(str(e))


ENV_VARS = settings_env.env_vars(Settings)
# What ``from_env`` also reads: ``<VAR>_FILE`` of each secret.
SECRET_FILE_VARS = settings_env.secret_file_vars(Settings)

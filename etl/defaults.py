"""The settings' defaults (``etl.config`` declares each setting with one of these), named with their units, and why
each is what it is; also the margin the sinks keep within ``PROCESSING_TIMEOUT``."""

from __future__ import annotations

# Larger batches cut the CPU spent per event in every process (Redis round trips and fsyncs, Dramatiq messages,
# transactions and graph queries are per batch); 500 against 100: docs/performance.md.
DEFAULT_MAX_BATCH_SIZE = 500
DEFAULT_BATCH_LINGER_MS = 50
# One Dramatiq message carries a whole batch: this keeps it small for Redis whatever the events' sizes.
DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
# Un-acked events a bridge replica holds while Redis writes them to disk: with `appendfsync everysec` a check waits
# up to a second, so the bound is what one replica can take in about a second at full speed. The bytes bound keeps
# the replica's memory small whatever the events' sizes.
DEFAULT_BRIDGE_MAX_UNACKED = 20_000
DEFAULT_BRIDGE_MAX_UNACKED_BYTES = 64 * 1024 * 1024
DEFAULT_PROCESSING_TIMEOUT_S = 30
# PostgreSQL connections per worker process: Dramatiq's default thread count. bin/worker sets PG_POOL_SIZE from the
# pool's own thread count (etl/pools.py), since each connection is opened at start and one thread uses one.
DEFAULT_PG_POOL_SIZE = 8
DEFAULT_RETRY_MAX = 8
DEFAULT_RETRY_MIN_BACKOFF_MS = 500
DEFAULT_RETRY_MAX_BACKOFF_MS = 60_000
DEFAULT_DLQ_RETENTION_DAYS = 14
# The dead-letter queue's share of Redis: far below a typical maxmemory, so that a flood of bad events can never
# take the memory the queues need. Past either bound, dead letters are counted but not kept.
DEFAULT_DLQ_MAX_BYTES = 128 * 1024 * 1024
DEFAULT_DLQ_MAX_ENTRIES = 100_000
# An entry whose event is larger keeps only its head, length and SHA-256; normal events are far smaller.
DEFAULT_DLQ_ENTRY_MAX_BYTES = 64 * 1024
# In batches: 40 of DEFAULT_MAX_BATCH_SIZE is the same 20,000 events per queue as 200 batches of 100 were.
DEFAULT_MAX_QUEUE_DEPTH = 40
DEFAULT_QUEUE_LOW_WATER_PERCENT = 50
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_COOLDOWN_MS = 5_000
DEFAULT_NATS_STREAM_REPLICAS = 1
# Stream limits. Each stream's max_bytes is reserved from the NATS server's JetStream storage when it is created, so
# the defaults stay small enough for a developer's machine; the raw stream's is the backlog a paused pipeline
# can take. Enriched events are for downstream readers, not an archive.
DEFAULT_RAW_STREAM_MAX_BYTES = 4 * 1024**3
DEFAULT_ENRICHED_STREAM_MAX_BYTES = 1024**3
DEFAULT_ENRICHED_STREAM_MAX_AGE_S = 7 * 24 * 3600
# Retention (etl.retention): how often a pool looks for expired data, and how much one statement removes. A batch
# is one statement and one transaction, short enough that the graph server's writer (FalkorDB runs one write at a
# time per graph) or the table's inserts are never held for long; PostgreSQL rows are far cheaper than graph nodes.
DEFAULT_RETENTION_INTERVAL_S = 10
DEFAULT_GRAPH_RETENTION_BATCH = 2_000
DEFAULT_TIMESCALE_RETENTION_BATCH = 10_000
DEFAULT_RDNS_TIMEOUT_MS = 500
DEFAULT_RDNS_BATCH_BUDGET_MS = 1_000
DEFAULT_RDNS_CACHE_SIZE = 100_000
# Above what RDNS_CACHE_SIZE entries of ordinary addresses and names take, so that the entry limit governs them;
# the byte bound is for long names (a PTR name may be written in up to about 1,000 characters).
DEFAULT_RDNS_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_RDNS_MIN_TTL_S = 60
DEFAULT_RDNS_MAX_TTL_S = 86_400
DEFAULT_RDNS_NEGATIVE_TTL_S = 30
# How stale a lookup table may be after its file changes. A check only stats the files (a directory: lists it), so
# it costs nothing worth tuning; feeds are updated every few minutes at most.
DEFAULT_LOOKUP_RELOAD_S = 30
DEFAULT_REDIS_SENTINEL_MASTER = "etl"
# The original AegisFlux's Neo4j password. A FalkorDB runs without one unless told otherwise (requirepass), so its
# default is none: a local FalkorDB keeps working, and one with a password gets it from NEO4J_PASSWORD(_FILE).
DEFAULT_NEO4J_PASSWORD = "password"
# Dramatiq's TimeLimit interrupts an actor's thread once PROCESSING_TIMEOUT has passed (it looks once a second).
# Every sink gives up this much earlier, so that the actor fails with the sink's own error (retried, and counted by
# the sink's circuit breaker) and has time left to raise it.
SINK_TIME_MARGIN_S = 5.0
# Under a short PROCESSING_TIMEOUT the margin shrinks: the sinks keep at least this share of it.
MIN_SINK_BUDGET_SHARE = 0.8

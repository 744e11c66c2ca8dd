"""Every Prometheus metric of the service, defined once. Served on ``/metrics`` by each process.

Label values are bounded sets (stages, sinks, exception type names, lookup tables, the sources of the feeds an
operator configures), never event data.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("etl_events_total", "Events that passed a stage", ["stage"])
DEAD_LETTERS = Counter("etl_dead_letters_total", "Events dead-lettered, by stage and reason type",
                       ["stage", "reason"])
DEAD_LETTERS_DROPPED = Counter("etl_dead_letters_dropped_total",
                               "Dead letters counted but not kept because the dead-letter queue was full, by stage "
                               "and reason type (also counted in etl_dead_letters_total)", ["stage", "reason"])
# What the dead-letter queue holds now (replay, purge and retention lower it), read from the store by the bridge
# (etl.pipeline.redisgauges): the counter above only says what happened.
DEAD_LETTERS_STORED = Gauge("etl_dead_letters_stored", "Entries in the dead-letter queue now (etl dlq list)",
                            multiprocess_mode="livemax")
RETRIES = Counter("etl_retries_total", "Batches scheduled for a retry, by stage: the bridge's or a pool's",
                  ["stage"])
BATCH_SIZE = Histogram("etl_batch_size", "Events per batch, by stage", ["stage"],
                       buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000))
WRITE_SECONDS = Histogram("etl_sink_write_seconds", "Time to write one batch to a sink", ["sink"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
# Worker pools export through Dramatiq's multiprocess collector: a gauge reports the highest value of the live
# processes (the worst breaker), counters and histograms add up.
BREAKER_STATE = Gauge("etl_circuit_breaker_state", "Circuit breaker per sink: 0 closed, 1 half-open, 2 open",
                      ["sink"], multiprocess_mode="livemax")
BRIDGE_PAUSED = Gauge("etl_bridge_paused", "1 while the bridge fetches nothing: a queue is at MAX_QUEUE_DEPTH, or "
                      "Redis refuses writes or cannot be reached", multiprocess_mode="livemax")
BRIDGE_UNACKED = Gauge("etl_bridge_unacked_events", "Events a bridge took from NATS and has not acked yet: being "
                       "enqueued or waiting for Redis's disk (bounded by BRIDGE_MAX_UNACKED)",
                       multiprocess_mode="livesum")
QUEUE_DEPTH = Gauge("etl_queue_depth", "Messages not yet acked in each Dramatiq queue", ["queue"],
                    multiprocess_mode="livemax")
# Dramatiq's own dramatiq_delayed_messages_inprogress counts up under the delay queue's name and down under the
# queue's, in whichever process, so it drifts: this one reads Redis, as etl_queue_depth does.
QUEUE_DELAYED = Gauge("etl_queue_delayed", "Messages of each Dramatiq queue in its delay queue: retries waiting for "
                      "their backoff, batches an open breaker put off (counted in etl_queue_depth too)", ["queue"],
                      multiprocess_mode="livemax")
CONSUMER_LAG = Gauge("etl_consumer_lag", "Raw events in JetStream not yet delivered to any bridge",
                     multiprocess_mode="livemax")
CONSUMER_ACK_PENDING = Gauge("etl_consumer_ack_pending", "Raw events delivered to bridges and not yet acked",
                             multiprocess_mode="livemax")
# Neo4j's driver runs a write transaction again by itself after a deadlock, a lock time-out or a lost connection:
# counted here, since no batch retry (etl_retries_total) shows it. Labelled by Neo4j's status code, a fixed set.
GRAPH_WRITE_RERUNS = Counter("etl_graph_write_reruns_total",
                             "Graph write transactions Neo4j's driver ran again after the attempt before failed, "
                             "by that failure's Neo4j code (e.g. DeadlockDetected; 'other' at begin, commit or "
                             "on the connection)", ["code"])
# Reverse DNS in ptr mode (etl.rdns.ptr). Hit ratio: rate of result="hit" over the rate of both results.
RDNS_LOOKUPS = Counter("etl_rdns_lookups_total", "PTR queries made (cache misses), by result: ok, nxdomain, "
                       "nodata, servfail, timeout, error", ["result"])
RDNS_CACHE_REQUESTS = Counter("etl_rdns_cache_requests_total",
                              "Distinct addresses of a batch looked up in the reverse-DNS cache, by result: hit "
                              "or miss", ["result"])
RDNS_LOOKUP_SECONDS = Histogram("etl_rdns_lookup_seconds", "Time one PTR lookup took, failures included",
                                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
RDNS_BUDGET_EXHAUSTED = Counter("etl_rdns_budget_exhausted_total",
                                "Addresses left null because their batch's DNS time budget ran out")
RDNS_CACHE_ENTRIES = Gauge("etl_rdns_cache_entries", "Entries in the reverse-DNS cache", multiprocess_mode="livesum")
RDNS_CACHE_BYTES = Gauge("etl_rdns_cache_bytes", "Bytes the reverse-DNS cache holds, as it counts them",
                         multiprocess_mode="livesum")
# Retention (etl.retention): what it removed, and when it last ran. A stale last run means retention is failing
# (its warnings say why) or not running.
RETENTION_REMOVED = Counter("etl_retention_removed_total",
                            "Expired events removed by retention, by sink: Event nodes (graph) or rows (timescale)",
                            ["sink"])
RETENTION_LAST_RUN = Gauge("etl_retention_last_run_timestamp_seconds",
                           "Unix time the last successful retention run of a sink ended", ["sink"],
                           multiprocess_mode="max")
RETENTION_LAST_RUN_SECONDS = Gauge("etl_retention_last_run_seconds", "How long the last retention run of a sink "
                                   "took", ["sink"], multiprocess_mode="mostrecent")
# Lookup tables (etl.lookups.live), by table: intel, assets, geoip_city, geoip_asn. Each enrich process sets its
# gauges when it loads a table: the largest table and the oldest source among the processes are what to watch.
LOOKUP_ENTRIES = Gauge("etl_lookup_entries", "Entries in the lookup table in use: indicators, asset prefixes, or "
                       "a GeoIP database's search-tree nodes", ["table"], multiprocess_mode="livemax")
LOOKUP_SOURCE_TIMESTAMP = Gauge("etl_lookup_source_timestamp_seconds",
                                "Unix mtime of the newest file the lookup table in use was loaded from (its age: "
                                "time() minus this)", ["table"], multiprocess_mode="livemin")
LOOKUP_RELOAD_FAILURES = Counter("etl_lookup_reload_failures_total",
                                 "Versions of a lookup table's files that failed to load (each once, however often "
                                 "tried again): the table loaded before was kept (or none, at the start)", ["table"])
# 1 from a failed load of a table's current files until they (or newer ones) load: unlike the failures counted,
# it lasts as long as the table in use is older than its files, or absent.
LOOKUP_TABLE_FAILING = Gauge("etl_lookup_table_failing", "1 while the lookup table's current files failed to load "
                             "and the table in use is older (or absent), else 0", ["table"],
                             multiprocess_mode="livemax")
LOOKUP_DISCARDED_LOADS = Counter("etl_lookup_discarded_loads_total",
                                 "Loads of a lookup table discarded because a file changed in place while it was "
                                 "read (tried again at the next check)", ["table"])
LOOKUP_SKIPPED_LINES = Gauge("etl_lookup_skipped_lines", "Malformed lines or objects skipped in the lookup table in "
                             "use", ["table"], multiprocess_mode="livemax")
# Labelled by the feed's source (a feed names it, else its file's name) and the indicator's type: bounded by the
# feeds an operator configures, not by event data.
INTEL_MATCHES = Counter("etl_intel_matches_total", "Indicator matches in enriched events sent to the sinks (counted "
                        "once they are sent; none of events dead-lettered), by feed source and indicator type",
                        ["source", "type"])

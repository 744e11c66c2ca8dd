"""The worker pools: one Dramatiq queue each, scaled on its own.

Each pool is ``dramatiq etl.actors --queues <queue>`` with its own processes and threads. The defaults suit one
small machine; ``WORKER_PROCESSES`` and ``WORKER_THREADS`` override them for the pool being started.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from etl.broker import QUEUE_ENRICH, QUEUE_GRAPH, QUEUE_PUBLISH, QUEUE_TIMESCALE, time_limit_ms
from etl.config import Settings
from etl.errors import ConfigError
from etl.sinks.graph.backend import FALKOR_SCHEME

# Dramatiq's Redis consumer treats "every prefetched message still in progress" like an empty queue and backs off
# exponentially, up to the worker timeout. With one message per thread, a thread that finished its batch then
# waited for that sleep (about as long as the batch took): alone, the graph pool merged about 6,000 events/s with
# one and 10,800 with two (bench/stages.py, batches of 500). One message in reserve per thread keeps it busy.
PREFETCH_PER_THREAD = 2
# A stopping worker's threads get one batch's time limit (PROCESSING_TIMEOUT) plus this.
SHUTDOWN_MARGIN_MS = 5_000
# The longest that backoff may sleep, in ms (Dramatiq's default: 1,000): an idle pool notices new work within it.
WORKER_TIMEOUT_MS = 100


@dataclass(frozen=True)
class Pool:
    name: str
    queue: str
    processes: int
    threads: int


POOLS: dict[str, Pool] = {
    "enrich": Pool("enrich", QUEUE_ENRICH, processes=1, threads=2),
    # Publishing is Python CPU under one GIL per process: decoding the batch, encoding the events (Dramatiq's
    # threads), then the frames and the stream's acks (the sink's event loop thread). Alone, one process published
    # 69,500-75,000 events/s with 2 threads and 76,000-79,000 with 3 or 4; two processes of two threads
    # 87,000-104,000, at the same CPU per event. End to end on two cores the second process cost nothing
    # measurable (11,868 and 12,034 events/s against 12,044 and 11,914, interleaved), about 50 MiB of memory.
    "publish": Pool("publish", QUEUE_PUBLISH, processes=2, threads=2),
    # Decoding batches and formatting rows is Python CPU, one GIL per process, beside PostgreSQL's COPY: alone, two
    # processes of two threads stored 88,900 and 89,300 events/s against 78,700 and 80,800 for one of four
    # (interleaved), at 1 µs more CPU per event; end to end no measurable change (11,780-11,983 events/s against
    # 11,777-12,013). PG_POOL_SIZE follows the threads: six PostgreSQL connections in all, where one process of
    # four threads opened eight.
    "timescale": Pool("timescale", QUEUE_TIMESCALE, processes=2, threads=2),
    # On Neo4j (the production default), two processes of one thread. Measured on hot hub nodes and on the
    # generator's events alike (bench/run; figures in docs/neo4j.md): two writers beat one, and two processes beat
    # two threads of one process, since the driver packs rows in Python under one GIL per process; four threads
    # gained nothing more and met deadlocks on hub nodes (run again by the driver, etl_graph_write_reruns_total).
    "graph": Pool("graph", QUEUE_GRAPH, processes=2, threads=1),
}
# FalkorDB runs one write query at a time per graph, so a second process adds little there: one process, where a
# second thread builds the next batch's query while the server runs one (see pool_size).
FALKOR_GRAPH_POOL = Pool("graph", QUEUE_GRAPH, processes=1, threads=2)


def dramatiq_command(pool_name: str, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that run pool ``pool_name``.

    Prefetch, of ready and of delayed (retrying) messages alike, is bounded to ``PREFETCH_PER_THREAD`` batches per
    thread: Redis, not the worker's memory, is where the backlog waits, yet a thread that finishes a batch finds
    the next one already fetched (see ``PREFETCH_PER_THREAD``). Raises ``ConfigError`` for an unknown pool or a
    bad setting in ``env``.
    """
    if pool_name not in POOLS:
        raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {pool_name!r}")
    settings = Settings.from_env(env)
    pool = pool_size(POOLS[pool_name], env)
    processes = settings.worker_processes or pool.processes
    threads = settings.worker_threads or pool.threads
    argv = [sys.executable, "-m", "dramatiq", "etl.actors", "--queues", pool.queue,
            "--processes", str(processes), "--threads", str(threads),
            "--worker-shutdown-timeout", str(shutdown_timeout_ms(env))]
    prefetch = str(threads * PREFETCH_PER_THREAD)
    extra = {"dramatiq_queue_prefetch": prefetch, "dramatiq_delay_queue_prefetch": prefetch,
             "dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS), **_metrics_env(pool.name, settings)}
    if pool.name == "timescale" and "PG_POOL_SIZE" not in env:
        # The sink opens its whole pool at start: one connection per thread, and one for health checks.
        extra["PG_POOL_SIZE"] = str(threads + 1)
    return argv, extra


def pool_size(pool: Pool, env: Mapping[str, str]) -> Pool:
    """The pool's default processes and threads, before ``WORKER_PROCESSES`` and ``WORKER_THREADS``: the graph
    pool's depend on the server ``NEO4J_URI`` names (``FALKOR_GRAPH_POOL`` for FalkorDB)."""
    if pool.name == "graph" and urlsplit(Settings.from_env(env).neo4j_uri).scheme == FALKOR_SCHEME:
        return FALKOR_GRAPH_POOL
    return pool


def shutdown_timeout_ms(env: Mapping[str, str]) -> int:
    """How long a stopping worker waits for its threads: one batch's time limit and a margin. Past it the process
    exits anyway, which is safe (its unacked batches go back to their queue) and keeps a worker whose Redis is gone
    for good from hanging in its shutdown for Dramatiq's default of ten minutes."""
    return time_limit_ms(Settings.from_env(env)) + SHUTDOWN_MARGIN_MS


def _metrics_env(pool_name: str, settings: Settings) -> dict[str, str]:
    """Where the pool serves its metrics: ``HEALTH_HOST:METRICS_PORT``, from the multiprocess directory of this
    pool and port, emptied first (files left by an earlier run would carry its processes' counters). One directory
    per pool and port, not one per start, so restarts do not pile directories up in the temp dir."""
    host = settings.health_host
    port = str(settings.metrics_port)
    directory = metrics_dir(pool_name, port)
    return {"dramatiq_prom_host": host, "dramatiq_prom_port": port,
            "dramatiq_prom_db": str(directory), "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def metrics_dir(pool_name: str, port: str) -> Path:
    """The pool's multiprocess metrics directory, created empty. Two pools never share a port on one host, so
    emptying it cannot touch a live pool's files."""
    directory = Path(tempfile.gettempdir()) / f"etl-metrics-{pool_name}-{port}"
    directory.mkdir(mode=0o700, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return directory

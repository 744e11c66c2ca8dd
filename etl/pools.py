"""The worker pools: one Dramatiq queue each, scaled on its own.

Each pool is ``dramatiq etl.actors --queues <queue>`` with its own processes and threads. The defaults suit one
small machine; ``WORKER_PROCESSES`` and ``WORKER_THREADS`` override them for the pool being started.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from etl.broker import time_limit_ms
from etl.config import Settings
from etl.errors import ConfigError
from etl.stages import BY_NAME, NAMES

# Dramatiq's Redis consumer treats "every prefetched message still in progress" like an empty queue and backs off
# exponentially, up to the worker timeout: a thread that finished its batch then waited about as long as the batch
# took. One message in reserve per thread keeps it busy (docs/performance.md).
PREFETCH_PER_THREAD = 2
# A stopping worker's threads get one batch's time limit (PROCESSING_TIMEOUT) plus this.
SHUTDOWN_MARGIN_MS = 5_000
# The longest that backoff may sleep, in ms (Dramatiq's default: 1,000): an idle pool notices new work within it.
WORKER_TIMEOUT_MS = 100


def dramatiq_command(pool_name: str, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that run pool ``pool_name``.

    Prefetch, of ready and of delayed (retrying) messages alike, is bounded to ``PREFETCH_PER_THREAD`` batches per
    thread: Redis, not the worker's memory, is where the backlog waits, yet a thread that finishes a batch finds
    the next one already fetched (see ``PREFETCH_PER_THREAD``). Raises ``ConfigError`` for an unknown pool or a
    bad setting in ``env``.
    """
    if pool_name not in BY_NAME:
        raise ConfigError(f"pool must be one of {', '.join(NAMES)}, got {pool_name!r}")
    settings = Settings.from_env(env)
    stage = BY_NAME[pool_name]
    size = stage.pool_size(settings)
    processes = settings.worker_processes or size.processes
    threads = settings.worker_threads or size.threads
    argv = [sys.executable, "-m", "dramatiq", "etl.actors", "--queues", stage.queue,
            "--processes", str(processes), "--threads", str(threads),
            "--worker-shutdown-timeout", str(shutdown_timeout_ms(env))]
    prefetch = str(threads * PREFETCH_PER_THREAD)
    extra = {"dramatiq_queue_prefetch": prefetch, "dramatiq_delay_queue_prefetch": prefetch,
             "dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS), **_metrics_env(stage.name, settings)}
    if stage.worker_env is not None:
        extra.update({k: v for k, v in stage.worker_env(threads).items() if k not in env})
    return argv, extra


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

"""The worker pools on a full Redis (``maxmemory`` with ``noeviction``): every write is refused, acks and the
re-enqueue of a retry included. The pools must wait it out as they wait out an unreachable Redis: no retry lost,
none moved to Dramatiq's own dead-letter queue (``.XQ``), and no consumer thread given up, which would leave the
retries it delays stranded in this worker's ack set."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.pipeline.backlog import queue_backlogs
from etl.stages import TIMESCALE
from tests.integration.accounting import by_id, check_postgres, publish_all
from tests.integration.faults_support import raw_consumer, wait_settled, wait_stored
from tests.integration.test_redis_full import fill
from tests.waiting import wait_for

WARM_UP = 50
HELD = 300
WAIT_S = 60.0
REFUSED = "used memory > 'maxmemory'"
# The timescale pool's consumers, of its queue and of its delay queue (retries waiting for their backoff).
CONSUMERS = ("ConsumerThread(timescale)", "ConsumerThread(timescale.DQ)")


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[devservers.Server]:
    server = devservers.redis_server(tmp_path / "redis", extra_args=["--maxmemory-policy", "noeviction"]).start()
    yield server
    server.stop()


def timescale_log(pipeline: Pipeline) -> str:
    return Path(pipeline.log_dir / "worker-timescale.log").read_text(errors="replace")


def refused_to_every_consumer(pipeline: Pipeline) -> bool:
    """Each of the timescale pool's consumers has logged a write Redis refused."""
    refused = [line for line in timescale_log(pipeline).splitlines() if REFUSED in line]
    return all(any(f'{consumer}"' in line for line in refused) for consumer in CONSUMERS)


def dramatiq_dead_letters(client: redis.Redis) -> dict[str, int]:
    """Messages in Dramatiq's own dead-letter queues, where a failed ``nack`` would put them."""
    return {key.decode(): int(client.zcard(key)) for key in client.scan_iter("*.XQ")}


def test_the_pools_wait_out_a_full_redis_without_losing_a_retry(
        make_settings: Callable[..., Settings], small_redis: devservers.Server,
        private_postgres: devservers.Server, start_pipeline: Callable[..., Pipeline]) -> None:
    # The breaker never opens (it would delay batches without a retry) and the retries outlast both outages.
    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{small_redis.port}/0", PG_PORT=private_postgres.port,
                             MAX_BATCH_SIZE=25, BATCH_LINGER_MS=20, BREAKER_FAILURES=1_000_000, RETRY_MAX=1_000,
                             RETRY_MIN_BACKOFF_MS=200, RETRY_MAX_BACKOFF_MS=1000)
    client = redis.Redis(port=small_redis.port)
    events = list(generate(WARM_UP + HELD, hosts=10, seed=19))
    pipeline = start_pipeline(settings)
    try:
        asyncio.run(publish_all(settings, events[:WARM_UP]))
        wait_stored(settings, pipeline, at_least=WARM_UP)
        private_postgres.stop()
        asyncio.run(publish_all(settings, events[WARM_UP:]))
        # Every event enqueued (the bridge acked them all), and timescale retries waiting in its delay queue.
        wait_for(lambda: raw_consumer(settings).num_ack_pending == 0 and raw_consumer(settings).num_pending == 0
                 and queue_backlogs(client)[TIMESCALE.queue].delayed > 0,
                 timeout_s=WAIT_S, describe=lambda: pipeline.log_tail("worker-timescale"))

        fill(client)
        wait_for(lambda: refused_to_every_consumer(pipeline), timeout_s=WAIT_S,
                 describe=lambda: pipeline.log_tail("worker-timescale"))
        assert all(pipeline.alive().values()), {name: pipeline.log_tail(name) for name in pipeline.procs}

        client.delete("ballast")
        private_postgres.start()
        counts = wait_settled(settings, pipeline, timeout_s=WAIT_S)
        assert counts.totals["stored"] == WARM_UP + HELD, counts
        assert not any(counts.dead_lettered.values()), counts
        assert not any(counts.queued.values()), counts  # the delay queues drained too
        assert not any(dramatiq_dead_letters(client).values()), dramatiq_dead_letters(client)
        check_postgres(settings, by_id(events))
    finally:
        client.config_set("maxmemory", 0)
        client.delete("ballast")
        client.close()

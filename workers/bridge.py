"""``python -m workers.bridge``: the NATS -> Dramatiq bridge process, with its health and metrics endpoints."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import redis

from etl.broker import build_broker, redis_client
from etl.config import load_settings
from etl.pipeline.backlog import Backlog, deepest, queue_depths
from etl.runtime import gctune

log = logging.getLogger("workers.bridge")
REDIS_PING_CACHE_S = 1.0


def backlog_probe(client: redis.Redis) -> Backlog:
    """The bridge's backlog: the deepest Dramatiq queue, read in one round trip (the depth gauges are set apart, by
    ``etl.pipeline.redisgauges``, also while the bridge has nothing to take).

    The probe raises ``redis.RedisError`` when Redis does not answer; the bridge then holds its intake.
    """
    return lambda: deepest(queue_depths(client))


def redis_reachable(client: redis.Redis) -> Callable[[], str | None]:
    """A readiness check of Redis, cached for a second so that frequent probes cost one PING."""
    last: dict[str, object] = {"at": float("-inf"), "reason": None}

    def check() -> str | None:
        now = time.monotonic()
        if now - float(last["at"]) >= REDIS_PING_CACHE_S:  # type: ignore[arg-type]
            try:
                client.ping()
                last["reason"] = None
            except redis.RedisError as e:
                last["reason"] = f"Redis is unreachable: {e}"
            last["at"] = now
        return last["reason"]  # type: ignore[return-value]

    return check


def main() -> int:
    settings = load_settings(os.environ)
    from etl.runtime.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format, service="bridge")
    from etl.ops.health import HealthServer
    from etl.pipeline.bridge import Bridge, run_until_signalled
    from etl.pipeline.dlq import DeadLetterStore
    from etl.pipeline.handoff import Handoff
    from etl.pipeline.redisgauges import RedisGauges

    broker = build_broker(settings)  # only to enqueue: the actors and their sinks live in the worker pools
    client = redis_client(settings)
    handoff = Handoff.from_settings(broker, settings)

    def enqueue(batch: list[bytes]) -> None:
        # The bridge holds the one NATS connection whose INFO says what the publish pool's server accepts.
        handoff.enqueue_raw(batch, max_payload=bridge.max_payload)

    bridge = Bridge(settings, enqueue, sync=handoff.sync, backlog=backlog_probe(client),
                    ack_wait_s=settings.nats_ack_wait_s)
    redis_check = redis_reachable(client)
    health = HealthServer(settings.health_host, settings.health_port,
                          lambda: bridge.not_ready_reason() or redis_check()).start()
    gauges = RedisGauges(client, DeadLetterStore.from_settings(client, settings)).start()
    gctune.tune()  # after start-up, like the worker pools (etl.actors)
    try:
        run_until_signalled(bridge)
    finally:
        gauges.stop()
        health.stop()
        client.close()
        broker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

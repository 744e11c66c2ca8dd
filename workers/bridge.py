"""``python -m workers.bridge``: the NATS -> Dramatiq bridge process."""

from __future__ import annotations

import logging
import os
import sys

import redis

from etl.backlog import Backlog, deepest, queue_depths
from etl.broker import redis_client
from etl.config import Settings
from etl.errors import ConfigError
from etl.metrics import QUEUE_DEPTH


def backlog_probe(client: redis.Redis) -> Backlog:
    """The bridge's backlog: the deepest Dramatiq queue, read in one round trip that also sets the depth gauges.

    The probe raises ``redis.RedisError`` when Redis does not answer; the bridge then holds its intake.
    """

    def probe() -> int:
        depths = queue_depths(client)
        for queue, depth in depths.items():
            QUEUE_DEPTH.labels(queue=queue).set(depth)
        return deepest(depths)

    return probe


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as e:
        sys.stderr.write(f"configuration error: {e}\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from etl.actors import enqueue_raw  # sets up the broker the batches go to
    from etl.bridge import run_bridge

    client = redis_client(settings)
    try:
        run_bridge(settings, enqueue_raw, backlog=backlog_probe(client))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

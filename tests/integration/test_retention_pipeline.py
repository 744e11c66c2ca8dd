"""Retention as users run it: the graph and timescale pools started as production starts them (``dramatiq
etl.actors --queues <pool>``) remove expired events by themselves, and log each run that removed some."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson

from etl.config import Settings
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from tests.integration.accounting import publish_all
from tests.waiting import wait_for

OLD, NEW = 300, 200
DAY_MS = 86_400_000
POOLS = ("enrich", "timescale", "graph")  # publishing has no retention: its stream's max_age


def events(prefix: str, count: int, base_ms: int) -> list[bytes]:
    out = []
    for i, raw in enumerate(generate(count, hosts=5, base_ms=base_ms)):
        event = orjson.loads(raw)
        event["id"] = f"{prefix}-{i}"
        out.append(orjson.dumps(event))
    return out


def test_the_pools_remove_expired_events_by_themselves(make_settings: Callable[..., Settings],
                                                       start_pipeline: Callable[..., Pipeline]) -> None:
    settings = make_settings(GRAPH_RETENTION="1d", TIMESCALE_RETENTION="1d", RETENTION_INTERVAL="1s",
                             MAX_BATCH_SIZE=50, BATCH_LINGER_MS=20)
    pipeline = start_pipeline(settings, pools=POOLS)
    now_ms = int(time.time() * 1000)
    asyncio.run(publish_all(settings, events("old", OLD, now_ms - 2 * DAY_MS) + events("new", NEW, now_ms)))

    def only_new_left() -> bool:
        counts = report.collect(settings)
        busy = any(depth for queue, depth in counts.queued.items() if queue in POOLS)
        return (counts.totals["stored"], counts.totals["merged"]) == (NEW, NEW) and not busy

    wait_for(only_new_left, timeout_s=60, describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    for pool in ("graph", "timescale"):
        assert "retention removed" in pipeline.log_tail(f"worker-{pool}", lines=500), pipeline.log_tail(
            f"worker-{pool}")

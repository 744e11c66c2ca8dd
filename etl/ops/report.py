"""What reached each sink: counts read from the servers themselves, for the local default and the tests."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2
from psycopg2 import sql

from etl.broker import redis_client
from etl.config import Settings
from etl.pipeline.backlog import queue_depths
from etl.pipeline.dlq import DeadLetterStore

SECONDS_PER_DAY = 86_400


@dataclass
class Counts:
    stored: int = 0
    merged: int = 0
    published: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stored_count(settings: Settings) -> int:
    from etl.sinks.timescale import connection_params

    conn = psycopg2.connect(**connection_params(settings), connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (settings.pg_table,))
            row = cur.fetchone()
            if row is None or row[0] is None:
                return 0
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(settings.pg_table)))
            result = cur.fetchone()
            return int(result[0]) if result else 0
    finally:
        conn.close()


def merged_count(settings: Settings) -> int:
    """Event nodes in the graph, read without the sink's schema set-up: looking must not write."""
    from etl.sinks.graph.sink import connect_backend

    backend = connect_backend(settings)
    try:
        return backend.count_events()
    finally:
        backend.close()


def published_count(settings: Settings) -> int:
    """Messages in the enriched stream (0 when no stream captures the enriched subject)."""
    if not settings.nats_enriched_stream:
        return 0

    async def count() -> int:
        from nats.js.errors import NotFoundError

        from etl.natsio.conn import connect

        nc = await connect(settings, name="etl-report")
        try:
            info = await nc.jetstream().stream_info(settings.nats_enriched_stream)
            return int(info.state.messages)
        except NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def queued_counts(settings: Settings) -> dict[str, int]:
    """Messages not yet acked in each Dramatiq queue: waiting, in flight and delayed retries."""
    with redis_client(settings) as client:
        return queue_depths(client)


def dead_letter_counts(settings: Settings) -> dict[str, int]:
    """Dead letters by stage."""
    with redis_client(settings) as client:
        return DeadLetterStore(client, retention_s=settings.dlq_retention_days * SECONDS_PER_DAY).counts_by_stage()


def collect(settings: Settings) -> Counts:
    return Counts(stored=stored_count(settings), merged=merged_count(settings),
                  published=published_count(settings), dead_lettered=dead_letter_counts(settings),
                  queued=queued_counts(settings))

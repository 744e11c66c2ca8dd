"""Load for the benchmarks: events shaped as the producers send them (``etl.dev.corpus``; ``--shape simple`` for
the one flat shape) published at full speed or at a fixed rate, and the counts in every sink that tell when they
have all arrived. A corpus of the producers' shape holds duplicates, which every sink holds once: wait for
``distinct`` events, not for as many as were published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import orjson
import psycopg2
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from etl.config import Settings
from etl.dev import corpus
from etl.natsio.conn import connect
from etl.natsio.internals import publish_plain
from etl.pipeline.rawstream import ensure_raw_stream
from etl.sinks.graph.sink import GraphSink

HOSTS = 50
LATENCY_TEMPLATES = 5000  # events of the corpus's shape a fixed-rate run cycles through, built before it starts
PUBLISH_WINDOW = 2000  # JetStream publishes in flight before waiting for their acks
MAX_UNSTORED = 20_000  # core publishes sent and not yet stored by the stream, at most
TICK_S = 0.01
STORE_TIMEOUT_S = 30.0
POLL_S = 0.1


def events(count: int, *, seed: int, shape: str = corpus.PRODUCERS, duplicate_every: int | None = None) -> list[bytes]:
    """``count`` raw events of ``shape`` (``etl.dev.corpus``; duplicates at the shape's own rate unless
    ``duplicate_every`` says), generated before any clock starts. Ids carry the time of ``base_ms`` or are drawn
    from ``seed``, which moves ``base_ms`` by a thousand seconds: two seeds never share an id."""
    base_ms = int(time.time() * 1000) + seed * 1_000_000
    return list(corpus.generate(count, shape=shape, hosts=HOSTS, seed=seed, base_ms=base_ms,
                                duplicate_every=duplicate_every))


def distinct(payloads: Sequence[bytes]) -> int:
    """How many events each sink holds once ``payloads`` are all through: a duplicate is the same bytes again."""
    return len(set(payloads))


def unique(payloads: Sequence[bytes]) -> list[bytes]:
    """``payloads`` without their duplicates, in order: for the measurements that count every event they write."""
    return list(dict.fromkeys(payloads))


async def open_js(settings: Settings) -> tuple[Client, JetStreamContext]:
    nc = await connect(settings, "etl-bench")
    js = nc.jetstream()
    await ensure_raw_stream(js, settings)
    return nc, js


async def publish(js: JetStreamContext, subject: str, payloads: Sequence[bytes]) -> None:
    """Publish as fast as JetStream acknowledges, with up to ``PUBLISH_WINDOW`` acks outstanding."""
    for start in range(0, len(payloads), PUBLISH_WINDOW):
        futures = [await js.publish_async(subject, p) for p in payloads[start:start + PUBLISH_WINDOW]]
        await asyncio.gather(*futures)


async def blast(nc: Client, js: JetStreamContext, stream: str, subject: str, payloads: Sequence[bytes]) -> None:
    """Publish at full speed with core NATS into the subject ``stream`` captures, one flush per
    ``PUBLISH_WINDOW``, then wait until the stream's sequence numbers show it stored every one.

    The load generator shares this machine's two cores with the pipeline: a JetStream ack per event cost it
    19 µs of CPU per event here, nats-py's core publish about 5, and a window's frames written at once
    (``internals.publish_plain``) about 1. Raises ``RuntimeError`` if the stream has not stored them
    all after ``STORE_TIMEOUT_S``.
    """
    before = (await js.stream_info(stream)).state.last_seq

    async def stored() -> int:
        return int((await js.stream_info(stream)).state.last_seq) - before

    for start in range(0, len(payloads), PUBLISH_WINDOW):
        window = payloads[start:start + PUBLISH_WINDOW]
        await publish_plain(nc, subject, window)
        await nc.flush()
        # Nothing slows core publishes down: the server drops what the stream cannot take in time (a million
        # events at full speed lost a tenth). Stay at most MAX_UNSTORED ahead of what the stream stored.
        while start + len(window) - await stored() > MAX_UNSTORED:
            await asyncio.sleep(TICK_S)
    # A flush means the server has read them all; the stream stores them a moment later.
    deadline = time.monotonic() + STORE_TIMEOUT_S
    while (done := await stored()) < len(payloads):
        if time.monotonic() > deadline:
            raise RuntimeError(f"stream {stream} stored {done} of {len(payloads)} events published")
        await asyncio.sleep(TICK_S)


async def publish_at(js: JetStreamContext, subject: str, rate: float, duration_s: float, *, seed: int,
                     prefix: str, shape: str = corpus.PRODUCERS) -> int:
    """Publish ``rate`` distinct events/s of ``shape`` for ``duration_s``; each event's ``timestamp`` is its
    publish time (ms), so the sinks' own clocks give its latency. Returns how many were published."""
    templates = list(corpus.events(LATENCY_TEMPLATES, shape=shape, hosts=HOSTS, seed=seed))
    start = time.monotonic()
    sent = 0
    pending: list[asyncio.Future[object]] = []
    while (elapsed := time.monotonic() - start) < duration_s:
        due = int(rate * elapsed) - sent
        for _ in range(max(0, due)):
            event = dict(templates[sent % LATENCY_TEMPLATES])
            event["id"] = f"{prefix}-{sent}"
            event["timestamp"] = int(time.time() * 1000)
            pending.append(await js.publish_async(subject, orjson.dumps(event)))
            sent += 1
        if len(pending) > PUBLISH_WINDOW:
            await asyncio.gather(*pending)
            pending.clear()
        await asyncio.sleep(TICK_S)
    await asyncio.gather(*pending)
    return sent


class SinkCounts:
    """Reads how many events each sink holds: rows in PostgreSQL, Event nodes in the graph, messages on the
    enriched stream."""

    def __init__(self, settings: Settings, js: JetStreamContext) -> None:
        self._settings = settings
        self._js = js
        self._pg = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=settings.pg_db,
                                    user="postgres")
        self._pg.autocommit = True
        self._graph = GraphSink(settings)  # only its count of Event nodes, on either backend

    def close(self) -> None:
        self._pg.close()
        self._graph.close()

    def stored(self) -> int:
        with self._pg.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{self._settings.pg_table}"')
            return int(cur.fetchone()[0])  # type: ignore[index]

    def merged(self) -> int:
        return self._graph.count_events()

    async def published(self) -> int:
        try:
            return int((await self._js.stream_info(self._settings.nats_enriched_stream)).state.messages)
        except NotFoundError:
            return 0

    async def all(self) -> tuple[int, int, int]:
        return self.stored(), self.merged(), await self.published()

    async def wait(self, total: int, timeout_s: float) -> float | None:
        """Monotonic time at which every sink held ``total`` events, or None at the deadline.

        The cheapest count is read first and the next only once it is complete: ``count(*)`` over a million
        rows, ten times a second, would cost PostgreSQL more than the pipeline's own writes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.published() >= total and self.merged() >= total and self.stored() >= total:
                return time.monotonic()
            await asyncio.sleep(POLL_S)
        return None

    def latencies_ms(self, prefix: str) -> list[float]:
        """Publish to row for each event whose id starts with ``prefix``: ``created_at`` (the inserting
        transaction's start, set by the server) minus the ``timestamp`` set at publish."""
        with self._pg.cursor() as cur:
            cur.execute(f'SELECT extract(epoch FROM created_at) * 1000 - "timestamp" '
                        f'FROM "{self._settings.pg_table}" WHERE id LIKE %s', (prefix + "-%",))
            return [float(r[0]) for r in cur.fetchall()]


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


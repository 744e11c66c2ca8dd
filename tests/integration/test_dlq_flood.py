"""A flood of hostile events cannot take the pipeline down through its dead-letter queue.

The real bridge and worker pools between private servers; Redis runs with ``maxmemory`` at ``REDIS_BOUND_BYTES``
and ``noeviction``, as production should. ``HOSTILE`` events of about 1 MiB each, in shapes the contract rejects,
are published among ``VALID`` valid ones. Every valid event must be stored exactly once (PostgreSQL and the
graph), Redis's ``used_memory`` must stay under the bound the whole time (polled, and its peak), and every hostile
event must be counted, kept or not, in the Redis counters and in the enrich pool's metrics.

What the bound covers: the enrich queue (``MAX_QUEUE_DEPTH`` batches of at most ``MAX_BATCH_BYTES`` of raw
events), the sink queues, the dead-letter queue (``DLQ_MAX_BYTES``, plus one sample per stage and reason) and
Redis's own buffers. With the old store, each hostile event was kept whole (a ``\\x01`` event JSON-escaped to six
times its size), so the first few hundred of them reach the bound.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from etl.broker import redis_client
from etl.config import Settings
from etl.dev.generator import generate
from etl.dev.stack import migrate
from etl.dev.supervisor import Pipeline
from etl.natsio.conn import connect
from etl.ops import report
from etl.pipeline.dlq import DeadLetterStore
from etl.pipeline.limits import MAX_NESTING_DEPTH
from etl.pipeline.rawstream import ensure_raw_stream
from tests.graphs import FALKORDB
from tests.integration.accounting import by_id, check_graph, check_postgres
from tests.integration.faults_support import Stack, start_stack
from tests.integration.test_health_metrics import value
from tests.waiting import wait_for

VALID = 20_000
HOSTILE = 5_000
HOSTILE_BYTES = 1_000_000  # under MAX_EVENT_BYTES (1 MiB) and NATS's max_payload (1 MiB)
# Mostly the queues': MAX_QUEUE_DEPTH batches of up to MAX_BATCH_BYTES (8 MiB) stored, and while one is enqueued or
# fetched, its copies in the client's buffers, the script's arguments or reply and the AOF buffer. It does not
# depend on the number of hostile events; the dead-letter queue's share is DLQ_MAX_BYTES.
REDIS_BOUND_BYTES = 384 * 1024 * 1024
DLQ_MAX_BYTES = 4 * 1024 * 1024
MAX_QUEUE_DEPTH = 8
PUBLISH_WINDOW = 32  # publishes awaiting their ack at once
MEMORY_POLL_S = 0.1
BREAKDOWN = ("used_memory_dataset", "mem_clients_normal", "mem_aof_buffer")
SETTLE_TIMEOUT_S = 900
# The payload's JSON object of the "enriched too large" shape: exposed as ``args`` beside the base64 it came in
# (800 KB), it makes the enriched event about 1.4 MB, past NATS's max_payload (1 MiB).
ARGS_BYTES = 600_000
DEEPER_THAN_LIMIT = MAX_NESTING_DEPTH + 1


def _padded(head: bytes, tail: bytes = b'"}', fill: bytes = b"a") -> bytes:
    """``head``, ``fill`` repeated, then ``tail``: exactly ``HOSTILE_BYTES``."""
    return head + fill * (HOSTILE_BYTES - len(head) - len(tail)) + tail


def _control_bytes(i: int) -> bytes:  # not JSON at all: control bytes, which JSON escapes to six times their size
    head = b"%08d" % i
    return head + b"\x01" * (HOSTILE_BYTES - len(head))


def _control_character_in_id(i: int) -> bytes:
    return _padded(b'{"id": "bad\\u0001-%d", "type": "t", "source": "s", "timestamp": 1, "x": "' % i)


def _bad_timestamp(i: int) -> bytes:
    return _padded(b'{"id": "ts-%d", "type": "t", "source": "s", "timestamp": "not a time", "x": "' % i)


def _nul_in_metadata(i: int) -> bytes:  # PostgreSQL cannot store a NUL
    return _padded(b'{"id": "nul-%d", "type": "t", "source": "s", "timestamp": 1, '
                   b'"metadata": {"host_id": "h\\u0000"}, "x": "' % i)


def _nested_too_deep(i: int) -> bytes:  # past MAX_NESTING_DEPTH, then brackets closed by the padding
    head = b'{"id": "deep-%d", "timestamp": 1, "x": ' % i + b"[" * DEEPER_THAN_LIMIT
    return _padded(head, tail=b"]" * DEEPER_THAN_LIMIT + b"}", fill=b" ")


def _too_many_values(i: int) -> bytes:  # past MAX_JSON_VALUES: about 330,000 empty objects
    head, tail = b'{"id": "many-%d", "timestamp": 1, "x": [{}' % i, b"]}"
    room = HOSTILE_BYTES - len(head) - len(tail)
    return head + b",{}" * (room // 3) + b" " * (room % 3) + tail


def _enriched_too_large(i: int) -> bytes:  # valid as it comes in; too large for NATS once enriched
    args = b'{"k": "' + b"b" * (ARGS_BYTES - 9) + b'"}'
    head = b'{"id": "big-%d", "type": "t", "source": "s", "timestamp": 1, "payload": "%s"' % (
        i, base64.b64encode(args))
    return _padded(head, tail=b"}", fill=b" ")


# Each shape breaks a different rule of the contract, and is counted by it; together, every kind of check
# enrichment makes: the JSON itself, a field, the scan before parsing (a NUL, depth, values) and the enriched
# event's size.
SHAPES: tuple[tuple[Callable[[int], bytes], str], ...] = (
    (_control_bytes, "BadEvent/json"), (_control_character_in_id, "BadEvent/id"),
    (_bad_timestamp, "BadEvent/timestamp"), (_nul_in_metadata, "BadEvent/nul"), (_nested_too_deep, "BadEvent/depth"),
    (_too_many_values, "BadEvent/values"), (_enriched_too_large, "BadEvent/max_payload"))


def hostile(i: int) -> bytes:
    """The ``i``-th hostile event: exactly ``HOSTILE_BYTES``, distinct, of shape ``SHAPES[i % len(SHAPES)]``."""
    return SHAPES[i % len(SHAPES)][0](i)


def flood(valid: list[bytes]) -> Iterator[bytes]:
    """The valid events with a hostile one after every fourth, made one at a time (5 GB at once would not fit)."""
    per_hostile = len(valid) // HOSTILE
    for i in range(HOSTILE):
        yield from valid[i * per_hostile:(i + 1) * per_hostile]
        yield hostile(i)
    yield from valid[HOSTILE * per_hostile:]


async def publish_flood(settings: Settings, events: Iterator[bytes]) -> None:
    """Publish ``events`` through JetStream, at most ``PUBLISH_WINDOW`` awaiting their ack at once."""
    nc = await connect(settings, name="test-flood")
    try:
        js = nc.jetstream()
        await ensure_raw_stream(js, settings)
        window = asyncio.Semaphore(PUBLISH_WINDOW)

        async def one(data: bytes) -> None:
            try:
                await js.publish(settings.nats_subject_raw, data)
            finally:
                window.release()

        tasks = []
        for data in events:
            await window.acquire()
            tasks.append(asyncio.create_task(one(data)))
        await asyncio.gather(*tasks)
    finally:
        await nc.close()


class MemoryWatch:
    """Polls Redis's ``used_memory`` from a thread until stopped, keeping the highest value seen."""

    def __init__(self, port: int) -> None:
        self._client = redis.Redis(port=port)
        self._stop = threading.Event()
        self.highest = 0
        self.worst: dict[str, object] = {}
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="redis-memory", daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(MEMORY_POLL_S):
            info = self._client.info("memory")
            if int(info["used_memory"]) > self.highest:
                self.highest = int(info["used_memory"])
                self.worst = {k: info.get(k) for k in BREAKDOWN}
            self.samples += 1


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = start_stack(tmp_path / "servers", FALKORDB)
    yield stack
    stack.stop()


def settled(settings: Settings, store: DeadLetterStore, memory: MemoryWatch) -> Callable[[], bool]:
    """Every valid event stored and merged, every hostile one counted, nothing queued; fails at once when Redis
    passed the bound."""
    def probe() -> bool:
        assert memory.highest < REDIS_BOUND_BYTES, f"Redis used_memory reached {memory.highest}: {memory.worst}"
        counts = report.collect(settings)
        return (counts.totals["stored"] == counts.totals["merged"] == VALID
                and sum(c.counted for c in store.summary()) >= HOSTILE and not any(counts.queued.values()))

    return probe


def check_counted(store: DeadLetterStore, enrich_metrics_port: int, max_bytes: int) -> None:
    """Every hostile event counted once, by the rule its shape breaks, kept or not, in Redis and in the enrich
    pool's metrics; the queue within its bound (plus a sample per reason), every entry cut to its head."""
    summary = store.summary()
    expected = Counter(SHAPES[i % len(SHAPES)][1] for i in range(HOSTILE))
    assert {(c.stage, c.reason, c.counted) for c in summary} == {("enrich", r, n) for r, n in expected.items()}
    dropped = sum(c.dropped for c in summary)
    assert dropped > 0 and HOSTILE - dropped == store.count(), summary
    for c in summary:
        assert value(enrich_metrics_port, "etl_dead_letters_total", stage="enrich", reason=c.reason) == c.counted
        assert (value(enrich_metrics_port, "etl_dead_letters_dropped_total", stage="enrich", reason=c.reason)
                or 0) == c.dropped
    assert store.used_bytes() <= DLQ_MAX_BYTES + len(summary) * max_bytes
    assert all(e.truncated and e.size == HOSTILE_BYTES for e in store.iter_all())


@pytest.mark.timeout(SETTLE_TIMEOUT_S + 300)
def test_a_flood_of_hostile_events_leaves_redis_bounded_and_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    # The flood is published faster than one enrich process takes it, so the raw stream holds gigabytes for a
    # while: unlimited here, since what a full stream does is test_stream_limits' subject.
    settings = stack.settings(MAX_EVENT_BYTES=1024 * 1024, MAX_BATCH_SIZE=500, MAX_QUEUE_DEPTH=MAX_QUEUE_DEPTH,
                              DLQ_MAX_BYTES=DLQ_MAX_BYTES, RETRY_MAX=8, NATS_STREAM_MAX_BYTES=0)
    admin = redis.Redis(port=stack.redis.port)
    admin.config_set("maxmemory", REDIS_BOUND_BYTES)
    admin.config_set("maxmemory-policy", "noeviction")
    valid = list(generate(VALID, hosts=25, seed=16))
    migrate(settings)
    pipeline = Pipeline(settings.to_env(), tmp_path / "logs").start()
    store = DeadLetterStore.from_settings(redis_client(settings), settings)
    started = time.monotonic()
    try:
        with MemoryWatch(stack.redis.port) as memory:
            asyncio.run(publish_flood(settings, flood(valid)))
            published_s = time.monotonic() - started
            wait_for(settled(settings, store, memory), timeout_s=SETTLE_TIMEOUT_S, interval_s=1.0,
                     describe=lambda: f"{report.collect(settings)} {store.summary()} alive={pipeline.alive()}")
        peak = int(admin.info("memory")["used_memory_peak"])
        print(f"\nflood: published in {published_s:.0f} s, settled in {time.monotonic() - started:.0f} s; Redis "
              f"used_memory: highest polled {memory.highest / 2**20:.1f} MiB ({memory.samples} polls; then "
              f"{memory.worst}), peak {peak / 2**20:.1f} MiB; DLQ {store.count()} entries, {store.used_bytes()} bytes")
        assert memory.highest < REDIS_BOUND_BYTES and peak < REDIS_BOUND_BYTES, (memory.highest, peak)
        check_counted(store, pipeline.ports["worker-enrich"], settings.dlq_entry_max_bytes)
        expected = by_id(valid)
        check_postgres(settings, expected)
        check_graph(settings, expected)
    finally:
        codes = pipeline.stop()
        assert all(code == 0 for code in codes.values()), {n: pipeline.log_tail(n) for n in codes}

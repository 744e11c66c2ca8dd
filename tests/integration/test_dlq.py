"""The dead-letter store against a real Redis, including a restart with AOF persistence."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from etl.dev import servers
from etl.pipeline.dlq import DeadLetter, DeadLetterStore


def store_on(port: int, db: int = 3, retention_s: float = 10**10) -> DeadLetterStore:
    client = redis.Redis(port=port, db=db)
    client.flushdb()
    return DeadLetterStore(client, retention_s=retention_s)


def test_entries_keep_stage_reason_event_attempts_and_times(redis_server: servers.Server) -> None:
    store = store_on(redis_server.port)
    raw = DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", b"\xff oops")
    sink = DeadLetter("timescale", "SinkDataError: NUL byte", {"id": "e1"}, attempts=3, first_failure=100.0,
                      last_failure=200.0)
    store.add([raw, sink])
    assert store.count() == 2
    got = store.get(sink.id)
    assert got is not None
    assert (got.stage, got.reason, got.event, got.attempts, got.first_failure, got.last_failure) == (
        "timescale", "SinkDataError: NUL byte", {"id": "e1"}, 3, 100.0, 200.0)
    again = store.get(raw.id)
    assert again is not None and again.raw_bytes() == b"\xff oops"
    assert [e.stage for e in store.list(stage="enrich")] == ["enrich"]
    assert store.counts_by_stage() == {"enrich": 1, "timescale": 1}


def test_the_same_failure_twice_is_one_entry(redis_server: servers.Server) -> None:
    store = store_on(redis_server.port)
    first = DeadLetter.for_raw("enrich", "BadEvent: x", b"[]", first_failure=10.0)
    second = DeadLetter.for_raw("enrich", "BadEvent: x", b"[]", first_failure=20.0, attempts=2)
    store.add([first])
    store.add([second])
    merged = store.get(first.id)
    assert store.count() == 1 and merged is not None
    assert (merged.occurrences, merged.attempts, merged.first_failure, merged.last_failure) == (2, 2, 10.0, 20.0)


def test_retention_is_enforced_by_writers_and_purge_by_age(redis_server: servers.Server) -> None:
    store = store_on(redis_server.port, retention_s=3600)
    now = time.time()
    store.add([DeadLetter.for_raw("enrich", "old", b"1", first_failure=now - 7200),
               DeadLetter.for_raw("enrich", "new", b"2", first_failure=now - 600)])
    assert [e.reason for e in store.list()] == ["new"], "the writer purged what is past the retention"
    assert store.purge() == 0
    assert store.purge(older_than_s=300) == 1 and store.count() == 0


def test_dead_letters_survive_a_redis_restart(tmp_path: Path) -> None:
    server = servers.redis_server(tmp_path / "redis").start()
    try:
        store = DeadLetterStore(redis.Redis(port=server.port), retention_s=3600)
        store.add([DeadLetter.for_raw("enrich", f"BadEvent: {i}", b"%d" % i) for i in range(50)])
        server.stop()  # SIGTERM: Redis flushes its AOF before exiting
        server.start()
        store = DeadLetterStore(redis.Redis(port=server.port), retention_s=3600)
        assert store.count() == 50
    finally:
        server.stop()


def test_stage_counts_come_from_the_stage_indexes_and_follow_removals(redis_server: servers.Server) -> None:
    store = store_on(redis_server.port)
    store.add([DeadLetter.for_raw("enrich", "BadEvent: x", b"%d" % i, first_failure=1000.0 + i) for i in range(30)])
    store.add([DeadLetter("graph", "SinkDataError: y", {"id": f"g{i}"}, first_failure=2000.0, last_failure=2000.0)
               for i in range(5)])
    assert store.counts_by_stage() == {"enrich": 30, "graph": 5}
    assert len(store.list(stage="graph", limit=100)) == 5
    assert [e.event for e in store.list(stage="enrich", limit=2)] == ["29", "28"]  # newest first, raw JSON text
    assert store.purge(older_than_s=time.time() - 1014.5) == 15  # the 15 oldest enrich entries
    store.remove([store.list(stage="graph", limit=1)[0].id])
    assert store.counts_by_stage() == {"enrich": 15, "graph": 4}

    # Entries written before the stage indexes existed are indexed the first time they are counted.
    store.client.delete(store.stages_key, store.stage_key("enrich"), store.stage_key("graph"))
    assert store.counts_by_stage() == {"enrich": 15, "graph": 4}
    assert store.client.zcard(store.stage_key("enrich")) == 15

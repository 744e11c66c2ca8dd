"""The dead-letter store against a real Redis, including a restart with AOF persistence, its bounds, and its
byte total under concurrent writers."""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import redis
from prometheus_client import REGISTRY

from etl.dev import servers
from etl.pipeline.dlq import DeadLetter, DeadLetterStore, Limits
from etl.pipeline.dlqscripts import ENTRY_OVERHEAD_BYTES
from etl.pipeline.validate import validate_batch


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
    assert [c.counted for c in store.summary()] == [1], "one event, counted once: the counters add up with the sinks"


def test_retention_is_enforced_by_writers_and_purge_by_age(redis_server: servers.Server) -> None:
    store = store_on(redis_server.port, retention_s=3600)
    now = time.time()
    store.add([DeadLetter.for_raw("enrich", "old", b"1", first_failure=now - 7200),
               DeadLetter.for_raw("enrich", "new", b"2", first_failure=now - 600)])
    assert [e.reason for e in store.list()] == ["new"], "the writer purged what is past the retention"
    assert store.purge() == 0
    assert store.purge(older_than_s=300) == 1 and store.count() == 0


def counted_in_metrics(stage: str, reason: str) -> float:
    return REGISTRY.get_sample_value("etl_dead_letters_total", {"stage": stage, "reason": reason}) or 0.0


def test_a_failing_purge_neither_fails_the_writer_nor_skips_its_metrics_and_logs(
        redis_server: servers.Server, caplog: pytest.LogCaptureFixture) -> None:
    store = store_on(redis_server.port, retention_s=3600)
    # A stage index of the wrong type: the purge's removal fails on it with WRONGTYPE; storing does not touch it.
    store.client.sadd(store.stages_key, "broken")
    store.client.set(store.stage_key("broken"), "not a sorted set")
    before = counted_in_metrics("enrich", "PurgeProbe")
    old = DeadLetter.for_raw("enrich", "PurgeProbe: old", b"old", first_failure=time.time() - 7200)
    with caplog.at_level(logging.WARNING, logger="etl.pipeline.dlq"):
        store.add([old, DeadLetter.for_raw("enrich", "PurgeProbe: new", b"new")])  # the first add purges
        store.flush_log()
    assert counted_in_metrics("enrich", "PurgeProbe") == before + 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("dead-lettered 2 event(s) at enrich for PurgeProbe") for m in messages), messages
    assert any("the periodic purge of the DLQ failed" in m and "WRONGTYPE" in m for m in messages), messages
    assert sum(c.counted for c in store.summary()) == 2


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
    assert [e.event for e in store.list(stage="enrich", limit=2)] == [b"29", b"28"]  # newest first, raw bytes
    assert store.purge(older_than_s=time.time() - 1014.5) == 15  # the 15 oldest enrich entries
    store.remove([store.list(stage="graph", limit=1)[0].id])
    assert store.counts_by_stage() == {"enrich": 15, "graph": 4}

    # Entries written before the stage indexes existed are indexed the first time they are counted.
    store.client.delete(store.stages_key, store.stage_key("enrich"), store.stage_key("graph"))
    assert store.counts_by_stage() == {"enrich": 15, "graph": 4}
    assert store.client.zcard(store.stage_key("enrich")) == 15


# --- bounds -------------------------------------------------------------------------------------------------


def bounded_store(port: int, *, max_bytes: int = 10**9, max_entries: int = 10**6,
                  entry_max_bytes: int = 64 * 1024, db: int = 3) -> DeadLetterStore:
    client = redis.Redis(port=port, db=db)
    client.flushdb()
    return DeadLetterStore(client, retention_s=10**10, limits=Limits(max_bytes, max_entries, entry_max_bytes))


def accounted_bytes(store: DeadLetterStore) -> int:
    """The byte total recomputed from the entries themselves."""
    ids = store.client.hkeys(store.entries_key)
    return sum(int(store.client.hstrlen(store.entries_key, i)) + ENTRY_OVERHEAD_BYTES for i in ids)


def test_a_huge_event_is_kept_as_its_head_and_cannot_be_replayed(redis_server: servers.Server) -> None:
    store = bounded_store(redis_server.port, entry_max_bytes=64 * 1024)
    raw = b"\x01" * (1024 * 1024)
    store.add([DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", raw)])
    [letter] = store.list()
    assert letter.truncated and letter.size == len(raw) and len(letter.event) == 1024
    assert store.used_bytes() == accounted_bytes(store) < 2048 + ENTRY_OVERHEAD_BYTES


def test_a_full_queue_keeps_counting_and_keeps_a_sample_per_stage_and_reason(redis_server: servers.Server) -> None:
    store = bounded_store(redis_server.port, max_entries=10)
    store.add([DeadLetter.for_raw("enrich", f"BadEvent: {i}", b"e%d" % i) for i in range(25)])
    store.add([DeadLetter("graph", "SinkDataError: x", {"id": f"g{i}"}) for i in range(3)])
    store.add([DeadLetter.for_raw("enrich", "skipped: too old", b"old")])
    assert store.count() == 12, "ten, then one sample for each new (stage, reason type)"
    assert {(c.stage, c.reason, c.counted, c.dropped) for c in store.summary()} == {
        ("enrich", "BadEvent", 25, 15), ("graph", "SinkDataError", 3, 2), ("enrich", "skipped", 1, 0)}
    # A sample that was removed is replaced by the next dead letter of its kind.
    graph_sample = store.list(stage="graph")[0].id
    store.remove([graph_sample])
    store.add([DeadLetter("graph", "SinkDataError: y", {"id": "g-new"})])
    assert [e.event for e in store.list(stage="graph")] == [{"id": "g-new"}]

    bytes_bound = bounded_store(redis_server.port, max_bytes=10 * (ENTRY_OVERHEAD_BYTES + 200), db=4)
    bytes_bound.add([DeadLetter.for_raw("enrich", "BadEvent: x", b"%050d" % i) for i in range(40)])
    assert 1 < bytes_bound.count() < 40 and bytes_bound.used_bytes() <= bytes_bound.limits.max_bytes
    assert bytes_bound.summary()[0].counted == 40


def test_a_full_queue_keeps_a_sample_of_each_rule_the_contract_refuses(redis_server: servers.Server) -> None:
    """Contract failures are counted and sampled by the rule they break, not as one kind: once the queue is
    full of events that are not JSON, an event with a NUL and one nested too deep still get a sample each."""
    store = bounded_store(redis_server.port, max_entries=5)
    good = {"id": "e", "type": "t", "source": "s", "timestamp": 5}
    not_json = [b"not json %d" % i for i in range(8)]
    nul = [orjson.dumps({**good, "id": f"n{i}", "type": "t\x00"}) for i in range(3)]
    deep = [b'{"x":' + b"[" * 200 + b"%d" % i + b"]" * 200 + b"}" for i in range(3)]
    for raws in (not_json, nul, deep):
        store.add(validate_batch(raws, max_bytes=10_000)[1])
    assert {(c.reason, c.counted, c.dropped) for c in store.summary()} == {
        ("BadEvent/json", 8, 3), ("BadEvent/nul", 3, 2), ("BadEvent/depth", 3, 2)}
    kept = [letter.reason.split(":")[0] for letter in store.list()]
    assert sorted(kept) == ["BadEvent/depth"] + ["BadEvent/json"] * 5 + ["BadEvent/nul"]


def test_the_full_queue_is_logged_once_not_per_event(redis_server: servers.Server,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    store = bounded_store(redis_server.port, max_entries=5)
    with caplog.at_level(logging.WARNING, logger="etl.pipeline.dlq"):
        for batch in range(20):
            store.add([DeadLetter.for_raw("enrich", "BadEvent: x", b"%d-%d" % (batch, i)) for i in range(50)])
        full = [r.getMessage() for r in caplog.records if "the DLQ is full" in r.getMessage()]
        assert full == [full[0]] and "45 dead letters not kept" in full[0], full
        store.flush_log()
    lines = [r.getMessage() for r in caplog.records if r.name == "etl.pipeline.dlq"]
    assert len(lines) == 3, "the full queue at once, then at shutdown its summary and what was not yet reported"
    assert lines[1].startswith("dead-lettered 5 event(s) at enrich for BadEvent"), lines
    assert "the DLQ is full, 950 dead letters not kept" in lines[2], lines


def test_a_total_left_too_high_by_writers_that_bypass_it_heals_at_the_next_purge(
        redis_server: servers.Server) -> None:
    store = bounded_store(redis_server.port, max_bytes=20 * (ENTRY_OVERHEAD_BYTES + 100))
    store.add([DeadLetter.for_raw("enrich", "BadEvent: x", b"%090d" % i) for i in range(10)])
    # What a process of the previous version does: it removes with a plain HDEL (the total keeps their bytes), and
    # adds with HSETNX (the total never sees it).
    gone = [letter.id for letter in store.list(limit=8)]
    store.client.hdel(store.entries_key, *gone)
    store.client.zrem(store.index_key, *gone)
    store.client.hsetnx(store.entries_key, "legacy", orjson.dumps({"stage": "enrich", "reason": "BadEvent: y",
                                                                   "event": "y", "id": "legacy"}))
    store.client.incrby(store.bytes_key, 10**9)  # ... and any other drift, far past DLQ_MAX_BYTES
    late = DeadLetter.for_raw("enrich", "BadEvent: x", b"late")
    store.add([late])
    assert store.get(late.id) is None, "dropped: the total says the queue is full"
    store.purge()
    assert store.used_bytes() == accounted_bytes(store)
    store.add([late])
    assert store.get(late.id) is not None, "stored again once the total was summed anew"
    assert store.used_bytes() == accounted_bytes(store)


def test_a_total_beside_a_deleted_hash_is_reset_at_once(redis_server: servers.Server) -> None:
    store = bounded_store(redis_server.port, max_bytes=10 * (ENTRY_OVERHEAD_BYTES + 100))
    store.add([DeadLetter.for_raw("enrich", "BadEvent: x", b"%090d" % i) for i in range(10)])
    store.client.delete(store.entries_key)  # an operator's `DEL etl:dlq:entries`
    fresh = [DeadLetter.for_raw("enrich", "BadEvent: x", b"fresh-%d" % i) for i in range(3)]
    store.add(fresh)
    assert all(store.get(letter.id) is not None for letter in fresh)
    assert store.used_bytes() == accounted_bytes(store)


def _write_concurrently(port: int, writer: int, letters: int) -> None:
    """A writer process: threads adding, merging and removing dead letters at once."""
    def work(thread: int) -> None:
        store = bounded_store_no_flush(port)
        for i in range(letters):
            store.add([DeadLetter.for_raw("enrich", "BadEvent: x", b"w%d-t%d-%d" % (writer, thread, i) * (i % 7 + 1)),
                       DeadLetter.for_raw("enrich", "Shared: x", b"shared-%d" % (i % 10))])
            if i % 5 == 0:
                store.remove([store.list(limit=1)[0].id])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))


def bounded_store_no_flush(port: int) -> DeadLetterStore:
    return DeadLetterStore(redis.Redis(port=port, db=5), retention_s=10**10,
                           limits=Limits(max_bytes=40_000, max_entries=10**6))


def test_the_byte_total_stays_exact_with_many_writers(redis_server: servers.Server) -> None:
    """Three processes of four threads each add, merge and remove at once, past the byte bound: the total the
    scripts keep equals the entries' own size, the bound holds, and removing everything brings it to zero."""
    store_on(redis_server.port, db=5)
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write_concurrently, [redis_server.port] * 3, range(3), [60] * 3))
    store = bounded_store_no_flush(redis_server.port)
    assert store.used_bytes() == accounted_bytes(store) <= 40_000 + 2 * (ENTRY_OVERHEAD_BYTES + 1024)
    counts = {c.reason: c for c in store.summary()}
    assert counts["BadEvent"].counted == 3 * 4 * 60, "every distinct letter counted once"
    # A shared letter is counted when it is new: stored, or dropped; again only once its entry was removed.
    assert 10 <= counts["Shared"].counted <= 3 * 4 * 60
    assert counts["BadEvent"].dropped > 0, "the bound was reached"
    store.purge(older_than_s=0)
    assert store.count() == 0 and store.used_bytes() == 0


def test_entries_of_the_old_format_are_read_accounted_and_removed(redis_server: servers.Server) -> None:
    store = store_on(redis_server.port)
    old = {"stage": "enrich", "reason": "BadEvent: x", "event": "\x01" * 1000, "attempts": 1,
           "first_failure": 10.0, "last_failure": 10.0, "event_encoding": "text", "occurrences": 1, "id": "old1"}
    store.client.hset(store.entries_key, "old1", orjson.dumps(old))
    store.client.zadd(store.index_key, {"old1": 10.0})
    assert store.used_bytes() == len(orjson.dumps(old)) + ENTRY_OVERHEAD_BYTES, "summed once, on first use"
    store.add([DeadLetter.for_raw("enrich", "BadEvent: y", b"new")])
    assert store.used_bytes() == accounted_bytes(store)
    assert {e.raw_bytes() for e in store.iter_all()} == {b"\x01" * 1000, b"new"}
    assert store.remove(["old1"]) == 1 and store.used_bytes() == accounted_bytes(store)

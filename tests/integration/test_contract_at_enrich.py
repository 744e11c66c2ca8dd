"""Events every sink would refuse are dead-lettered at enrich, through the real pipeline (bridge and worker
processes, NATS, Redis, PostgreSQL, FalkorDB): a batch of them costs the sinks no split, and the valid events
published after them are stored, merged and published.

Before the contract refused them, each of these reached the sinks, which found them by splitting their batches in
halves down to single events: a NUL in metadata or in ``type`` (PostgreSQL), a ``host_id`` past the index limits, a
``pid`` between 2^63 and 2^64-1 (the graph), and an enriched event over NATS's ``max_payload`` (the publisher).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Callable
from typing import Any

import orjson

from etl.broker import build_broker
from etl.config import Settings
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.pipeline.handoff import Handoff
from etl.pipeline.limits import DEFAULT_NATS_MAX_PAYLOAD_BYTES
from tests.integration.accounting import (
    by_id,
    check_enriched_stream,
    check_graph,
    check_postgres,
    dead_letters,
    publish_all,
)
from tests.waiting import wait_for

POISONED = 500
VALID = 200
OVER_MAX_PAYLOAD = 4
# What the sinks log when they split a batch to isolate bad events (etl.pipeline.isolation).
SPLIT_LOG = "retrying its halves"


def _poison(template: dict[str, Any], i: int) -> dict[str, Any]:
    event = {**template, "id": f"poison-{i}", "metadata": dict(template["metadata"])}
    kind = i % 4
    if kind == 0:
        event["metadata"]["note"] = f"nul\x00{i}"
    elif kind == 1:
        event["metadata"]["host_id"] = secrets.token_hex(2100)  # random: PostgreSQL cannot compress it
    elif kind == 2:
        event["metadata"]["pid"] = 2**63 + i
    else:
        event["type"] = f"connect\x00{i}"
    return event


def poisoned_events() -> list[bytes]:
    """Events each valid JSON within MAX_EVENT_BYTES, but each refused by at least one sink."""
    template = orjson.loads(next(iter(generate(1, hosts=1, seed=11))))
    events = [orjson.dumps(_poison(template, i)) for i in range(POISONED - OVER_MAX_PAYLOAD)]
    # The payload's JSON object is also exposed as args: together over 1 MiB, while the raw event is not.
    blob = base64.b64encode(orjson.dumps({"blob": "x" * (DEFAULT_NATS_MAX_PAYLOAD_BYTES * 9 // 16)})).decode()
    events += [orjson.dumps({**template, "id": f"big-{i}", "payload": blob}) for i in range(OVER_MAX_PAYLOAD)]
    assert all(len(e) < DEFAULT_NATS_MAX_PAYLOAD_BYTES * 7 // 8 for e in events)
    return events


def settled(settings: Settings) -> Callable[[], report.Counts | None]:
    def probe() -> report.Counts | None:
        counts = report.collect(settings)
        done = set(counts.totals.values()) == {VALID} and sum(counts.dead_lettered.values()) >= POISONED
        return counts if done and not any(counts.queued.values()) else None

    return probe


def test_a_poisoned_batch_is_dead_lettered_at_enrich_without_splitting_a_sink_batch(
        make_settings: Callable[..., Settings], start_pipeline: Callable[..., Pipeline]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=POISONED, BATCH_LINGER_MS=200, RETRY_MIN_BACKOFF_MS=100,
                             RETRY_MAX_BACKOFF_MS=1000)
    pipeline = start_pipeline(settings)
    valid = list(generate(VALID, hosts=10, seed=12))
    asyncio.run(publish_all(settings, poisoned_events() + valid))

    counts = wait_for(settled(settings), timeout_s=60,
                      describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    assert counts.dead_lettered == {"enrich": POISONED}, counts.dead_lettered
    splits = {name: pipeline.log_tail(name, 10_000).count(SPLIT_LOG) for name in pipeline.procs}
    assert sum(splits.values()) == 0, splits
    expected = by_id(valid)
    check_postgres(settings, expected)
    check_graph(settings, expected)
    check_enriched_stream(settings, expected)


def test_the_enrich_stage_holds_events_to_the_max_payload_the_bridge_passes(
        make_settings: Callable[..., Settings], start_pipeline: Callable[..., Pipeline]) -> None:
    """The bridge passes the server's max_payload with each batch; a smaller one is what the stage applies."""
    settings = make_settings()
    start_pipeline(settings)
    template = orjson.loads(next(iter(generate(1, hosts=1, seed=13))))
    fits = orjson.dumps({**template, "id": "fits"})
    too_big = orjson.dumps({**template, "id": "too-big", "payload": {"blob": "x" * 300_000}})
    broker = build_broker(settings)
    try:
        Handoff.from_settings(broker, settings).raw([fits, too_big], max_payload=256 * 1024)
    finally:
        broker.close()

    wait_for(lambda: report.collect(settings).totals["stored"] == 1 and dead_letters(settings),
             timeout_s=60, describe=lambda: str(report.collect(settings)))
    [letter] = dead_letters(settings)
    assert letter.stage == "enrich" and "over the NATS server's max_payload of 262144" in letter.reason


def test_an_agents_own_args_is_refused_at_enrich_not_stored_as_its_payload(
        make_settings: Callable[..., Settings], start_pipeline: Callable[..., Pipeline]) -> None:
    """``args`` is the payload's object, set by the pipeline: an event that brings its own is dead-lettered at
    enrich with its reason, rather than have the graph read a peer from it and the events table store it as the
    payload."""
    settings = make_settings()
    start_pipeline(settings)
    template = orjson.loads(next(iter(generate(1, hosts=1, seed=14))))
    ok = {**template, "id": "ok"}
    forged = {key: value for key, value in template.items() if key != "payload"}
    forged.update(id="own-args", args={"dst_ip": "198.51.100.7", "dst_port": 22})
    asyncio.run(publish_all(settings, [orjson.dumps(ok), orjson.dumps(forged)]))

    wait_for(lambda: report.collect(settings).totals["stored"] == 1 and dead_letters(settings),
             timeout_s=60, describe=lambda: str(report.collect(settings)))
    [letter] = dead_letters(settings)
    assert letter.stage == "enrich" and letter.reason.startswith("BadEvent/field: field 'args' is set by the pipeline")
    check_postgres(settings, by_id([orjson.dumps(ok)]))

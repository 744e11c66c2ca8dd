"""``events.enriched`` as the AegisFlux correlator reads it: a core NATS queue subscription, each message parsed by
the correlator's rules, fed through the real bridge and workers with the events of every producer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import orjson
import pytest

from etl.config import Settings
from etl.dev.supervisor import Pipeline
from tests.integration.accounting import publish_all
from tests.producers import GRPC_ARGS, OMISSIBLE, VISIBILITY_ARGS, grpc_event, visibility_event, without

CORRELATOR_QUEUE = "correlator"
WAIT_S = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CorrelatorEvent:
    """What the correlator takes from one message."""

    timestamp_ms: int
    host_id: str
    event_type: str
    binary_path: str
    args: dict[str, Any]
    context: dict[str, Any]
    tags: str


def correlator_parse(data: bytes, now_ms: int) -> CorrelatorEvent:
    """The correlator's rules, literally: a JSON object; ``timestamp`` a number of milliseconds or RFC 3339 text,
    else now; ``host_id`` at the top level; ``event_type`` else ``type``; ``binary_path`` else ``source``;
    ``args`` an object; ``context`` an object, ``context.tags`` a string. A value of another type counts as
    absent, as Go's type assertions make it."""
    message = orjson.loads(data)
    assert isinstance(message, dict), "the correlator takes only a JSON object"
    args, context = message.get("args"), message.get("context")
    context = context if isinstance(context, dict) else {}
    return CorrelatorEvent(
        timestamp_ms=_timestamp_ms(message.get("timestamp"), now_ms),
        host_id=_text(message.get("host_id")),
        event_type=_text(message.get("event_type")) or _text(message.get("type")),
        binary_path=_text(message.get("binary_path")) or _text(message.get("source")),
        args=args if isinstance(args, dict) else {},
        context=context,
        tags=_text(context.get("tags")),
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _timestamp_ms(value: object, now_ms: int) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return now_ms
        if parsed.tzinfo is not None:  # RFC 3339 requires the offset
            return (parsed - _EPOCH) // timedelta(milliseconds=1)
    return now_ms


def test_the_parse_follows_the_correlators_rules() -> None:
    assert correlator_parse(b'{"timestamp": "2024-01-01T12:00:00.5Z", "event_type": "exec", "type": "t",'
                            b' "binary_path": "/bin/sh", "source": "s", "args": [1], "context": {"tags": 3}}',
                            now_ms=7) == CorrelatorEvent(1704110400500, "", "exec", "/bin/sh", {}, {"tags": 3}, "")
    assert correlator_parse(b'{"timestamp": "yesterday", "host_id": 5}', now_ms=7).timestamp_ms == 7
    assert correlator_parse(b'{"timestamp": "2024-01-01T12:00:00"}', now_ms=7).timestamp_ms == 7


async def receive_as_correlator(settings: Settings, events: list[dict[str, Any]]) -> dict[str, bytes]:
    """Subscribe to the enriched subject as the correlator does, publish ``events`` raw, and return each one's
    enriched message by id."""
    nc = await nats.connect(settings.nats_url, name="test-correlator")
    try:
        sub = await nc.subscribe(settings.nats_subject_enriched, queue=CORRELATOR_QUEUE)
        await nc.flush()
        await publish_all(settings, [orjson.dumps(e) for e in events])
        missing = {e["id"] for e in events}
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + WAIT_S
        while missing:
            try:
                msg = await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.01))
            except nats.errors.TimeoutError:
                pytest.fail(f"not on {settings.nats_subject_enriched} within {WAIT_S} s: {sorted(missing)}")
            event_id = orjson.loads(msg.data)["id"]
            got[event_id] = msg.data
            missing.discard(event_id)
        return got
    finally:
        await nc.close()


def test_the_correlator_reads_every_producers_event(make_settings: Callable[..., Settings],
                                                    start_pipeline: Callable[..., Pipeline]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=50, BATCH_LINGER_MS=20)  # AF_ENV=test, fake reverse DNS
    start_pipeline(settings)
    events = [grpc_event(), visibility_event(), without(grpc_event(), *OMISSIBLE, event_id="bare")]
    now_ms = int(time.time() * 1000)

    messages = asyncio.run(receive_as_correlator(settings, events))

    seen = {event_id: correlator_parse(data, now_ms) for event_id, data in messages.items()}
    assert seen == {
        "grpc-1": CorrelatorEvent(
            1704110400123, "host-001", "process_exec", "/usr/bin/curl", GRPC_ARGS,
            {"tags": "[dev web]", "kernel": "6.6", "env": "test", "rdns": "host-001.local",
             "dst_rdns": "host-10.local", "intel_match": False}, "[dev web]"),
        "vis-1": CorrelatorEvent(
            1704110400456, "host-002", "connect", "/usr/sbin/sshd", VISIBILITY_ARGS,
            {"env": "test", "rdns": "host-7.local", "dst_rdns": "host-4.local", "intel_match": False}, ""),
        "bare": CorrelatorEvent(
            1704110400123, "", "", "", {}, {"env": "test", "rdns": None, "dst_rdns": None, "intel_match": False},
            ""),
    }
    bare = orjson.loads(messages["bare"])
    assert bare["host_id"] is None and (bare["type"], bare["source"]) == ("", "")

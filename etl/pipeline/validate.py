"""The enrich stage's checks, pure (no I/O): a raw batch into valid events and dead letters, and the enriched
events into the JSON every sink receives, less those the NATS server would refuse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from etl.errors import BadEvent, Violation
from etl.pipeline.deadletter import DeadLetter
from etl.pipeline.events import parse_event
from etl.pipeline.limits import PUBLISH_HEADER_ROOM_BYTES
from etl.stages import ENRICH

STAGE = ENRICH.name


class Valid(NamedTuple):
    """A valid event and the raw bytes it was parsed from (for a dead letter after enrichment)."""

    raw: bytes
    event: dict[str, Any]


def validate_batch(raws: Sequence[str | bytes], *, max_bytes: int) -> tuple[list[Valid], list[DeadLetter]]:
    """Parse each raw event; return the valid ones and a dead letter (with the precise reason) for each bad one."""
    good: list[Valid] = []
    bad: list[DeadLetter] = []
    for raw in raws:
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        try:
            good.append(Valid(data, parse_event(data, max_bytes=max_bytes)))
        except BadEvent as e:
            bad.append(_dead_letter(e, data))
    return good, bad


class Encoded(NamedTuple):
    """The enriched events that fit, as JSON (``encoded``) and as they were (``events``, in the same order), and a
    dead letter for each that did not (``oversized``)."""

    encoded: list[bytes]
    oversized: list[DeadLetter]
    events: list[dict[str, Any]]


def encode_enriched(enriched: Sequence[dict[str, Any]], raws: Sequence[bytes], *, max_payload: int) -> Encoded:
    """Each enriched event as JSON, and a dead letter (of its raw bytes, from ``raws``, in the same order) for
    each that would not fit the NATS server's ``max_payload`` (bytes) with the publisher's headers.

    Each event is encoded once here; the sinks' message is these pieces joined (``as_message``). The events that
    fit are returned too: what is said of the events sent (their matches counted) must leave out those dead-lettered.
    """
    limit = max_payload - PUBLISH_HEADER_ROOM_BYTES
    fits: list[bytes] = []
    kept: list[dict[str, Any]] = []
    bad: list[DeadLetter] = []
    for event, raw in zip(enriched, raws, strict=True):
        data = orjson.dumps(event)
        if len(data) <= limit:
            fits.append(data)
            kept.append(event)
        else:
            bad.append(_dead_letter(BadEvent(Violation.MAX_PAYLOAD, (
                f"enriched event is {len(data)} bytes, over the NATS server's max_payload of {max_payload} less "
                f"{PUBLISH_HEADER_ROOM_BYTES} for headers")), raw))
    return Encoded(fits, bad, kept)


def _dead_letter(error: BadEvent, raw: bytes) -> DeadLetter:
    """A dead letter of ``raw`` whose reason begins with the bounded ``BadEvent/<violation>`` it is counted by."""
    return DeadLetter.for_raw(STAGE, f"{error.reason_type}: {error.reason}", raw)


def as_message(encoded: Sequence[bytes]) -> orjson.Fragment:
    """The JSON array of the encoded events, as one value a Dramatiq message carries without encoding it again."""
    return orjson.Fragment(b"[" + b",".join(encoded) + b"]")

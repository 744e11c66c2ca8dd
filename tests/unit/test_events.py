"""The event contract: what is accepted, how it is normalised, and the precise reason for what is not."""

from __future__ import annotations

import base64

import orjson
import pytest

from etl.errors import BadEvent
from etl.pipeline.events import parse_event, payload_bytes
from tests.producers import GRPC_ARGS, OMISSIBLE, VISIBILITY_ARGS, grpc_event, visibility_event, without

MAX = 1024 * 1024
ARGS = {"dst_ip": "203.0.113.10", "dst_port": 443}


def event(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "event-1704110400-1", "type": "connect", "source": "/usr/bin/psql", "timestamp": 1704110400000,
        "metadata": {"host_id": "host-001", "host_ip": "10.1.2.3", "pid": "1234", "uid": "1001"},
        "payload": base64.b64encode(orjson.dumps(ARGS)).decode(),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def parse(obj: object, max_bytes: int = MAX) -> dict[str, object]:
    return parse_event(orjson.dumps(obj), max_bytes=max_bytes)


def reason(raw: bytes, max_bytes: int = MAX) -> str:
    with pytest.raises(BadEvent) as info:
        parse_event(raw, max_bytes=max_bytes)
    return info.value.reason


def test_the_issue_example_is_valid_and_exposes_args() -> None:
    parsed = parse(event())
    assert parsed["args"] == ARGS
    assert parsed["timestamp"] == 1704110400000
    assert parsed["metadata"]["host_ip"] == "10.1.2.3"


def test_unknown_fields_and_numeric_metadata_are_kept() -> None:
    parsed = parse(event(extra={"a": 1}, metadata={"pid": 1234, "custom": "x", "ratio": 0.5}))
    assert parsed["extra"] == {"a": 1}
    assert parsed["metadata"] == {"pid": 1234, "custom": "x", "ratio": 0.5}


@pytest.mark.parametrize(("text", "ms"), [
    ("2024-01-01T12:00:00Z", 1704110400000),
    ("2024-01-01T12:00:00.123+00:00", 1704110400123),
    ("2024-01-01T13:00:00.5+01:00", 1704110400500),
])
def test_iso_timestamps_with_a_zone_become_ms(text: str, ms: int) -> None:
    assert parse(event(timestamp=text))["timestamp"] == ms


def test_payload_as_object_and_nested_base64() -> None:
    assert parse(event(payload=ARGS))["args"] == ARGS
    twice = base64.b64encode(base64.b64encode(orjson.dumps(ARGS))).decode()
    assert parse(event(payload=twice))["args"] == ARGS


def test_opaque_payload_has_no_args_and_keeps_its_bytes() -> None:
    parsed = parse(event(payload=base64.b64encode(b"\x00\x01binary").decode()))
    assert "args" not in parsed
    assert payload_bytes(parsed) == b"\x00\x01binary"
    assert payload_bytes(parse(event(payload=...))) is None
    assert orjson.loads(payload_bytes(parse(event(payload=ARGS))) or b"") == ARGS


def test_events_as_each_producer_sends_them() -> None:
    assert parse(grpc_event()) == {**grpc_event(), "args": GRPC_ARGS}
    assert parse(visibility_event()) == {**visibility_event(), "args": VISIBILITY_ARGS}


@pytest.mark.parametrize("omitted", [(name,) for name in OMISSIBLE] + [tuple(OMISSIBLE)])
def test_a_field_the_ingest_leaves_out_means_its_empty_value(omitted: tuple[str, ...]) -> None:
    sent = without(grpc_event(), *omitted)
    expected = {**sent, **{k: OMISSIBLE[k] for k in omitted if k != "payload"}}
    if "payload" not in omitted:
        expected["args"] = GRPC_ARGS
    parsed = parse(sent)
    assert parsed == expected
    assert payload_bytes(parsed) == (None if "payload" in omitted else base64.b64decode(sent["payload"]))


def test_an_agents_context_object_is_kept_as_sent_and_null_means_none() -> None:
    assert parse(event(context={"tags": ["dev", "web"], "team": "x"}))["context"] == {"tags": ["dev", "web"],
                                                                                     "team": "x"}
    assert parse(event(context=None))["context"] is None


def test_null_metadata_and_payload_mean_none() -> None:
    parsed = parse(event(metadata=None, payload=None))
    assert parsed["metadata"] == {}
    assert "args" not in parsed and payload_bytes(parsed) is None


@pytest.mark.parametrize(("raw", "expected"), [
    (b"not json", "not valid JSON"),
    (b'{"id": "x", "type"', "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[1, 2]", "event must be a JSON object, got array"),
    (b"42", "event must be a JSON object, got integer"),
    (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
])
def test_non_objects_are_rejected(raw: bytes, expected: str) -> None:
    assert expected in reason(raw)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"id": ...}, "missing required field 'id'"),
    ({"id": ""}, "field 'id' must be a non-empty string, got empty"),
    ({"id": 7}, "field 'id' must be a non-empty string, got integer"),
    ({"id": "a\nb"}, "field 'id' contains a control character"),
    ({"id": "x" * 600}, "over the limit of 512"),
    ({"type": None}, "field 'type' must be a string, got null"),
    ({"type": ["exec"]}, "field 'type' must be a string, got array"),
    ({"source": None}, "field 'source' must be a string, got null"),
    ({"source": 7}, "field 'source' must be a string, got integer"),
    ({"timestamp": ...}, "missing required field 'timestamp'"),
    ({"timestamp": 1.5}, "must be integer Unix milliseconds or an ISO-8601 string, got number"),
    ({"timestamp": True}, "got boolean"),
    ({"timestamp": "yesterday"}, "is not an ISO-8601 time"),
    ({"timestamp": "2024-01-01T12:00:00"}, "has no time zone"),
    ({"timestamp": -5}, "out of range"),
    ({"timestamp": 10**17}, "out of range"),
    ({"metadata": "host"}, "field 'metadata' must be an object, got string"),
    ({"metadata": {"pid": [1]}}, "metadata['pid'] must be a string or a number, got array"),
    ({"metadata": {"ok": True}}, "metadata['ok'] must be a string or a number, got boolean"),
    ({"payload": 12}, "field 'payload' must be a base64 string or a JSON object, got integer"),
    ({"context": "dev"}, "field 'context' must be an object, got string"),
    ({"context": ["dev", "web"]}, "field 'context' must be an object, got array"),
    ({"payload": "!!not base64!!"}, "field 'payload' is not valid base64"),
])
def test_contract_violations_have_precise_reasons(overrides: dict[str, object], expected: str) -> None:
    assert expected in reason(orjson.dumps(event(**overrides)))


def test_size_limit_is_checked_before_parsing() -> None:
    raw = orjson.dumps(event())
    assert parse_event(raw, max_bytes=len(raw))["id"]
    assert f"event is {len(raw)} bytes, over the limit MAX_EVENT_BYTES={len(raw) - 1}" == reason(raw, len(raw) - 1)
    assert "over the limit" in reason(b"x" * 100, 10)


def test_a_hostile_metadata_key_is_escaped_in_the_reason() -> None:
    text = reason(orjson.dumps(event(metadata={"\x1b[2J\nforged log line": [1]})))
    assert "\n" not in text and "\x1b" not in text


def test_nesting_deeper_than_the_encoder_takes_is_rejected() -> None:
    nested: object = {"leaf": 1}
    for _ in range(126):
        nested = {"n": nested}
    assert parse(event(x=nested))["x"], "128 levels, the event's own included, are fine"
    assert "nested deeper than 128 levels" in reason(orjson.dumps(event(x={"n": nested})))
    deep_payload = base64.b64encode(b'{"a":' * 200 + b"1" + b"}" * 200).decode()
    assert "nested deeper" in reason(orjson.dumps(event(payload=deep_payload)))

"""The event contract: what is accepted, how it is normalised, and the precise reason for what is not."""

from __future__ import annotations

import base64

import orjson
import pytest

from etl.errors import BadEvent, Violation
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
    (b"[" * 5000 + b"]" * 5000, "nested deeper than 128 levels"),
])
def test_non_objects_are_rejected(raw: bytes, expected: str) -> None:
    assert expected in reason(raw)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"id": ...}, "missing required field 'id'"),
    ({"id": ""}, "field 'id' must be a non-empty string, got empty"),
    ({"id": 7}, "field 'id' must be a non-empty string, got integer"),
    ({"id": "a\nb"}, "field 'id' contains a character that is not printable"),
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
    ({"args": {"dst_ip": "10.0.0.5"}}, "field 'args' is set by the pipeline from 'payload'"),
    ({"args": None, "payload": None}, "field 'args' is set by the pipeline from 'payload'"),
])
def test_contract_violations_have_precise_reasons(overrides: dict[str, object], expected: str) -> None:
    assert expected in reason(orjson.dumps(event(**overrides)))


@pytest.mark.parametrize(("overrides", "violation"), [
    ({"id": "a\nb"}, Violation.ID),
    ({"timestamp": "yesterday"}, Violation.TIMESTAMP),
    ({"context": "dev"}, Violation.FIELD),
    ({"payload": "!!not base64!!"}, Violation.FIELD),
    ({"args": {"dst_port": 443}}, Violation.FIELD),
    ({"type": "t" * 257}, Violation.LENGTH),
    ({"metadata": {"k" * 257: "v"}}, Violation.LENGTH),
    ({"metadata": {"seq": 2**63}}, Violation.INTEGER),
    ({"metadata": {"host_id": "h" * 257}}, Violation.KEY),
    ({"source": ":" * 1340}, Violation.KEY),
    ({"source": "/bin/\x00sh"}, Violation.NUL),
    ({"x": [[[]] * 20_000]}, Violation.VALUES),
])
def test_each_refusal_names_the_rule_it_breaks(overrides: dict[str, object], violation: Violation) -> None:
    with pytest.raises(BadEvent) as info:
        parse_event(orjson.dumps(event(**overrides)), max_bytes=MAX)
    assert info.value.violation is violation
    assert info.value.reason_type == f"BadEvent/{violation.value}"


@pytest.mark.parametrize(("raw", "violation"), [
    (b"x" * 2000, Violation.SIZE), (b"not json", Violation.JSON), (b"[1]", Violation.JSON),
    (b"[" * 200 + b"]" * 200, Violation.DEPTH),
])
def test_a_document_refused_whole_names_its_rule(raw: bytes, violation: Violation) -> None:
    with pytest.raises(BadEvent) as info:
        parse_event(raw, max_bytes=1000)
    assert info.value.violation is violation


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


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"id": "evt-1\u00a0"}, "field 'id' contains a character that is not printable"),
    ({"id": "\u200bevt-1"}, "field 'id' contains a character that is not printable"),
    ({"id": " evt-1"}, "field 'id' begins or ends with white space"),
    ({"id": "evt-1 "}, "field 'id' begins or ends with white space"),
    ({"type": "t\x00"}, "a string holds a NUL character"),
    ({"source": "/bin/\x00sh"}, "a string holds a NUL character"),
    ({"metadata": {"host_id": "h\x00"}}, "a string holds a NUL character"),
    ({"metadata": {"k\x00": "v"}}, "a string holds a NUL character"),
    ({"extra": [{"deep": "\x00"}]}, "a string holds a NUL character"),
    ({"payload": {"cmd": "a\x00"}}, "a string holds a NUL character"),
    ({"type": "t" * 257}, "field 'type' is 257 characters, over the limit of 256"),
    ({"type": "t" * 900_000}, "field 'type' is 900000 characters, over the limit of 256"),
    ({"source": "s" * 16_385}, "field 'source' is 16385 characters, over the limit of 16384"),
    ({"metadata": {"k" * 257: "v"}}, "is 257 characters, over the limit of 256"),
    ({"metadata": {"note": "n" * 16_385}}, "metadata['note'] is 16385 characters, over the limit of 16384"),
    ({"metadata": {"host_id": "h" * 257}}, "metadata['host_id'] is 257 bytes in UTF-8, over the limit of 256"),
    ({"metadata": {"host_id": "日" * 86}}, "metadata['host_id'] is 258 bytes in UTF-8, over the limit of 256"),
    ({"metadata": {"container_id": "c" * 3000}}, "metadata['container_id'] is 3000 bytes"),
    ({"metadata": {"user": "u" * 300}}, "metadata['user'] is 300 bytes"),
    ({"metadata": {"seq": 2**63}}, "metadata['seq'] 9223372036854775808 is out of the 64-bit integer range"),
    ({"metadata": {"seq": 2**64 - 1}}, "is out of the 64-bit integer range"),
    ({"source": ":" * 1340}, "make a graph Process key of 4034 bytes, over the limit of 4000"),
])
def test_what_a_sink_would_refuse_is_rejected_with_its_reason(overrides: dict[str, object], expected: str) -> None:
    assert expected in reason(orjson.dumps(event(**overrides)))


def test_values_at_the_limits_are_accepted() -> None:
    parsed = parse(event(type="t" * 256, source="/" * 3000, metadata={
        "host_id": "日" * 85, "pid": "1", "k" * 256: "v" * 16_384, "seq": 2**63 - 1, "low": -(2**63)}))
    assert parsed["metadata"]["seq"] == 2**63 - 1
    beyond = parse_event(orjson.dumps(event())[:-1] + b',"metadata":{"n":-9223372036854775809}}', max_bytes=MAX)
    assert isinstance(beyond["metadata"]["n"], float)  # past 64 bits, JSON numbers are read as floats
    assert parse(event(id="evt 1"))["id"] == "evt 1"  # inner spaces are kept by NATS headers
    # A NUL written as text, not as a character: an escaped backslash before "u0000".
    assert parse(event(source="C:\\u0000"))["source"] == "C:\\u0000"
    assert parse(event(source=":" * 1300, metadata={"host_id": "h"}))["source"] == ":" * 1300  # no pid: no key


def test_an_object_payload_is_carried_once_as_args() -> None:
    parsed = parse(event(payload=ARGS))
    assert "payload" not in parsed and parsed["args"] == ARGS
    assert orjson.loads(payload_bytes(parsed) or b"") == ARGS
    big = {"blob": "x" * 600_000}
    assert len(orjson.dumps(parse(event(payload=big)))) < 610_000


@pytest.mark.parametrize("raw", [
    b'{"x":[' + b",".join([b"{}"] * 20_000) + b"]}",
    b'{"x":[' + b",".join([b"[]"] * 20_000) + b"]}",
    b'{"x":[' + b",".join([b"1"] * 20_000) + b"]}",
    b"{" + b",".join(b'"k%d":1' % i for i in range(20_000)) + b"}",
    b'{"x":[' + b",".join([b'"a"'] * 20_000) + b"]}",
])
def test_too_many_values_are_rejected_before_parsing(raw: bytes) -> None:
    assert "over the limit of" in reason(raw)


def test_brackets_commas_and_quotes_inside_strings_do_not_count() -> None:
    tricky = "[{" * 50_000 + ',\\"' * 20_000 + "\\\\" * 10
    parsed = parse(event(source="s", extra=tricky, metadata={"cmd": "[" * 200}))
    assert parsed["extra"] == tricky


@pytest.mark.parametrize("depth", [127, 128, 129, 300])
def test_depth_is_exact_around_the_limit(depth: int) -> None:
    nested = b"[" * (depth - 1) + b"1" + b"]" * (depth - 1)  # the event object itself is the first level
    raw = orjson.dumps(event(padding=[[] for _ in range(200)]))[:-1] + b',"extra":' + nested + b"}"
    if depth <= 128:
        assert parse_event(raw, max_bytes=MAX)["id"]
    else:
        assert "nested deeper than 128 levels" in reason(raw)


# Payload bytes that begin with "{" but are no JSON object within the limits: the agent's own bytes.
BEYOND_THE_LIMITS = {
    "not JSON, many commas": b"{" + b"a," * 20_000,
    "not JSON, a NUL escape": b"{not json \\u0000",
    "not JSON, deep": b"{" * 200,
    "JSON, deep": b'{"a":' * 200 + b"1" + b"}" * 200,
    "JSON, many values": b'{"a":[' + b",".join([b"{}"] * 20_000) + b"]}",
    "JSON, a NUL": orjson.dumps({"dst_ip": "1.2.3.4\x00"}),
}


@pytest.mark.parametrize("times", [1, 2])
@pytest.mark.parametrize("data", BEYOND_THE_LIMITS.values(), ids=BEYOND_THE_LIMITS.keys())
def test_payload_bytes_beyond_the_limits_are_kept_opaque(data: bytes, times: int) -> None:
    payload = data
    for _ in range(times):  # base64 of the bytes, or of their base64
        payload = base64.b64encode(payload)
    parsed = parse(event(payload=payload.decode()))
    assert "args" not in parsed
    assert payload_bytes(parsed) == base64.b64decode(payload)


def test_a_payloads_object_within_the_limits_is_read_and_the_event_is_still_checked() -> None:
    inside = base64.b64encode(b'{"a":' * 126 + b"1" + b"}" * 126).decode()  # 127 levels, the event's second
    assert parse(event(payload=inside))["args"]
    opaque = base64.b64encode(BEYOND_THE_LIMITS["JSON, a NUL"]).decode()
    # An opaque payload does not excuse the event: its own strings and shape are held to the limits.
    assert "a string holds a NUL character" in reason(orjson.dumps(event(payload=opaque, extra="x\x00")))
    deep = b"[" * 200 + b"]" * 200
    raw = orjson.dumps(event(payload=opaque, padding=[[] for _ in range(200)]))[:-1] + b',"x":' + deep + b"}"
    assert "nested deeper than 128 levels" in reason(raw)
    assert "a string holds a NUL character" in reason(orjson.dumps(event(payload={"cmd": "a\x00"})))


def test_a_string_ending_in_a_backslash_does_not_hide_what_follows() -> None:
    deep = b"[" * 200 + b"]" * 200
    raw = orjson.dumps(event(source="C:\\", padding=[[] for _ in range(200)]))[:-1] + b',"x":' + deep + b"}"
    assert b'\\\\"' in raw and "nested deeper than 128 levels" in reason(raw)
    quoted = orjson.dumps(event(source='say "[[[["\\', padding=[[] for _ in range(200)]))
    assert parse_event(quoted, max_bytes=MAX)["source"] == 'say "[[[["\\'


def test_the_bounds_keep_every_key_within_every_index() -> None:
    from etl.pipeline import limits

    assert limits.INDEX_KEY_BYTES <= min(limits.PG_BTREE_ITEM_BYTES, limits.GRAPH_KEY_BYTES)
    assert limits.MAX_ID_CHARS * limits.UTF8_MAX_BYTES_PER_CHAR <= limits.INDEX_KEY_BYTES
    assert limits.MAX_IDENTIFIER_BYTES <= limits.INDEX_KEY_BYTES
    # The longest composed key but the Process key, every byte escaped: uid:<host_id>:<uid>.
    widest = "%" * limits.MAX_IDENTIFIER_BYTES
    assert limits.key_bytes("uid", widest, widest) < limits.GRAPH_KEY_BYTES

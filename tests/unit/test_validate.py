"""A raw batch splits into valid events and dead letters that keep the original bytes and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from etl.pipeline import rawbatch
from etl.pipeline.limits import DEFAULT_NATS_MAX_PAYLOAD_BYTES, PUBLISH_HEADER_ROOM_BYTES
from etl.pipeline.validate import validate_batch


def test_raw_batches_round_trip_including_invalid_utf8() -> None:
    batch = [b'{"a": 1}', b"\xff\xfe\x00 binary", "caf\u00e9".encode()]
    texts, binary = rawbatch.pack(batch)
    assert binary == [1]
    unpacked = rawbatch.unpack(texts, binary)
    assert [u.encode() if isinstance(u, str) else u for u in unpacked] == batch


def test_payloads_json_would_blow_up_travel_as_base64() -> None:
    hostile = b"12" + b"\x01" * 10_000
    normal = b'{"id": "e1", "type": "t", "source": "s\\n", "timestamp": 1}'
    texts, binary = rawbatch.pack([normal, hostile])
    assert binary == [1] and len(orjson.dumps(texts)) < 1.4 * (len(normal) + len(hostile))
    assert rawbatch.unpack(texts, binary) == [normal.decode(), hostile]


def test_bad_events_become_dead_letters_with_original_bytes() -> None:
    good_raw = b'{"id":"1","type":"t","source":"s","timestamp":5}'
    raws = rawbatch.unpack(*rawbatch.pack([good_raw, b"\xff\xfe", b"[]"]))
    good, bad = validate_batch(raws, max_bytes=1000)
    assert [g.event["id"] for g in good] == ["1"] and good[0].raw == good_raw
    assert [b.stage for b in bad] == ["enrich", "enrich"]
    assert bad[0].raw_bytes() == b"\xff\xfe" and bad[0].event_encoding == "raw"
    assert "not valid JSON" in bad[0].reason
    assert bad[1].raw_bytes() == b"[]" and "got array" in bad[1].reason
    assert bad[0].id != bad[1].id


def test_each_rule_of_the_contract_is_its_own_reason_type() -> None:
    """Dead letters are counted and sampled by reason type: two events that break different rules are two
    kinds, each labelled by a value of the small fixed set ``Violation``."""
    from etl.errors import Violation
    from etl.pipeline.deadletter import reason_type
    from etl.pipeline.validate import encode_enriched

    good = {"id": "e", "type": "t", "source": "s", "timestamp": 5}
    raws = [b"{", orjson.dumps({**good, "type": "t\x00"}), b"[" * 200 + b"]" * 200, b"x" * 2000,
            orjson.dumps({**good, "metadata": {"seq": 2**63}}), orjson.dumps({**good, "id": " e"})]
    _, bad = validate_batch(raws, max_bytes=1000)
    oversized = encode_enriched([{**good, "blob": "b" * 2000}], [b"raw"], max_payload=1024).oversized
    types = [reason_type(letter.reason) for letter in (*bad, *oversized)]
    assert types == ["BadEvent/json", "BadEvent/nul", "BadEvent/depth", "BadEvent/size", "BadEvent/integer",
                     "BadEvent/id", "BadEvent/max_payload"]
    assert {t.split("/")[1] for t in types} <= {v.value for v in Violation}
    assert bad[1].reason.startswith("BadEvent/nul: a string holds a NUL character")


def test_header_values_cannot_carry_line_breaks() -> None:
    from etl.sinks.nats_publish import HEADER_NAMES, encode

    _, values = encode({"id": "e1", "type": "connect\r\nX-Evil: 1", "timestamp": 5,
                        "metadata": {"host_id": "h\n1"}})
    headers = dict(zip(HEADER_NAMES, values, strict=True))
    assert headers["x-event-type"] == "connect  X-Evil: 1" and headers["x-host-id"] == "h 1"


def test_encode_takes_its_shortcut_only_when_no_value_needs_cleaning() -> None:
    """``encode`` checks all header values at once and cleans them one by one only when needed: whatever the
    values, the result is what cleaning each would give."""
    from etl.sinks.nats_publish import encode, header_value

    tricky = ["h", "", " ", " h", "h ", "\th", "h\u00a0", "\u2003h", "a\nb", "a\r\nb", "\n", "a\x00b", "a\x7f",
              "x\x1fy", "100%", "a b", "日本"]
    for host in tricky:
        for kind in tricky:
            _, values = encode({"id": "e", "type": kind, "timestamp": 5, "metadata": {"host_id": host}}, ("S",))
            assert values == tuple(header_value(v) for v in ("e", host, kind, "5", "S")), (host, kind)


def test_the_shortcut_sees_every_character_header_value_would_change() -> None:
    from etl.sinks.nats_publish import _CONTROL, header_ready

    changed = [c for c in map(chr, range(0x110000)) if c.isspace() or _CONTROL.match(c)]
    assert len(changed) > 40
    assert [hex(ord(c)) for c in changed if header_ready(f"a{c}b")] == []


def test_enriched_events_over_max_payload_become_dead_letters_of_their_raw_bytes() -> None:
    from etl.pipeline.validate import as_message, encode_enriched

    small = {"id": "small", "metadata": {}}
    big = {"id": "big", "metadata": {}, "args": {"blob": "x" * 600_000}}
    encoded, bad, events = encode_enriched([small, big, small], [b"raw-small", b"raw-big", b"raw-small2"],
                                           max_payload=512 * 1024)
    assert [orjson.loads(e)["id"] for e in encoded] == ["small", "small"] == [e["id"] for e in events]
    assert [(b.stage, b.raw_bytes()) for b in bad] == [("enrich", b"raw-big")]
    assert "over the NATS server's max_payload of 524288" in bad[0].reason
    assert orjson.loads(orjson.dumps(as_message(encoded))) == [small, small]
    encoded, bad, events = encode_enriched([big], [b"raw-big"], max_payload=DEFAULT_NATS_MAX_PAYLOAD_BYTES)
    assert len(encoded) == 1 and not bad and events == [big]


def test_the_room_kept_for_headers_holds_the_largest_headers_the_contract_allows() -> None:
    from etl.pipeline.limits import MAX_ID_CHARS, MAX_IDENTIFIER_BYTES, MAX_TYPE_CHARS, PUBLISH_HEADER_OVERHEAD_BYTES
    from etl.sinks.nats_publish import encode, publish_headers, wire_size

    headers, extra = publish_headers("S" * 64)  # the longest stream name NATS_ENRICHED_STREAM takes
    widest = {"id": "😀" * MAX_ID_CHARS, "type": "😀" * MAX_TYPE_CHARS, "timestamp": -(2**63),
              "metadata": {"host_id": "h" * MAX_IDENTIFIER_BYTES}}
    payload, values = encode(widest, extra)
    assert wire_size((payload, values), headers) - len(payload) <= PUBLISH_HEADER_ROOM_BYTES
    # The publisher's quick check: beyond the values the payload holds too, headers add at most the overhead.
    shared = sum(len(v.encode()) for v in values[:-1])
    assert shared <= len(payload)
    assert wire_size((payload, values), headers) - len(payload) - shared <= PUBLISH_HEADER_OVERHEAD_BYTES


def test_the_enrich_checks_load_no_server_client() -> None:
    """The module is pure: importing it loads no client of Redis (nor of any other server)."""
    code = "import sys, etl.pipeline.validate; print(sorted({'redis', 'nats', 'psycopg2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"

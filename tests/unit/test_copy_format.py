"""Binary COPY format: each column type, NULL, the header and trailer, and whole event rows, read back by a
small independent parser of the format."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from etl.errors import SinkDataError
from etl.sinks.copy_format import (
    COLUMNS,
    NULL,
    bytea,
    event_row,
    format_batch,
    jsonb,
    text,
    timestamptz_ms,
)

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def field(encoded: bytes) -> bytes | None:
    """The value of one encoded column: its length prefix checked and removed (None for NULL)."""
    (length,) = struct.unpack("!i", encoded[:4])
    if length == -1:
        assert len(encoded) == 4
        return None
    assert len(encoded) == 4 + length
    return encoded[4:]


def parse(data: bytes) -> list[list[bytes | None]]:
    """Rows of a whole COPY stream, as PostgreSQL reads it."""
    assert data[:11] == b"PGCOPY\n\xff\r\n\x00"
    flags, extension = struct.unpack("!ii", data[11:19])
    assert (flags, extension) == (0, 0)
    pos, rows = 19, []
    while True:
        (count,) = struct.unpack("!h", data[pos:pos + 2])
        pos += 2
        if count == -1:
            assert pos == len(data), "nothing after the trailer"
            return rows
        row: list[bytes | None] = []
        for _ in range(count):
            (length,) = struct.unpack("!i", data[pos:pos + 4])
            pos += 4
            row.append(None if length == -1 else data[pos:pos + length])
            pos += max(length, 0)
        rows.append(row)


def as_time(value: bytes | None) -> datetime:
    assert value is not None
    return PG_EPOCH + timedelta(microseconds=struct.unpack("!q", value)[0])


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "event-1",
        "type": "connect",
        "source": "/usr/bin/psql",
        "timestamp": 1704110400123,
        "metadata": {"host_id": "host-001", "pid": "1234", "enriched_at": "2024-01-01T12:00:00.123Z"},
        "payload": base64.b64encode(b"\x00\x01\xff").decode(),
        "env": "dev",
        "rdns": None,
    }
    return {**base, **overrides}


@pytest.mark.parametrize("value", ["plain", "tab\tnewline\nback\\slash", "\\N", "", "héllo ☃ 𝄞"])
def test_text_is_its_utf8_bytes_unescaped(value: str) -> None:
    assert field(text(value)) == value.encode()


def test_none_is_null_and_empty_string_is_not() -> None:
    assert text(None) == NULL == b"\xff\xff\xff\xff"
    assert field(text("")) == b""


def test_numbers_in_a_text_column_are_decimal_text() -> None:
    assert field(text(1001)) == b"1001"
    assert field(text(1.5)) == b"1.5"


def test_text_refuses_other_types_and_bad_unicode() -> None:
    with pytest.raises(TypeError):
        text(True)
    with pytest.raises(TypeError):
        text({"a": 1})
    with pytest.raises(ValueError):
        text("lone \ud800 surrogate")


@pytest.mark.parametrize("ms", [0, 946_684_800_000, 1704110400123, 253_402_300_799_999, -1])
def test_timestamptz_is_microseconds_from_2000(ms: int) -> None:
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert as_time(field(timestamptz_ms(ms))) == expected


def test_timestamptz_out_of_postgres_range_is_refused_before_it_wraps() -> None:
    with pytest.raises(ValueError, match="out of range"):
        timestamptz_ms(10**17)  # year 3 million
    with pytest.raises(ValueError, match="out of range"):
        timestamptz_ms(2**63)
    with pytest.raises(TypeError):
        timestamptz_ms(1.5)  # type: ignore[arg-type]


def test_jsonb_is_version_one_then_json() -> None:
    value = {"user": "alice", "path": "C:\\tmp", "note": "line\nbreak\ttab", "uid": 1001}
    encoded = field(jsonb(value))
    assert encoded is not None and encoded[:1] == b"\x01"
    assert orjson.loads(encoded[1:]) == value
    with pytest.raises(TypeError):
        jsonb({"too big": 2**70})


def test_bytea_is_the_bytes_themselves() -> None:
    assert field(bytea(b"\x00\xff\\\t")) == b"\x00\xff\\\t"
    assert field(bytea(b"")) == b""
    assert bytea(None) == NULL


def test_event_row_has_every_column_in_order() -> None:
    [row] = parse(format_batch([event()]))
    values = dict(zip(COLUMNS, row, strict=True))
    assert values["id"] == b"event-1"
    assert as_time(values["time"]) == datetime(2024, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert struct.unpack("!q", values["timestamp"] or b"") == (1704110400123,)
    assert (values["type"], values["source"]) == (b"connect", b"/usr/bin/psql")
    assert values["host_id"] == b"host-001"
    assert values["env"] == b"dev"
    assert values["rdns"] is None
    assert values["dst_rdns"] is None, "an event enriched before dst_rdns existed (a dead letter replayed) still fits"
    assert orjson.loads((values["metadata"] or b"")[1:])["enriched_at"] == "2024-01-01T12:00:00.123Z"
    assert values["payload"] == b"\x00\x01\xff"


def test_event_row_carries_both_reverse_dns_names() -> None:
    [row] = parse(format_batch([event(rdns="web-1.example.com", dst_rdns="db.example.net")]))
    values = dict(zip(COLUMNS, row, strict=True))
    assert (values["rdns"], values["dst_rdns"]) == (b"web-1.example.com", b"db.example.net")


def test_event_row_payload_object_and_absent_metadata() -> None:
    [row] = parse(format_batch([event(payload={"cmd": "ls"}, metadata=None)]))
    values = dict(zip(COLUMNS, row, strict=True))
    assert values["payload"] == orjson.dumps({"cmd": "ls"})
    assert values["metadata"] == b"\x01{}"
    assert values["host_id"] is None
    [row] = parse(format_batch([event(payload=None)]))
    assert dict(zip(COLUMNS, row, strict=True))["payload"] is None


INTEL = [{"type": "ip", "value": "203.0.113.9", "source": "feed-a", "severity": "high", "field": "destination",
          "observed": "203.0.113.9"}]
ASSET = {"site": "dc-1", "owner": "db-team", "criticality": "high", "internal": True}
GEO = {"country": "NL", "asn": 64500, "organization": "Example Net"}


def test_event_row_carries_the_lookup_fields_as_json_and_whether_intel_matched() -> None:
    [row] = parse(format_batch([event(intel=INTEL, src_asset=ASSET, dst_asset={**ASSET, "site": None}, dst_geo=GEO)]))
    values = dict(zip(COLUMNS, row, strict=True))
    assert values["intel"] == b"\x01" + orjson.dumps(INTEL)
    assert values["src_asset"] == b"\x01" + orjson.dumps(ASSET)
    assert orjson.loads((values["dst_asset"] or b"")[1:])["site"] is None
    assert values["dst_geo"] == b"\x01" + orjson.dumps(GEO)
    assert values["intel_match"] == b"\x01"


def test_no_match_is_an_empty_list_and_false_and_an_older_event_is_null_and_false() -> None:
    [no_match, older] = parse(format_batch([event(intel=[], src_asset=ASSET, dst_asset=None, dst_geo=None),
                                             event(id="older")]))
    values = dict(zip(COLUMNS, no_match, strict=True))
    assert (values["intel"], values["dst_asset"], values["dst_geo"], values["intel_match"]) == (
        b"\x01[]", None, None, b"\x00")
    values = dict(zip(COLUMNS, older, strict=True))
    assert [values[c] for c in ("intel", "src_asset", "dst_asset", "dst_geo", "intel_match")] == [
        None, None, None, None, b"\x00"]


def test_a_numeric_host_id_is_stored_as_text() -> None:
    [row] = parse(format_batch([event(metadata={"host_id": 42})]))
    assert dict(zip(COLUMNS, row, strict=True))["host_id"] == b"42"


def test_format_batch_is_one_row_per_event_in_order() -> None:
    rows = parse(format_batch([event(id="a"), event(id="b\nc"), event(id="d")]))
    assert [r[0] for r in rows] == [b"a", b"b\nc", b"d"]
    assert parse(format_batch([])) == []
    assert event_row(event()) in format_batch([event()])


def test_format_batch_names_the_bad_event() -> None:
    bad = event(id="event-7")
    del bad["type"]
    with pytest.raises(SinkDataError, match="event-7"):
        format_batch([event(), bad])
    with pytest.raises(SinkDataError, match="event-8"):
        format_batch([event(id="event-8", source="\udcff")])
    with pytest.raises(SinkDataError, match="event-9.*out of range"):
        format_batch([event(id="event-9", timestamp=10**17)])

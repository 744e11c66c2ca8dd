"""COPY text format: escaping, NULL, bytea and JSON columns, and whole event rows."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from etl.errors import SinkDataError
from etl.sinks.copy_format import (
    NULL,
    STAGING_COLUMNS,
    encode_row,
    encode_value,
    escape,
    event_row,
    format_batch,
)


def columns(row: bytes) -> list[bytes]:
    assert row.endswith(b"\n")
    return row[:-1].split(b"\t")


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "event-1",
        "type": "connect",
        "source": "/usr/bin/psql",
        "timestamp": 1704110400000,
        "metadata": {"host_id": "host-001", "pid": "1234", "enriched_at": "2024-01-01T12:00:00.123Z"},
        "payload": base64.b64encode(b"\x00\x01\xff").decode(),
        "env": "dev",
        "rdns": None,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", b"plain"),
        ("a\tb", b"a\\tb"),
        ("a\nb", b"a\\nb"),
        ("a\rb", b"a\\rb"),
        ("back\\slash", b"back\\\\slash"),
        ("\\t is not a tab", b"\\\\t is not a tab"),
        ("\\.", b"\\\\."),  # not the end-of-data marker
        ("", b""),
    ],
)
def test_text_is_escaped(text: str, expected: bytes) -> None:
    assert encode_value(text) == expected


def test_escape_doubles_backslashes_before_adding_its_own() -> None:
    assert escape(b"\\\t\\\n") == b"\\\\\\t\\\\\\n"


def test_unicode_is_utf8() -> None:
    assert encode_value("héllo ☃ 𝄞") == "héllo ☃ 𝄞".encode()


def test_none_is_null_and_empty_string_is_not() -> None:
    assert encode_value(None) == NULL == b"\\N"
    assert encode_value("") != NULL
    assert encode_value("\\N") == b"\\\\N"  # a literal backslash-N is text, not NULL


def test_bytes_are_bytea_hex_with_the_backslash_escaped() -> None:
    assert encode_value(b"\x00\x01\xab\\\t") == b"\\\\x0001ab5c09"
    assert encode_value(b"") == b"\\\\x"
    assert encode_value(bytearray(b"\xff")) == b"\\\\xff"


def test_numbers_and_booleans() -> None:
    assert encode_value(1704110400000) == b"1704110400000"
    assert encode_value(-1) == b"-1"
    assert encode_value(True) == b"t"
    assert encode_value(False) == b"f"
    assert encode_value(1.5) == b"1.5"


def test_dict_is_json_with_escapes() -> None:
    value = {"user": "alice", "path": "C:\\tmp", "note": "line\nbreak\ttab", "uid": 1001}
    encoded = encode_value(value)
    assert b"\t" not in encoded and b"\n" not in encoded
    # COPY undoes the escaping (backslash pairs), leaving orjson's JSON exactly
    assert encoded.replace(b"\\\\", b"\\") == orjson.dumps(value)
    assert orjson.loads(encoded.replace(b"\\\\", b"\\")) == value


def test_unencodable_values_raise() -> None:
    with pytest.raises(TypeError):
        encode_value(object())
    with pytest.raises(ValueError):
        encode_value("lone \ud800 surrogate")
    with pytest.raises(TypeError):
        encode_value({"too big": 2**70})


def test_row_joins_with_tabs_and_ends_with_newline() -> None:
    assert encode_row(["a\tb", None, 3, b"\x01"]) == b"a\\tb\t\\N\t3\t\\\\x01\n"


def test_event_row_columns() -> None:
    row = dict(zip(STAGING_COLUMNS, columns(event_row(event())), strict=True))
    assert row["id"] == b"event-1"
    assert row["timestamp"] == b"1704110400000"
    assert row["host_id"] == b"host-001"
    assert row["rdns"] == NULL
    assert row["dst_rdns"] == NULL, "an event enriched before dst_rdns existed (a dead letter replayed) still fits"
    assert row["env"] == b"dev"
    assert row["payload"] == b"\\\\x0001ff"
    assert orjson.loads(row["metadata"])["enriched_at"] == "2024-01-01T12:00:00.123Z"


def test_event_row_carries_both_reverse_dns_names() -> None:
    row = dict(zip(STAGING_COLUMNS, columns(event_row(event(rdns="web-1.example.com",
                                                             dst_rdns="db.example.net"))), strict=True))
    assert (row["rdns"], row["dst_rdns"]) == (b"web-1.example.com", b"db.example.net")


def test_event_row_payload_object_and_absent_metadata() -> None:
    encoded = event_row(event(payload={"cmd": "ls"}, metadata=None))
    row = dict(zip(STAGING_COLUMNS, columns(encoded), strict=True))
    assert bytes.fromhex(row["payload"][3:].decode()) == orjson.dumps({"cmd": "ls"})
    assert row["metadata"] == b"{}"
    assert row["host_id"] == NULL
    assert columns(event_row(event(payload=None)))[-1] == NULL


def test_format_batch_is_one_row_per_event() -> None:
    data = format_batch([event(id="a"), event(id="b\nc")])
    assert data.count(b"\n") == 2
    assert [line.split(b"\t")[0] for line in data.splitlines()] == [b"a", b"b\\nc"]


def test_format_batch_names_the_bad_event() -> None:
    bad = event(id="event-7")
    del bad["type"]
    with pytest.raises(SinkDataError, match="event-7"):
        format_batch([event(), bad])
    with pytest.raises(SinkDataError, match="event-8"):
        format_batch([event(id="event-8", source="\udcff")])

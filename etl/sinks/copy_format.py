"""Events as rows for PostgreSQL ``COPY ... FROM STDIN`` in text format: pure functions, no I/O.

Text format is one line per row, columns separated by a tab, ``\\N`` for NULL, and a backslash escape for
the characters that would otherwise end a column or a row (backslash, tab, newline, carriage return).
Values become:

- ``None`` -> ``\\N``;
- ``str`` -> its UTF-8 bytes, escaped;
- ``bool`` -> ``t`` / ``f``; ``int`` and ``float`` -> their decimal text;
- ``bytes`` -> bytea hex input (``\\x`` then two hex digits a byte), escaped like any text;
- ``dict`` / ``list`` -> JSON from orjson (for json / jsonb columns), escaped.

A NUL character cannot be carried by text format; it is passed through and the server rejects the row, so the
caller learns which value was at fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from etl.errors import SinkDataError
from etl.events import payload_bytes

# The staging table's columns, in the order ``event_row`` encodes them.
STAGING_COLUMNS = ("id", "type", "source", "timestamp", "env", "rdns", "dst_rdns", "host_id", "metadata",
                   "payload")
NULL = b"\\N"
COLUMN_SEPARATOR = b"\t"
ROW_TERMINATOR = b"\n"
_BYTEA_HEX_PREFIX = b"\\\\x"  # bytea's "\x" prefix, with its backslash escaped for COPY
_NEEDS_ESCAPE = re.compile(rb"[\\\t\n\r]")
# The backslash goes first, so the backslashes the other escapes add are not doubled again.
_ESCAPES = ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r"))


def escape(data: bytes) -> bytes:
    """``data`` with backslash, tab, newline and carriage return escaped for a text-format column."""
    if _NEEDS_ESCAPE.search(data) is None:  # the common case, in one C-level scan
        return data
    for raw, escaped in _ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def encode_value(value: Any) -> bytes:
    """One column of a text-format COPY row (see the module docstring for the mapping).

    Raises ``UnicodeEncodeError`` (a ``ValueError``) for a string that is not valid Unicode (a lone
    surrogate), ``orjson.JSONEncodeError`` (a ``TypeError``) for a dict or list orjson cannot encode, and
    ``TypeError`` for any other type.
    """
    if value is None:
        return NULL
    if isinstance(value, str):
        return escape(value.encode("utf-8"))
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(float(value)).encode("ascii")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _BYTEA_HEX_PREFIX + bytes(value).hex().encode("ascii")
    if isinstance(value, (dict, list)):
        return escape(orjson.dumps(value))
    raise TypeError(f"cannot encode a {type(value).__name__} for COPY")


def encode_row(values: Iterable[Any]) -> bytes:
    """One text-format COPY row, terminated by a newline. Raises as ``encode_value`` does."""
    return COLUMN_SEPARATOR.join([encode_value(v) for v in values]) + ROW_TERMINATOR


def event_row(event: dict[str, Any]) -> bytes:
    """One enriched event as a staging row (``STAGING_COLUMNS``). Raises as ``encode_value`` does, and
    ``KeyError`` when a required field is missing."""
    metadata = event.get("metadata") or {}
    return encode_row((event["id"], event["type"], event["source"], event["timestamp"], event.get("env"),
                       event.get("rdns"), event.get("dst_rdns"), metadata.get("host_id"), metadata,
                       payload_bytes(event)))


def format_batch(events: Sequence[dict[str, Any]]) -> bytes:
    """The staging rows of ``events``, in order. Raises ``SinkDataError`` naming the first bad event."""
    rows = []
    for event in events:
        try:
            rows.append(event_row(event))
        except (KeyError, AttributeError, ValueError, TypeError) as e:
            event_id = event.get("id") if isinstance(event, dict) else None
            raise SinkDataError(f"event {event_id!r} cannot be stored: {type(e).__name__}: {e}") from e
    return b"".join(rows)

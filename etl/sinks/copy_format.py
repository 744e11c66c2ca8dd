"""Events as PostgreSQL binary ``COPY ... FROM STDIN WITH (FORMAT binary)`` data: pure functions, no I/O.

Binary format is a fixed header, then per row a 16-bit column count and each column as a 32-bit length (-1 for
NULL) followed by the value in the type's binary wire form, then a 16-bit -1 trailer. Nothing is escaped, and
the server does no text parsing for the integer, timestamp and bytea columns, which is why it is used: it is
faster to build here than text format and cheaper for the server to read (docs/performance.md). Columns, in ``COLUMNS``
order:

- ``text``: the value's UTF-8 bytes; a number (metadata values may be numbers) as its decimal text;
- ``timestamptz``: microseconds since 2000-01-01 UTC, as a signed 64-bit integer;
- ``bigint`` (the Unix milliseconds): a signed 64-bit integer;
- ``jsonb``: a version byte (1), then the JSON text from orjson;
- ``bytea``: the bytes themselves;
- ``boolean``: one byte, 1 or 0.

The lookup fields (``intel``, ``src_asset``, ``dst_asset``, ``dst_geo``) are ``jsonb``, NULL when the event's
field is null or absent: an event enriched before they existed still stores. ``intel_match`` is whether ``intel``
is a non-empty list, a column of its own so that "every hit" is an index scan, not a JSON test per row.

The server still checks text: a NUL character, or ``\\u0000`` in JSON, makes it reject the row, so the caller
learns which value was at fault. A time outside PostgreSQL's range is refused here, before it could wrap.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from typing import Any

import orjson

from etl.errors import SinkDataError
from etl.pipeline.events import payload_bytes

# The events table's columns, in the order ``event_row`` encodes them.
COLUMNS = ("id", "time", "timestamp", "type", "source", "host_id", "env", "rdns", "dst_rdns", "metadata",
           "payload", "intel", "src_asset", "dst_asset", "dst_geo", "intel_match")
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, no header extension
TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)
JSONB_VERSION = b"\x01"
TRUE = struct.pack("!ib", 1, 1)
FALSE = struct.pack("!ib", 1, 0)
_length = struct.Struct("!i").pack
_int8 = struct.Struct("!iq").pack  # the length (8), then the value
_row_start = struct.Struct("!hi").pack  # the column count, then the first column's length
_two_int8 = struct.Struct("!iqiq").pack
# timestamptz: microseconds from 2000-01-01 UTC; PostgreSQL accepts 4714-11-24 BC up to (not including) 294277.
_PG_EPOCH_MS = 946_684_800_000
_PG_MIN_US = -211_813_488_000_000_000
_PG_END_US = 9_223_371_331_200_000_000


def text(value: Any) -> bytes:
    """A ``text`` column: ``None`` -> NULL, a string -> UTF-8, an int or float -> its decimal text.

    Raises ``UnicodeEncodeError`` (a ``ValueError``) for a string that is not valid Unicode (a lone
    surrogate) and ``TypeError`` for any other type.
    """
    if value is None:
        return NULL
    if type(value) is not str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"cannot store a {type(value).__name__} in a text column")
        value = str(value)
    data = value.encode("utf-8")
    return _length(len(data)) + data


def timestamptz_ms(ms: int) -> bytes:
    """A ``timestamptz`` column from Unix milliseconds. Raises ``ValueError`` outside PostgreSQL's range and
    ``TypeError`` for a non-integer."""
    return _int8(8, _pg_micros(ms))


def _pg_micros(ms: int) -> int:
    if type(ms) is not int:
        raise TypeError(f"cannot store a {type(ms).__name__} as Unix milliseconds")
    micros = (ms - _PG_EPOCH_MS) * 1000
    if not _PG_MIN_US <= micros < _PG_END_US:
        raise ValueError(f"timestamp {ms} (Unix ms) is out of range for PostgreSQL")
    return micros


def jsonb(value: Any) -> bytes:
    """A ``jsonb`` column. Raises ``orjson.JSONEncodeError`` (a ``TypeError``) for what orjson cannot encode."""
    data = orjson.dumps(value)
    return _length(len(data) + 1) + JSONB_VERSION + data


def optional_jsonb(value: Any) -> bytes:
    """A ``jsonb`` column that may be NULL: ``None`` -> NULL, else as ``jsonb``."""
    return NULL if value is None else jsonb(value)


def bytea(value: bytes | None) -> bytes:
    """A ``bytea`` column: the bytes as they are; ``None`` -> NULL."""
    if value is None:
        return NULL
    return _length(len(value)) + value


def event_row(event: dict[str, Any]) -> bytes:
    """One enriched event as a row of ``COLUMNS``. Raises as the column encoders do, and ``KeyError`` when a
    required field is missing.

    This runs for every event and is the sink's main cost in Python, so the common cases are inlined: string
    values (``_optional_text``), the payload as base64 text (decoded without ``base64.b64decode``'s wrapper:
    the event passed ``parse_event``, which checked it strictly).
    """
    get = event.get
    metadata = get("metadata") or {}
    ms = event["timestamp"]
    micros = _pg_micros(ms)  # ms is then within 64 bits too
    event_id, kind, source = event["id"].encode(), event["type"].encode(), event["source"].encode()
    payload = get("payload")
    intel = get("intel")
    return b"".join((
        _row_start(len(COLUMNS), len(event_id)), event_id, _two_int8(8, micros, 8, ms),
        _length(len(kind)), kind, _length(len(source)), source,
        _optional_text(metadata.get("host_id")), _optional_text(get("env")), _optional_text(get("rdns")),
        _optional_text(get("dst_rdns")), jsonb(metadata),
        bytea(binascii.a2b_base64(payload) if type(payload) is str else payload_bytes(event)),
        optional_jsonb(intel), optional_jsonb(get("src_asset")), optional_jsonb(get("dst_asset")),
        optional_jsonb(get("dst_geo")), TRUE if type(intel) is list and intel else FALSE,
    ))


def _optional_text(value: Any) -> bytes:
    """``text(value)``, with a string's case first."""
    if type(value) is str:
        data = value.encode()
        return _length(len(data)) + data
    return text(value)


def format_batch(events: Sequence[dict[str, Any]]) -> bytes:
    """The COPY data for ``events``, header and trailer included, rows in order. Raises ``SinkDataError`` naming
    the first event that cannot be encoded."""
    rows = [HEADER]
    for event in events:
        try:
            rows.append(event_row(event))
        except (KeyError, AttributeError, ValueError, TypeError) as e:
            event_id = event.get("id") if isinstance(event, dict) else None
            raise SinkDataError(f"event {event_id!r} cannot be stored: {type(e).__name__}: {e}") from e
    rows.append(TRAILER)
    return b"".join(rows)

"""What both graph backends store alike: property values (checked before anything is sent) and computed keys.

Both backends must reject the same events: properties are bounded (no blobs), keys are bounded for their indexes,
and both servers store integers in 64 bits (FalkorDB also cannot carry NUL in query text). The limits are the event
contract's (``etl.pipeline.limits``), which refuses such events before they get here; the checks stay for events
from elsewhere (a replayed dead letter of an older version), and for what lookup tables add to an event.

The parts of a computed key are joined with ``:`` after escaping ``%`` and ``:`` (as ``%25`` and ``%3A``), so two
different tuples never share a key.
"""

from __future__ import annotations

import math
from typing import Any

from etl.errors import SinkDataError
from etl.pipeline.limits import (
    GRAPH_KEY_BYTES,
    INT64_MAX,
    INT64_MIN,
    MAX_PROPERTY_CHARS,
    UTF8_MAX_BYTES_PER_CHAR,
)


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A")


def compose_key(*parts: str) -> str:
    """Join ``parts`` into one key string that no other tuple of parts produces."""
    joined = ":".join(parts)
    if "%" not in joined and joined.count(":") == len(parts) - 1:
        return joined  # no part holds a ":" or a "%": nothing to escape
    return ":".join(_escape(p) for p in parts)


def oversize(key: str) -> int | None:
    """``key``'s size in UTF-8 when it is over ``GRAPH_KEY_BYTES``, else ``None``."""
    # Only a key that might be too long is encoded: this runs for every key of every event.
    if len(key) * UTF8_MAX_BYTES_PER_CHAR <= GRAPH_KEY_BYTES:
        return None
    size = len(key.encode("utf-8", "surrogatepass"))
    return size if size > GRAPH_KEY_BYTES else None


def scalar(event_id: str, field: str, value: Any) -> Any:
    """A property value both backends store alike: a string (no NUL, at most ``MAX_PROPERTY_CHARS``), a 64-bit
    integer, a finite float, a bool or None. Raises ``SinkDataError`` otherwise, before anything is sent."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_PROPERTY_CHARS:
            raise SinkDataError(f"event {event_id!r}: {field} is {len(value)} characters, over {MAX_PROPERTY_CHARS}")
        if "\x00" in value:
            raise SinkDataError(f"event {event_id!r}: {field} contains a NUL character")
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise SinkDataError(f"event {event_id!r}: {field} {value} is out of the 64-bit integer range")
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    kind = type(value).__name__
    raise SinkDataError(f"event {event_id!r}: {field} must be a string or a number, got {kind}")

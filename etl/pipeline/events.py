"""The event contract: raw bytes from ``events.raw`` -> a validated event dict, or ``BadEvent`` with a reason.

This module is the only place that knows what a valid event is. The ingest writes protobuf as JSON with Go's
``omitempty``, so an empty field is left out: every field but ``id`` and ``timestamp`` may be absent, and then
means its empty value. A valid event is a JSON object with:

- ``id``: a non-empty string of at most ``MAX_ID_CHARS`` characters with no control characters (it becomes a
  NATS header and a primary key, so line breaks and the like cannot be carried);
- ``timestamp``: integer Unix milliseconds, or an ISO-8601 string with a zone (normalised to milliseconds);
- ``type`` and ``source`` (absent: ``""``, which the parsed event then holds): strings, not null;
- ``metadata`` (absent or null: ``{}``): an object whose values are strings or numbers;
- ``payload`` (absent or null: none): base64 of bytes, or a JSON object. When the bytes (or the bytes of a
  base64 string inside them) are a JSON object, that object is exposed as ``args``;
- ``context`` (absent or null: none): an object, the agent's own context, which enrichment extends (see
  ``etl.pipeline.enrich``); anything else is rejected rather than overwritten;
- no deeper nesting than ``MAX_NESTING_DEPTH`` levels.

Unknown top-level fields and unknown metadata keys are kept as they are.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from etl.errors import BadEvent

Event = dict[str, Any]

KNOWN_METADATA_KEYS = ("host_id", "host_ip", "hostname", "pid", "uid", "user", "container_id", "binary_sha256")
MAX_ID_CHARS = 512
# The enriched event adds a level or two around the input; orjson cannot write more than 255.
MAX_NESTING_DEPTH = 128
# PostgreSQL's timestamptz ends in year 294276, Python's datetime in 9999: keep to what every sink can store.
MIN_TIMESTAMP_MS = 0
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "integer" if isinstance(value, int) else "number" if isinstance(value, float) else "value"
    )


def parse_event(raw: bytes, *, max_bytes: int) -> Event:
    """Validate one raw event. Returns the event dict, normalised (``timestamp`` in ms, an absent ``type`` or
    ``source`` as ``""``, ``metadata`` as ``{}``); raises ``BadEvent`` with a precise reason.

    ``max_bytes`` is checked before any parsing, so an oversized event costs nothing to reject.
    """
    if len(raw) > max_bytes:
        raise BadEvent(f"event is {len(raw)} bytes, over the limit MAX_EVENT_BYTES={max_bytes}")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadEvent(f"not valid JSON: {e}") from None
    if not isinstance(event, dict):
        raise BadEvent(f"event must be a JSON object, got {_type_name(event)}")
    _check_depth(raw, event)
    _check_id(event)
    for name in ("type", "source"):
        if name not in event:
            event[name] = ""  # omitted by the ingest because it was empty
        elif not isinstance(event[name], str):
            raise BadEvent(f"field '{name}' must be a string, got {_type_name(event[name])}")
    event["timestamp"] = _timestamp_ms(event)
    event["metadata"] = _metadata(event.get("metadata"))
    context = event.get("context")
    if context is not None and not isinstance(context, dict):
        raise BadEvent(f"field 'context' must be an object, got {_type_name(context)}")
    args = _payload_args(event.get("payload"))
    if args is not None:
        event["args"] = args
    return event


def _check_depth(raw: bytes, event: Any, limit: int = MAX_NESTING_DEPTH) -> None:
    """Nesting deeper than ``MAX_NESTING_DEPTH`` could not be serialised again downstream (orjson writes at most
    255 levels): reject it here rather than fail the whole batch later. Only events with that many brackets at
    all are walked, so ordinary events cost two byte counts."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return
    stack: list[tuple[Any, int]] = [(event, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise BadEvent(f"event is nested deeper than {MAX_NESTING_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _check_id(event: Event) -> None:
    if "id" not in event:
        raise BadEvent("missing required field 'id'")
    value = event["id"]
    if not isinstance(value, str) or not value:
        raise BadEvent(f"field 'id' must be a non-empty string, got {_type_name(value) if value != '' else 'empty'}")
    if len(value) > MAX_ID_CHARS:
        raise BadEvent(f"field 'id' is {len(value)} characters, over the limit of {MAX_ID_CHARS}")
    if _CONTROL.search(value):
        raise BadEvent("field 'id' contains a control character")


def _timestamp_ms(event: Event) -> int:
    if "timestamp" not in event:
        raise BadEvent("missing required field 'timestamp'")
    value = event["timestamp"]
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str):
        ms = _iso_to_ms(value)
    else:
        raise BadEvent(
            f"field 'timestamp' must be integer Unix milliseconds or an ISO-8601 string, got {_type_name(value)}"
        )
    if not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        raise BadEvent(f"field 'timestamp' {ms} is out of range (Unix ms between 1970 and 9999)")
    return ms


def _iso_to_ms(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise BadEvent(f"field 'timestamp' is not an ISO-8601 time: {text[:64]!r}") from None
    if parsed.tzinfo is None:
        raise BadEvent(f"field 'timestamp' has no time zone: {text[:64]!r}")
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def _metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadEvent(f"field 'metadata' must be an object, got {_type_name(value)}")
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            # repr, cut short: the key is the sender's text and ends up in logs and terminals
            raise BadEvent(f"metadata[{key[:64]!r}] must be a string or a number, got {_type_name(item)}")
    return value


def _payload_args(payload: object) -> dict[str, Any] | None:
    if payload is None:
        return None
    if isinstance(payload, dict):
        return payload
    if not isinstance(payload, str):
        raise BadEvent(f"field 'payload' must be a base64 string or a JSON object, got {_type_name(payload)}")
    return _json_object(_b64decode(payload, "field 'payload' is not valid base64"), nested=True)


def _b64decode(text: str | bytes, reason: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadEvent(reason) from None


def _json_object(data: bytes, *, nested: bool) -> dict[str, Any] | None:
    """The JSON object in ``data``, or in base64 inside it (one level), else ``None``: opaque bytes are fine."""
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        if not nested:
            return None
        try:
            inner = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None
        return _json_object(inner, nested=False)
    if not isinstance(decoded, dict):
        return None
    _check_depth(data, decoded, MAX_NESTING_DEPTH - 1)  # args sit one level inside the event
    return decoded


def payload_bytes(event: Event) -> bytes | None:
    """The payload's bytes: base64-decoded when a string, JSON when an object, ``None`` when absent.

    Call only on events that passed ``parse_event``.
    """
    payload = event.get("payload")
    if payload is None:
        return None
    if isinstance(payload, dict):
        return orjson.dumps(payload)
    return base64.b64decode(payload)

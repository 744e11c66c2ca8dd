"""The event contract: raw bytes from ``events.raw`` -> a validated event dict, or ``BadEvent`` with a reason.

This module is the only place that knows what a valid event is. The ingest writes protobuf as JSON with Go's
``omitempty``, so an empty field is left out: every field but ``id`` and ``timestamp`` may be absent, and then
means its empty value. A valid event is a JSON object with:

- ``id``: a non-empty string of at most ``MAX_ID_CHARS`` characters, every one printable, with no white space at
  either end (it becomes a NATS header, where the ends would be stripped, and a primary key);
- ``timestamp``: integer Unix milliseconds, or an ISO-8601 string with a zone (normalised to milliseconds);
- ``type`` (at most ``MAX_TYPE_CHARS``: it is also a header) and ``source`` (at most ``MAX_PROPERTY_CHARS``)
  (absent: ``""``, which the parsed event then holds): strings, not null;
- ``metadata`` (absent or null: ``{}``): an object whose keys have at most ``MAX_METADATA_KEY_CHARS`` characters
  and whose values are strings of at most ``MAX_PROPERTY_CHARS`` or 64-bit integers or numbers; the identifiers
  (``IDENTIFIER_KEYS``) at most ``MAX_IDENTIFIER_BYTES`` in UTF-8, and ``host_id``, ``pid`` and ``source``
  together within a graph key (``GRAPH_KEY_BYTES``);
- ``payload`` (absent or null: none): base64 of bytes, or a JSON object. A JSON object is moved to ``args`` (the
  event no longer has ``payload``); bytes that are a JSON object (or base64 of one) stay, their object exposed
  as ``args`` too, when it keeps to the limits below; other bytes (a deeper object, one with a NUL, text that is
  not JSON at all) stay as opaque bytes, without ``args``;
- ``context`` (absent or null: none): an object, the agent's own context, which enrichment extends (see
  ``etl.pipeline.enrich``); anything else is rejected rather than overwritten;
- no ``args``: that field is the payload's object, set here and nowhere else, so one sent by the agent is
  rejected rather than overwritten or taken for a payload;
- in the event and in the object read from its payload's bytes: no deeper nesting than ``MAX_NESTING_DEPTH``
  levels, at most ``MAX_JSON_VALUES`` values, and no NUL character in any string or key (checked on the raw
  bytes, before parsing: ``etl.pipeline.scan``).

The limits are declared in ``etl.pipeline.limits``, where the sinks read them. Unknown top-level fields and
unknown metadata keys are kept. After enrichment, the event must also fit the NATS server's ``max_payload``
(``etl.pipeline.validate``).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from etl.errors import BadEvent, Violation
from etl.pipeline.limits import (
    GRAPH_KEY_BYTES,
    IDENTIFIER_KEYS,
    INT64_MAX,
    INT64_MIN,
    MAX_ID_CHARS,
    MAX_IDENTIFIER_BYTES,
    MAX_METADATA_KEY_CHARS,
    MAX_NESTING_DEPTH,
    MAX_PROPERTY_CHARS,
    MAX_TYPE_CHARS,
    UTF8_MAX_BYTES_PER_CHAR,
    key_bytes,
)
from etl.pipeline.scan import check_document

Event = dict[str, Any]

KNOWN_METADATA_KEYS = ("host_id", "host_ip", "hostname", "pid", "uid", "user", "container_id", "binary_sha256")
# PostgreSQL's timestamptz ends in year 294276, Python's datetime in 9999: keep to what every sink can store.
MIN_TIMESTAMP_MS = 0
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STRING_LIMITS = {"type": MAX_TYPE_CHARS, "source": MAX_PROPERTY_CHARS}
_JSON_WHITESPACE = b" \t\n\r"
_SHORT_IDENTIFIER_CHARS = MAX_IDENTIFIER_BYTES // UTF8_MAX_BYTES_PER_CHAR
# A source this short cannot take a Process key over GRAPH_KEY_BYTES, whatever the identifiers beside it: each
# part is at most three bytes a character escaped, four in UTF-8.
_SHORT_SOURCE_CHARS = (GRAPH_KEY_BYTES - 2 - 2 * 3 * MAX_IDENTIFIER_BYTES) // UTF8_MAX_BYTES_PER_CHAR


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "integer" if isinstance(value, int) else "number" if isinstance(value, float) else "value"
    )


def parse_event(raw: bytes, *, max_bytes: int) -> Event:
    """Validate one raw event. Returns the event dict, normalised (``timestamp`` in ms, an absent ``type`` or
    ``source`` as ``""``, ``metadata`` as ``{}``, an object payload as ``args``); raises ``BadEvent`` with a
    precise reason.

    ``max_bytes``, the nesting depth, the number of values and NUL characters are checked before any parsing,
    so a hostile event costs a few passes over its bytes in C to reject.
    """
    if len(raw) > max_bytes:
        raise BadEvent(Violation.SIZE, f"event is {len(raw)} bytes, over the limit MAX_EVENT_BYTES={max_bytes}")
    check_document(raw, max_depth=MAX_NESTING_DEPTH)
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadEvent(Violation.JSON, f"not valid JSON: {e}") from None
    if not isinstance(event, dict):
        raise BadEvent(Violation.JSON, f"event must be a JSON object, got {_type_name(event)}")
    _check_id(event)
    for name, limit in _STRING_LIMITS.items():
        value = event.setdefault(name, "")  # absent: omitted by the ingest because it was empty
        if not isinstance(value, str):
            raise BadEvent(Violation.FIELD, f"field '{name}' must be a string, got {_type_name(value)}")
        if len(value) > limit:
            raise BadEvent(Violation.LENGTH, f"field '{name}' is {len(value)} characters, over the limit of {limit}")
    event["timestamp"] = _timestamp_ms(event)
    event["metadata"] = _metadata(event.get("metadata"), event["source"])
    context = event.get("context")
    if context is not None and not isinstance(context, dict):
        raise BadEvent(Violation.FIELD, f"field 'context' must be an object, got {_type_name(context)}")
    _set_args(event)
    return event


def _set_args(event: Event) -> None:
    """``args``, the payload's object, set here and nowhere else: the agent's own is refused."""
    if "args" in event:
        raise BadEvent(Violation.FIELD, "field 'args' is set by the pipeline from 'payload'; send the object as "
                                        "'payload' instead")
    payload = event.get("payload")
    if isinstance(payload, dict):
        # Carried once, as args (what the correlator reads); payload_bytes gives its bytes back.
        event["args"] = event.pop("payload")
        return
    args = _payload_args(payload)
    if args is not None:
        event["args"] = args


def _check_id(event: Event) -> None:
    if "id" not in event:
        raise BadEvent(Violation.ID, "missing required field 'id'")
    value = event["id"]
    if not isinstance(value, str) or not value:
        got = _type_name(value) if value != "" else "empty"
        raise BadEvent(Violation.ID, f"field 'id' must be a non-empty string, got {got}")
    if len(value) > MAX_ID_CHARS:
        raise BadEvent(Violation.ID, f"field 'id' is {len(value)} characters, over the limit of {MAX_ID_CHARS}")
    if not value.isprintable():
        raise BadEvent(Violation.ID, f"field 'id' contains a character that is not printable: {value[:64]!r}")
    if value != value.strip():
        # NATS strips header values: " evt-1" would be deduplicated as "evt-1".
        raise BadEvent(Violation.ID, f"field 'id' begins or ends with white space: {value[:64]!r}")


def _timestamp_ms(event: Event) -> int:
    if "timestamp" not in event:
        raise BadEvent(Violation.TIMESTAMP, "missing required field 'timestamp'")
    value = event["timestamp"]
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str):
        ms = _iso_to_ms(value)
    else:
        raise BadEvent(Violation.TIMESTAMP, "field 'timestamp' must be integer Unix milliseconds or an ISO-8601 "
                                            f"string, got {_type_name(value)}")
    if not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        raise BadEvent(Violation.TIMESTAMP, f"field 'timestamp' {ms} is out of range (Unix ms between 1970 and 9999)")
    return ms


def _iso_to_ms(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise BadEvent(Violation.TIMESTAMP, f"field 'timestamp' is not an ISO-8601 time: {text[:64]!r}") from None
    if parsed.tzinfo is None:
        raise BadEvent(Violation.TIMESTAMP, f"field 'timestamp' has no time zone: {text[:64]!r}")
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def _metadata(value: object, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadEvent(Violation.FIELD, f"field 'metadata' must be an object, got {_type_name(value)}")
    for key, item in value.items():
        # The common item, a short string under a short key, is checked inline: this runs for every item.
        if len(key) > MAX_METADATA_KEY_CHARS or type(item) is not str or len(item) > MAX_PROPERTY_CHARS:
            _check_metadata_item(key, item)
    for key in IDENTIFIER_KEYS:
        item = value.get(key)
        if type(item) is str and len(item) > _SHORT_IDENTIFIER_CHARS:
            size = len(item.encode("utf-8", "surrogatepass"))
            if size > MAX_IDENTIFIER_BYTES:
                raise BadEvent(Violation.KEY, f"metadata[{key!r}] is {size} bytes in UTF-8, over the limit of "
                                              f"{MAX_IDENTIFIER_BYTES}")
    host_id, pid = value.get("host_id"), value.get("pid")
    if host_id not in (None, "") and pid not in (None, "") and len(source) > _SHORT_SOURCE_CHARS:
        size = key_bytes(str(host_id), str(pid), source)
        if size > GRAPH_KEY_BYTES:
            raise BadEvent(Violation.KEY, "metadata host_id and pid with source make a graph Process key of "
                                          f"{size} bytes, over the limit of {GRAPH_KEY_BYTES}")
    return value


def _check_metadata_item(key: str, item: object) -> None:
    # repr, cut short: the key is the sender's text and ends up in logs and terminals
    if len(key) > MAX_METADATA_KEY_CHARS:
        raise BadEvent(Violation.LENGTH, f"metadata key {key[:64]!r}... is {len(key)} characters, over the limit of "
                                         f"{MAX_METADATA_KEY_CHARS}")
    if type(item) is str:
        if len(item) > MAX_PROPERTY_CHARS:
            raise BadEvent(Violation.LENGTH, f"metadata[{key[:64]!r}] is {len(item)} characters, over the limit of "
                                             f"{MAX_PROPERTY_CHARS}")
    elif type(item) is int:
        if not INT64_MIN <= item <= INT64_MAX:
            raise BadEvent(Violation.INTEGER, f"metadata[{key[:64]!r}] {item} is out of the 64-bit integer range")
    elif type(item) is not float:
        raise BadEvent(Violation.FIELD, f"metadata[{key[:64]!r}] must be a string or a number, got {_type_name(item)}")


def _payload_args(payload: object) -> dict[str, Any] | None:
    if payload is None:
        return None
    if not isinstance(payload, str):
        raise BadEvent(Violation.FIELD, "field 'payload' must be a base64 string or a JSON object, got "
                                        f"{_type_name(payload)}")
    return _json_object(_b64decode(payload, "field 'payload' is not valid base64"), nested=True)


def _b64decode(text: str | bytes, reason: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadEvent(Violation.FIELD, reason) from None


def _json_object(data: bytes, *, nested: bool) -> dict[str, Any] | None:
    """The JSON object in ``data``, or in base64 inside it (one level), else ``None``: opaque bytes are fine.

    Bytes that begin with ``{`` are read as JSON when they are a JSON object within the event's limits (checked
    before parsing); any other bytes, ``{`` first or not, are the agent's own and stay opaque: never a reason to
    refuse the event."""
    if data.lstrip(_JSON_WHITESPACE)[:1] == b"{":
        try:
            check_document(data, max_depth=MAX_NESTING_DEPTH - 1)  # args sit one level inside the event
            decoded = orjson.loads(data)
        except (BadEvent, orjson.JSONDecodeError):
            return None
        return decoded if isinstance(decoded, dict) else None
    if not nested:
        return None
    try:
        inner = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _json_object(inner, nested=False)


def payload_bytes(event: Event) -> bytes | None:
    """The payload's bytes: base64-decoded when a string; when the payload was an object (now ``args`` alone:
    ``parse_event`` refuses an ``args`` of the agent's own), the JSON of ``args``; ``None`` when there is neither.

    Call only on events that passed ``parse_event``.
    """
    payload = event.get("payload")
    if payload is None:
        args = event.get("args")
        return orjson.dumps(args) if isinstance(args, dict) else None
    if isinstance(payload, dict):
        return orjson.dumps(payload)
    return base64.b64decode(payload)

"""The lookup fields of an enriched event as graph row values: its indicator matches, and what the lookups say of
the peer it talks to. Pure functions, no I/O; ``etl.sinks.graph.rows`` puts their results in each row, checked as
its other values are (``etl.sinks.graph.values``).

Indicators. Each entry of the event's ``intel`` becomes an ``Indicator`` node keyed by ``compose_key(type, value,
source)`` (one feed's view of one value: two feeds naming it make two nodes) and one ``MATCHED`` relationship from
the event. An event may report one indicator more than once (matched through two fields, its host's address and its
peer's; or listed by one feed with two severities): the first entry wins, so the event has one ``MATCHED`` per
indicator, carrying that entry's ``field`` and ``observed``. Each entry travels as a list in ``MATCH_FIELDS`` order
(FalkorDB's query header takes lists, not maps; see ``etl.sinks.graph.cypher.positional``), its last item marking
the batch's newest match of that indicator: the one whose severity and time the Indicator takes (``mark_newest``).

Peers. A ``NetworkEndpoint`` takes its ASN, country and internal flag from the newest event that says anything of
them (``mark_peer_newest``): one row per endpoint and batch, whose time the statement compares with the endpoint's
``lookups_at`` so that an older event, written later, changes nothing. An event enriched before the lookups existed
has no ``intel``, ``dst_asset`` or ``dst_geo``: no Indicator, and its endpoint learns nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etl.errors import SinkDataError
from etl.pipeline.limits import GRAPH_KEY_BYTES
from etl.sinks.graph.values import compose_key, oversize, scalar

# An entry of a row's ``intel`` list, by position.
MATCH_FIELDS = ("key", "type", "value", "source", "severity", "field", "observed", "newest")
NEWEST = MATCH_FIELDS.index("newest")
_TEXT_FIELDS = ("type", "value", "source", "severity", "field", "observed")
# The peer's fields a NetworkEndpoint learns: row field -> (event field, its key).
ENDPOINT_LOOKUPS = {"dst_asn": ("dst_geo", "asn"), "dst_country": ("dst_geo", "country"),
                    "dst_internal": ("dst_asset", "internal")}
_UNKNOWN_PEER: dict[str, Any] = dict.fromkeys(ENDPOINT_LOOKUPS)


def matches(event_id: str, intel: Any) -> list[list[Any]]:
    """The event's ``intel`` as ``MATCH_FIELDS`` lists, one per indicator key (the first entry wins), ``newest``
    false.

    Raises ``SinkDataError`` when ``intel`` is neither absent nor a list of objects with text fields, or when an
    indicator's key is over ``GRAPH_KEY_BYTES`` in UTF-8.
    """
    if intel is None:
        return []
    if not isinstance(intel, list):
        raise SinkDataError(f"event {event_id!r}: intel must be a list, got {type(intel).__name__}")
    by_key: dict[str, list[Any]] = {}
    for entry in intel:
        if not isinstance(entry, dict):
            raise SinkDataError(f"event {event_id!r}: an intel entry must be an object, got {type(entry).__name__}")
        values = [_text(event_id, name, entry.get(name)) for name in _TEXT_FIELDS]
        kind, value, source = values[:3]
        if not (kind and value and source):
            raise SinkDataError(f"event {event_id!r}: an intel entry lacks its type, value or source")
        key = compose_key(kind, value, source)
        if (size := oversize(key)) is not None:
            raise SinkDataError(f"event {event_id[:64]!r}: an indicator's key is {size} bytes in UTF-8, over the "
                                f"{GRAPH_KEY_BYTES} a graph key may have")
        by_key.setdefault(key, [key, *values, False])
    return list(by_key.values())


def _text(event_id: str, name: str, value: Any) -> str | None:
    value = scalar(event_id, f"intel.{name}", value)
    return None if value is None else str(value)


def endpoint_lookups(event_id: str, event: dict[str, Any]) -> dict[str, Any]:
    """The peer's ASN, country and internal flag, each ``None`` when the event does not say. Raises
    ``SinkDataError`` when ``dst_geo`` or ``dst_asset`` is neither absent nor an object, or holds a value no graph
    can store."""
    if event.get("dst_geo") is None and event.get("dst_asset") is None:
        return _UNKNOWN_PEER  # an event enriched before the lookups: no loop for it
    found: dict[str, Any] = {}
    for field, (source, key) in ENDPOINT_LOOKUPS.items():
        holder = event.get(source)
        if holder is not None and not isinstance(holder, dict):
            raise SinkDataError(f"event {event_id!r}: {source} must be an object, got {type(holder).__name__}")
        found[field] = None if holder is None else scalar(event_id, f"{source}.{key}", holder.get(key))
    return found


def mark_newest(rows: Sequence[dict[str, Any]]) -> None:
    """Mark, for each indicator the batch's ``rows`` match, the match of its newest event (the later row on equal
    times): the Indicator's severity and ``last_seen`` are written once per batch, from it."""
    newest: dict[str, tuple[Any, list[Any]]] = {}
    for row in rows:
        for match in row["intel"]:
            latest = newest.get(match[0])
            if latest is None or row["timestamp"] >= latest[0]:
                newest[match[0]] = (row["timestamp"], match)
    for _, match in newest.values():
        match[NEWEST] = True


def mark_peer_newest(rows: Sequence[dict[str, Any]]) -> None:
    """Mark (``dst_newest``), for each endpoint of the batch's ``rows``, the row of its newest event (the later row
    on equal times) among those that say something of the peer: its ASN, country and internal flag become the
    endpoint's. A row whose lookup fields are all null (an event enriched before the lookups, or a peer that is
    no IP address) is never marked, so it erases nothing."""
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        endpoint = row["endpoint_id"]
        if endpoint is None or all(row[field] is None for field in ENDPOINT_LOOKUPS):
            continue
        latest = newest.get(endpoint)
        if latest is None or row["timestamp"] >= latest["timestamp"]:
            newest[endpoint] = row
    for row in newest.values():
        row["dst_newest"] = True

"""Rows: an enriched event as the flat record the graph statements read, checked so both backends store it alike.

Keys. Every label has exactly one key property, so one uniqueness constraint per label works on both backends,
and every MERGE matches on that key alone (other properties are SET afterwards):

- ``Event.id``: the event id.
- ``Host.host_id``: ``metadata.host_id``.
- ``Container.container_id``: ``metadata.container_id``.
- ``User.key``: ``"uid:<host_id>:<uid>"`` when the event has both a host_id and a uid (uids are only unique
  per host); otherwise ``"name:<user>"`` when it has a user name; otherwise no User node.
- ``Process.key``: ``"<host_id>:<pid>:<source>"`` (a pid is only unique per host, and reused over time, so the
  executable is part of it); no Process node without host_id and pid. A missing source is the empty string.

The parts of a computed key are joined with ``:`` after escaping ``%`` and ``:`` (as ``%25`` and ``%3A``), so
two different tuples never share a key (``etl.sinks.graph.values``). Identifiers (host_id, uid, pid, container_id)
are stored as strings.

- ``NetworkEndpoint.endpoint_id``: ``"<ip>:<port>"`` of the peer a network event talks to (see
  ``etl.sinks.graph.endpoints``).
- ``Indicator.key``: ``"<type>:<value>:<source>"`` of each indicator the event matched: the row's ``intel``, a
  list of lists (see ``etl.sinks.graph.lookups``).

Only context the event carries becomes a node: no Host without host_id, no Container without container_id...
A missing or empty value counts as absent. Readable properties of Host, User and Process keep their last
non-null value, so an event lacking e.g. a hostname does not erase one learnt earlier.

Some fields sum up the batch, so that a statement writes a hub node or relationship once per batch, not once per
event: ``host_newest`` marks the row of each host's latest event (its time, env and rdns become the Host's),
the first row of each (host, endpoint) pair carries the pair's ``flow_count``, ``flow_first`` and ``flow_last``
(0 and None on the pair's other rows), each indicator's newest match is marked (its severity and time become the
Indicator's), and so is each endpoint's newest row that says something of the peer (``dst_newest``: its ASN,
country and internal flag become the endpoint's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from etl.errors import PeerDataError, SinkDataError
from etl.pipeline.limits import GRAPH_KEY_BYTES, MAX_PROPERTY_CHARS
from etl.sinks.base import Event
from etl.sinks.graph import lookups
from etl.sinks.graph.endpoints import endpoint_of
from etl.sinks.graph.values import compose_key, oversize, scalar

__all__ = ["ROW_FIELDS", "Row", "as_lists", "build_row", "build_rows", "compose_key", "process_keys"]

Row = dict[str, Any]

_EVENT_FIELDS = ("type", "source", "timestamp", "env", "rdns", "dst_rdns")
_METADATA_FIELDS = ("host_id", "uid", "pid", "container_id", "host_ip", "hostname", "user", "binary_sha256",
                    "enriched_at")
_ENDPOINT_FIELDS = ("endpoint_id", "dst_ip", "dst_port", "protocol", *lookups.ENDPOINT_LOOKUPS)
# What build_row sets last, before build_rows sums up the batch and as_lists marks new Processes.
_BATCH_DEFAULTS = {"host_newest": False, "flow_count": 0, "flow_first": None, "flow_last": None, "dst_newest": False,
                   "process_new": False}
_NO_ENDPOINT = {**dict.fromkeys(_ENDPOINT_FIELDS), **_BATCH_DEFAULTS}
# A row's fields, in the order build_row makes them.
ROW_FIELDS = ("id", *_EVENT_FIELDS, *_METADATA_FIELDS, "user_host_id", "user_key", "process_key", "intel",
              *_ENDPOINT_FIELDS, *_BATCH_DEFAULTS)
_PROCESS_NEW = ROW_FIELDS.index("process_new")
# The row fields that are node keys (see NODE_KEYS).
_KEY_FIELDS = ("id", "host_id", "container_id", "user_key", "process_key", "endpoint_id")


def _text(event_id: str, field: str, value: Any) -> str | None:
    """A metadata value as a string; None or "" means absent. Raises SinkDataError on a non-scalar."""
    if value is None:
        return None
    value = scalar(event_id, field, value)
    if value is None:
        return None
    return str(value) or None


def _check_key_sizes(row: Row) -> None:
    """Raise ``SinkDataError`` when a key of ``row`` is over ``GRAPH_KEY_BYTES`` in UTF-8 (``PeerDataError`` for
    the endpoint's, which comes from the payload)."""
    for field in _KEY_FIELDS:
        value = row[field]
        if value is not None and (size := oversize(value)) is not None:
            error = PeerDataError if field == "endpoint_id" else SinkDataError
            raise error(f"event {row['id'][:64]!r}: its {field} is {size} bytes in UTF-8, over the "
                        f"{GRAPH_KEY_BYTES} a graph key may have")


def build_row(event: Event) -> Row:
    """One Cypher row for one enriched event: flat, scalar values only, computed keys included.

    Raises ``SinkDataError`` when the event has no string id or carries a value no graph can store.
    """
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise SinkDataError(f"event without a string id: {event_id!r}")
    meta = event.get("metadata") or {}
    if not isinstance(meta, dict):
        raise SinkDataError(f"event {event_id!r}: metadata must be an object")
    timestamp = event.get("timestamp")
    # Every stored Event has a timestamp: MERGE_CYPHER tells a new Event by its lack of one.
    if type(timestamp) is not int and not (type(timestamp) is float and math.isfinite(timestamp)):
        raise SinkDataError(f"event {event_id!r}: timestamp must be a number of milliseconds, got {timestamp!r:.64}")
    row: Row = {"id": event_id}
    # The common value, a short string without NUL, is checked inline: this runs for every field of every event.
    for f in _EVENT_FIELDS:
        v = event.get(f)
        plain = type(v) is str and len(v) <= MAX_PROPERTY_CHARS and "\x00" not in v
        row[f] = v if plain else scalar(event_id, f, v)
    for f in _METADATA_FIELDS:
        v = meta.get(f)
        plain = type(v) is str and 0 < len(v) <= MAX_PROPERTY_CHARS and "\x00" not in v
        row[f] = v if plain else _text(event_id, f, v)
    host_id, uid, pid, user = row["host_id"], row["uid"], row["pid"], row["user"]
    row["user_host_id"] = host_id if host_id and uid else None
    if host_id and uid:
        row["user_key"] = compose_key("uid", host_id, uid)
    else:
        row["user_key"] = compose_key("name", user) if user else None
        row["uid"] = None  # a uid without its host identifies nobody
    row["process_key"] = compose_key(host_id, pid, row["source"] or "") if host_id and pid else None
    row["intel"] = lookups.matches(event_id, event.get("intel"))
    row.update(_endpoint_fields(event_id, event))
    _check_key_sizes(row)
    return row


def _endpoint_fields(event_id: str, event: Event) -> Row:
    """The row's endpoint fields (see ``etl.sinks.graph.endpoints``; what the lookups say of the peer, see
    ``etl.sinks.graph.lookups``), then the batch fields' defaults. Raises ``PeerDataError`` for a peer the graph
    cannot store, ``SinkDataError`` for lookup fields it cannot."""
    endpoint = endpoint_of(event)
    if endpoint is None:
        return _NO_ENDPOINT
    ip, protocol = endpoint.ip, endpoint.protocol
    plain = protocol is None or (len(protocol) <= MAX_PROPERTY_CHARS and "\x00" not in protocol)
    try:
        peer = {"endpoint_id": endpoint.endpoint_id,
                "dst_ip": ip if "\x00" not in ip and len(ip) <= MAX_PROPERTY_CHARS else scalar(event_id, "dst_ip", ip),
                "dst_port": endpoint.port, "protocol": protocol if plain else scalar(event_id, "protocol", protocol)}
    except SinkDataError as e:
        raise PeerDataError(str(e)) from None
    return {**peer, **lookups.endpoint_lookups(event_id, event), **_BATCH_DEFAULTS}


def build_rows(events: Sequence[Event]) -> list[Row]:
    """Rows for a batch, one per event id (the last occurrence wins), in first-seen order, with the batch's
    sums: each host's newest row (``host_newest``), each (host, endpoint) pair's flow on its first row, each
    indicator's newest match (``etl.sinks.graph.lookups.mark_newest``) and each endpoint's newest row that says
    something of its peer (``dst_newest``, ``etl.sinks.graph.lookups.mark_peer_newest``).

    Raises ``SinkDataError`` as :func:`build_row` does.
    """
    by_id: dict[str, Row] = {}
    for event in events:
        row = build_row(event)
        by_id[row["id"]] = row
    rows = list(by_id.values())
    _sum_batch(rows)
    lookups.mark_newest(rows)
    lookups.mark_peer_newest(rows)
    return rows


def _sum_batch(rows: list[Row]) -> None:
    """Mark each host's newest row (the later row on equal times), put each (host, endpoint) pair's flow on the
    pair's first row, and give every row of an endpoint the first protocol the batch names for it."""
    newest: dict[str, Row] = {}
    flows: dict[tuple[str, str], Row] = {}
    protocols: dict[str, str] = {}
    for row in rows:
        if row["protocol"] is not None:
            protocols.setdefault(row["endpoint_id"], row["protocol"])
    for row in rows:
        host_id, timestamp = row["host_id"], row["timestamp"]
        if row["endpoint_id"] is not None and row["protocol"] is None:
            row["protocol"] = protocols.get(row["endpoint_id"])
        if host_id is None:
            continue
        latest = newest.get(host_id)
        if latest is None or timestamp >= latest["timestamp"]:
            newest[host_id] = row
        if row["endpoint_id"] is None:
            continue
        first = flows.setdefault((host_id, row["endpoint_id"]), row)
        if first is row:
            row.update(flow_count=1, flow_first=timestamp, flow_last=timestamp)
        else:
            first["flow_count"] += 1
            first["flow_first"] = min(first["flow_first"], timestamp)
            first["flow_last"] = max(first["flow_last"], timestamp)
    for row in newest.values():
        row["host_newest"] = True


def process_keys(rows: Sequence[Row]) -> list[str]:
    """The distinct Process keys of ``rows``, in first-seen order."""
    return list(dict.fromkeys(row["process_key"] for row in rows if row["process_key"] is not None))


def as_lists(rows: Sequence[Row], stored_processes: set[str] | None = None) -> list[list[Any]]:
    """The rows as the write statements read them: lists in :data:`ROW_FIELDS` order.

    Given the Process keys the graph holds (``stored_processes``), each other key gets ``process_new`` on the
    first row that has it, for :data:`CREATE_CYPHER` to create that Process; the rows after it merge it.
    """
    if stored_processes is None:
        return [list(row.values()) for row in rows]
    claimed = set(stored_processes)
    out = []
    for row in rows:
        values = list(row.values())
        key = row["process_key"]
        if key is not None and key not in claimed:
            claimed.add(key)
            values[_PROCESS_NEW] = True
        out.append(values)
    return out

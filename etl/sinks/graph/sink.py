"""The graph sink: enriched events as a graph of who did what, where (see ``etl.sinks.graph.cypher``).

Backends (chosen by the NEO4J_URI scheme): ``falkor://`` is FalkorDB (``etl.sinks.graph.falkordb_backend``); ``bolt``
and ``neo4j`` schemes are Neo4j (``etl.sinks.graph.neo4j_backend``). Both run the same statements verbatim, with the
rows as lists; only the schema DDL differs. A batch is written with :data:`CREATE_CYPHER` once the unique constraints
of Event and Process are known to be enforced, and with :data:`MERGE_CYPHER` when that statement is refused (the
batch holds an event already stored) or before.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

from etl.config import Settings
from etl.errors import SinkUnavailable
from etl.sinks.base import Event, write_deadline
from etl.sinks.graph.backend import FALKOR_SCHEME, GraphBackend, KeyConflict
from etl.sinks.graph.cypher import CREATE_CYPHER, MERGE_CYPHER, STORED_PROCESSES_CYPHER
from etl.sinks.graph.rows import as_lists, build_rows, process_keys


def connect_backend(settings: Settings) -> GraphBackend:
    """Open a connection to the graph server NEO4J_URI names. Raises ``SinkUnavailable``."""
    scheme = urlsplit(settings.neo4j_uri).scheme
    # Imported here: a pool loads only the driver of the server it writes to.
    if scheme == FALKOR_SCHEME:
        from etl.sinks.graph import falkordb_backend

        return falkordb_backend.connect(settings)
    from etl.sinks.graph import neo4j_backend

    return neo4j_backend.connect(settings)


class GraphSink:
    """The ``Sink`` for the graph: Event, Host, User, Process, Container, NetworkEndpoint and Indicator nodes per
    batch.

    ``write`` returns the number of Event nodes it newly created (0 on a replay), also with concurrent writers:
    those are what a flow's ``COMMUNICATES.count`` adds up (see ``etl.sinks.graph.cypher``). It can be short when
    the driver ran a write again whose commit had succeeded (its answer lost). ``write`` or
    ``check`` before ``open`` opens the sink (so a server that was down at start is picked up later); after
    ``close`` they raise ``SinkUnavailable`` until ``open`` is called again.
    """


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
        if one of them is stored by then (a replay, another writer), the batch is merged instead. Every request
        shares one deadline, ``Settings.sink_budget_s`` from now (see ``etl.sinks.base``).
        Raises ``SinkUnavailable``/``TransientError`` when a retry may succeed (``TransientError`` too when the
        budget ran out between requests), ``SinkDataError`` when not.
        """
        deadline = write_deadline(self._settings.sink_budget_s)
        rows = build_rows(events)
        if not rows:
            return 0
        backend = self._backend_or_open()
        if backend.keys_enforced(deadline):
            stored = backend.stored_keys(STORED_PROCESSES_CYPHER, process_keys(rows), deadline)
            try:
                return backend.write_rows(CREATE_CYPHER, as_lists(rows, stored), deadline)
            except KeyConflict:
                pass  # nothing of it was written; another writer may have stored a Process meanwhile
        return backend.write_rows(MERGE_CYPHER, as_lists(rows), deadline)

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


def count_merged(settings: Settings) -> int:
    """Event nodes in the graph, read without the sink's schema set-up: looking must not write. Raises
    ``SinkUnavailable``."""
    backend = connect_backend(settings)
    try:
        return backend.count_events()
    finally:
        backend.close()


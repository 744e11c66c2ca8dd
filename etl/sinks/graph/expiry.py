"""Retention in the graph: Event nodes older than ``GRAPH_RETENTION`` leave it, with their relationships, a batch at
a time (``expire_events_cypher``), over a connection of their own: never the sink's, so the writers wait for
nothing of it but the server's time. Host, NetworkEndpoint, User, Process, Container and Indicator nodes stay, and so
does each Host's COMMUNICATES with its endpoints, with their ``last_seen`` and counts. An Indicator is context like a
Host: one no Event MATCHES any more keeps its severity and ``last_seen`` (when it was last hit), which an analyst
reads, and is matched again by the next event that names it; only its MATCHED relationships leave, with their
Events.
"""

from __future__ import annotations

from etl.config import Settings
from etl.sinks.base import write_deadline
from etl.sinks.graph.backend import GraphBackend
from etl.sinks.graph.cypher import expire_events_cypher
from etl.sinks.graph.sink import connect_backend

MS_PER_S = 1000


class GraphExpiry:
    """The graph's ``etl.retention.runs.Expiry``. Connects at its first batch; one thread at a time."""

    sink = "graph"
    removes = "Event nodes"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._statement = expire_events_cypher(settings.graph_retention_batch)
        self._backend: GraphBackend | None = None
        self.retention_s = settings.graph_retention_s
        self.batch = settings.graph_retention_batch
        self.lease_key = f"graph:{settings.neo4j_uri.rpartition('@')[2]}:{settings.graph_name}"

    def remove_before(self, cutoff_s: float) -> int:
        """Remove at most ``batch`` Event nodes whose ``timestamp`` is before ``cutoff_s`` (Unix seconds), in one
        statement timed as a sink's write; how many. Raises ``SinkUnavailable`` or ``TransientError``."""
        if self._backend is None:
            self._backend = connect_backend(self._settings)
        return self._backend.expire(self._statement, int(cutoff_s * MS_PER_S),
                                    write_deadline(self._settings.sink_budget_s))

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

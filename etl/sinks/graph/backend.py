"""What the graph sink needs of a graph server: the interface both backends implement, and their shared error."""

from __future__ import annotations

from typing import Any, Protocol

from etl.errors import TransientError

FALKOR_SCHEME = "falkor"  # NEO4J_URI's scheme for FalkorDB; bolt and neo4j are Neo4j



class KeyConflict(TransientError):
    """A write would have stored a second node with a key already stored (an event written before, or
    meanwhile by another writer); the server wrote nothing of it. The sink then merges the batch instead; a
    conflict while merging (two writers at once) is worth a retry."""


class GraphBackend(Protocol):
    """One graph server behind the sink. Connected by its module's ``connect(settings)``; thread-safe.

    The requests of one write share its ``deadline``, in ``time.monotonic()`` seconds (see ``etl.sinks.base``):
    each is sent with a server-side timeout that ends by then (which the server may not enforce, see each backend),
    and none is sent once it has passed: ``TransientError`` instead.
    """

    def ensure_schema(self) -> None:
        """Create the key constraints of :data:`NODE_KEYS` if missing. Idempotent."""

    def keys_enforced(self, deadline: float) -> bool:
        """Whether the server now enforces the unique constraints of Event and Process, so :data:`CREATE_CYPHER`
        cannot store either twice. May ask the server, before ``deadline``; raises ``SinkUnavailable``, or
        ``TransientError`` when the deadline has passed."""

    def stored_keys(self, statement: str, keys: list[str], deadline: float) -> set[str]:
        """Run the read ``statement`` (:data:`STORED_PROCESSES_CYPHER`) on ``keys``, ending by ``deadline``; return
        its ``key`` column. Raises like ``GraphSink.write``."""

    def write_rows(self, statement: str, rows: list[list[Any]], deadline: float) -> int:
        """Run ``statement`` (:data:`CREATE_CYPHER` or :data:`MERGE_CYPHER`) on ``rows`` (see ``as_lists``) in
        one transaction, ending by ``deadline``; return its ``created`` column. Raises ``KeyConflict`` when the
        statement would break a unique constraint (and then writes nothing), and like ``GraphSink.write``."""

    def expire(self, statement: str, cutoff_ms: int, deadline: float) -> int:
        """Run the retention ``statement`` (``expire_events_cypher``) with ``$cutoff`` = ``cutoff_ms`` in one
        transaction, ending by ``deadline``; return its ``removed`` column (0 when there is no graph yet, which it
        does not create). Raises ``SinkUnavailable`` or ``TransientError`` (also when no time is left)."""

    def count_events(self) -> int:
        """How many Event nodes the graph holds (:data:`COUNT_EVENTS_CYPHER`)."""

    def check(self) -> None:
        """Raise ``SinkUnavailable`` if the server does not answer."""

    def close(self) -> None:
        """Release connections. Safe to call twice."""

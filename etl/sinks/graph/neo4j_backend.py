"""Neo4j backend of the graph sink, over Bolt with the official ``neo4j`` driver.

Connects to NEO4J_URI (``bolt://``, ``neo4j://`` and their ``+s``/``+ssc`` forms) as NEO4J_USER with
NEO4J_PASSWORD, and writes to the server's default database (GRAPH_NAME is FalkorDB's and is not used here).

Writes run as managed transactions (``session.execute_write``), which the driver retries on transient
failures (deadlocks, leader switches, dropped connections). Time-outs come from the sink's budget
(``Settings.sink_budget_s``) and the write's deadline (see ``etl.sinks.base``): each call's attempts carry
``ATTEMPT_BUDGET_SHARE`` of the budget as their server-side timeout, or less when the deadline is nearer (ending
``TIMEOUT_GRACE_S`` before it); the call waits for a connection only as long as leaves its first attempt that
time; and an attempt, the first too, starts only if its timeout ends by the deadline (else the call raises, with
the last failure if there was one). Not bounded by the deadline: the wait for a connection before a rerun (as long
as the call's first wait may be; the rerun is then refused if late). Each attempt the driver makes
after a failed one (about a second later: its retry delay) is counted in ``etl_graph_write_reruns_total``, by the
Neo4j code of that failure.

Errors: ServiceUnavailable, SessionExpired, a full connection pool, a transaction timed out or terminated (while
waiting for a lock too), refused credentials or a missing database become ``SinkUnavailable``; Neo4j's
TransientError (incl. DeadlockDetected) and server faults ``TransientError``; a node refused by a uniqueness
constraint ``KeyConflict``; any other ClientError (CypherTypeError, another ConstraintError...), a value too large
for an index and a constraint that cannot be created over duplicates already stored ``SinkDataError``. A failure
with no time left for another attempt is a ``TransientError`` after Neo4j's TransientError, else
``SinkUnavailable``; a call with no time left for its first attempt (the write's earlier requests spent it) is a
``TransientError``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from neo4j import Driver, GraphDatabase, ManagedTransaction, Session, TrustCustomCAs, unit_of_work
from neo4j import exceptions as neo

from etl.config import Settings
from etl.errors import EtlError, SinkDataError, SinkUnavailable, TransientError
from etl.runtime.metrics import GRAPH_WRITE_RERUNS
from etl.sinks.base import connect_timeout_s, request_timeout_s
from etl.sinks.graph.backend import KeyConflict
from etl.sinks.graph.cypher import COUNT_EVENTS_CYPHER, HOST_ID_MIGRATION_CYPHER, NODE_INDEXES, NODE_KEYS
from etl.sinks.graph.neo4j_drivers import ThreadDrivers

CONNECT_TIMEOUT_S = 5.0
# One attempt's share of the sink's budget: the rest is for the connection it waits for, or for attempts after it.
ATTEMPT_BUDGET_SHARE = 0.5
# A call late in a write times its attempts out this long before the write's deadline (or halfway to it): time for
# the transaction to begin, and for the server to notice the timeout, which it checks for only every
# db.transaction.monitor.check.interval (this is longer than its default), and answer.
TIMEOUT_GRACE_S = 2.5
OTHER_FAILURE = "other"  # the label of a rerun whose attempt failed outside its statement

# Server codes that are ClientErrors in Neo4j's taxonomy but say nothing about our data.
_UNAVAILABLE_CODES = (
    "Neo.ClientError.Transaction.TransactionTimedOut",  # prefix of ...TimedOutClientConfiguration too
    # A transaction terminated while it waited for a lock (its timeout, an operator, a shutdown), or at another time.
    "Neo.ClientError.Transaction.LockClientStopped",
    "Neo.ClientError.Transaction.Terminated",
    "Neo.ClientError.Database.DatabaseNotFound",
)
# A DatabaseError that is about our data: a constraint cannot be built over duplicate keys already stored.
_DATA_CODES = ("Neo.DatabaseError.Schema.ConstraintCreationFailed",)
# A DatabaseError about our data: a value too long for an index (say, of an index an operator added), which
# build_row checks for the keys; retrying would fail the same way.
_DATA_MESSAGES = ("too large to index",)
# A uniqueness constraint refused a node ("Node(7) already exists with label `Event` and property `id` = ..."),
# as opposed to e.g. an operator's property existence constraint, which is about the data.
_CONFLICT_CODE = "Neo.ClientError.Schema.ConstraintValidationFailed"
_CONFLICT_MESSAGE = "already exists"


def schema_statements() -> list[str]:
    """The idempotent DDL: one named uniqueness constraint per key of ``NODE_KEYS``, one named index per
    ``NODE_INDEXES``."""
    return [
        f"CREATE CONSTRAINT {label.lower()}_{prop}_unique IF NOT EXISTS "
        f"FOR (n:{label}) REQUIRE n.{prop} IS UNIQUE"
        for label, prop in NODE_KEYS
    ] + [
        f"CREATE INDEX {label.lower()}_{prop}_index IF NOT EXISTS FOR (n:{label}) ON (n.{prop})"
        for label, prop in NODE_INDEXES
    ]


def translate(err: Exception, doing: str) -> EtlError:
    """Map a neo4j driver error to the pipeline's hierarchy; ``doing`` names the action."""
    if isinstance(err, neo.ResultFailedError) and isinstance(err.__cause__, (neo.Neo4jError, neo.DriverError)):
        # Rolling back a transaction whose statement failed can raise this, "from" the server's error, instead of
        # that error (seen after a rerun): the cause is what happened.
        return translate(err.__cause__, doing)
    text = f"Neo4j {doing}: {err}"
    code = getattr(err, "code", None) or ""
    if isinstance(err, (neo.ServiceUnavailable, neo.SessionExpired, neo.ConnectionAcquisitionTimeoutError)):
        return SinkUnavailable(text)
    if isinstance(err, (neo.AuthError, neo.Forbidden)) or code.startswith(_UNAVAILABLE_CODES):
        return SinkUnavailable(text)  # an operator's problem: retry until fixed, never dead-letter the data
    if isinstance(err, neo.TransientError):
        return TransientError(text)
    if code == _CONFLICT_CODE and _CONFLICT_MESSAGE in str(getattr(err, "message", "") or ""):
        return KeyConflict(text)  # the transaction was rolled back
    message = str(getattr(err, "message", "") or "")
    if isinstance(err, neo.ClientError) or code.startswith(_DATA_CODES) or any(m in message for m in _DATA_MESSAGES):
        return SinkDataError(text)
    return TransientError(text)  # DatabaseError and other driver faults: worth another try


class _OutOfTime(Exception):
    """Raised in a transaction function instead of a rerun that could not end by the write's deadline; carries the
    Neo4j code of the failure before it (``OTHER_FAILURE`` when that failed outside the statement)."""


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    try:
        yield
    except (neo.Neo4jError, neo.DriverError) as e:
        raise translate(e, doing) from e
    except _OutOfTime as e:
        code, text = e.args[0], f"Neo4j {doing}: gave up after {e.args[0]}: {e.args[1]}"
        raise (TransientError(text) if code.startswith("Neo.TransientError") else SinkUnavailable(text)) from None


def tls_options(settings: Settings) -> dict[str, Any]:
    """With NEO4J_TLS_CA and a plain ``bolt://``/``neo4j://`` URI: encrypt, trusting that CA. A ``+s``/``+ssc``
    URI carries its own TLS choice, which the driver does not let options override."""
    if not settings.neo4j_tls_ca or "+s" in urlsplit(settings.neo4j_uri).scheme:
        return {}
    return {"encrypted": True, "trusted_certificates": TrustCustomCAs(settings.neo4j_tls_ca)}


def attempt_timeout_s(settings: Settings) -> float:
    """The server-side timeout of one transaction, in seconds: ``ATTEMPT_BUDGET_SHARE`` of the sink's budget."""
    return settings.sink_budget_s * ATTEMPT_BUDGET_SHARE


def driver_options(settings: Settings) -> dict[str, Any]:
    """The driver's time-outs, in seconds, within the sink's budget: waiting for a connection (connecting
    included) and then one attempt fit in it, and so does the driver's window for attempts after a failed one."""
    rest_s = settings.sink_budget_s - attempt_timeout_s(settings)
    return {"connection_timeout": connect_timeout_s(settings.sink_budget_s, CONNECT_TIMEOUT_S),
            "connection_acquisition_timeout": rest_s, "max_transaction_retry_time": rest_s}


def connect(settings: Settings) -> Neo4jBackend:
    """Make this thread's driver and check the server answers (each other thread makes its own when it first
    calls, see ``etl.sinks.graph.neo4j_drivers``). Raises ``SinkUnavailable``."""

    def make() -> Driver:
        return GraphDatabase.driver(settings.neo4j_uri, auth=(settings.neo4j_user, settings.graph_password),
                                    **driver_options(settings), **tls_options(settings))

    drivers = ThreadDrivers(make)
    try:
        with _translated("connect"):
            drivers.current().verify_connectivity()
    except BaseException:
        drivers.close()
        raise
    return Neo4jBackend(drivers, attempt_s=attempt_timeout_s(settings),
                        acquisition_s=driver_options(settings)["connection_acquisition_timeout"])


def _run_statement(tx: ManagedTransaction, statement: str) -> None:
    tx.run(statement).consume()


class _Attempts:
    """One call's attempts, as the driver makes them within the write's ``deadline`` (``time.monotonic()``
    seconds), and the Neo4j code of each that failed in its statement.

    ``timeout_s`` is each attempt's server-side timeout (``attempt_s``, or less when the deadline is nearer) and
    ``wait_s`` the longest the call may wait for a connection so that its first attempt still ends in time. Raises
    ``TransientError`` when no time is left for either.
    """

    def __init__(self, deadline: float, attempt_s: float, doing: str) -> None:
        self.made = 0
        self.failed: dict[int, str] = {}
        self._deadline = deadline
        self._doing = doing
        now = time.monotonic()
        self.timeout_s = request_timeout_s(deadline, attempt_s, f"Neo4j {doing}", grace_s=TIMEOUT_GRACE_S, now=now)
        self.wait_s = deadline - now - self.timeout_s

    def start(self) -> int:
        """The number of the attempt starting now, if its server-side timeout ends by the deadline. Else raises
        ``TransientError`` for the first attempt (the wait for a connection took its time) and ``_OutOfTime`` for a
        rerun: the driver makes no more attempts then."""
        attempt = self.made
        if time.monotonic() + self.timeout_s > self._deadline:
            if not attempt:
                raise TransientError(f"Neo4j {self._doing}: no time left before the write's deadline for a first "
                                     "attempt")
            raise _OutOfTime(self.failed.get(attempt - 1, OTHER_FAILURE),
                             "no time left before the write's deadline for another attempt")
        self.made += 1
        return attempt

    def count_reruns(self) -> None:
        """Count every attempt the driver made after a failed one, by the code of that failure: ``OTHER_FAILURE``
        when it failed outside the statement (at begin or commit, or its connection)."""
        for attempt in range(self.made - 1):
            GRAPH_WRITE_RERUNS.labels(code=self.failed.get(attempt, OTHER_FAILURE)).inc()


def _write_batch(tx: ManagedTransaction, attempts: _Attempts, statement: str, rows: list[list[Any]]) -> int:
    attempt = attempts.start()
    try:
        record = tx.run(statement, rows=rows).single(strict=True)
    except neo.Neo4jError as e:
        attempts.failed[attempt] = e.code or OTHER_FAILURE
        raise
    return int(record["created"])


def _expire(tx: ManagedTransaction, attempts: _Attempts, statement: str, cutoff_ms: int) -> int:
    attempts.start()
    return int(tx.run(statement, cutoff=cutoff_ms).single(strict=True)["removed"])


def _read_keys(tx: ManagedTransaction, attempts: _Attempts, statement: str, keys: list[str]) -> list[str]:
    attempts.start()
    return [record["key"] for record in tx.run(statement, keys=keys)]


def _count_events(tx: ManagedTransaction) -> int:
    return int(tx.run(COUNT_EVENTS_CYPHER).single(strict=True)["events"])


class Neo4jBackend:
    """One Neo4j database. Thread-safe: each thread has its own driver (``ThreadDrivers``), each call its own
    session.

    ``attempt_s`` is an attempt's server-side timeout, in seconds, when the write's deadline is further away;
    ``acquisition_s`` the driver's longest wait for a connection (``connection_acquisition_timeout``).
    """

    def __init__(self, drivers: ThreadDrivers, *, attempt_s: float, acquisition_s: float) -> None:
        self._drivers = drivers
        self._attempt_s = attempt_s
        self._acquisition_s = acquisition_s

    def _session(self, attempts: _Attempts) -> Session:
        return self._drivers.current().session(connection_acquisition_timeout=min(self._acquisition_s, attempts.wait_s))

    def ensure_schema(self) -> None:
        """Create the uniqueness constraints and indexes IF NOT EXISTS, one per transaction (schema and data never
        mix), then give Hosts stored by earlier versions their ``id``.

        Raises ``SinkUnavailable``, ``TransientError`` or ``SinkDataError``.
        """
        with _translated("create schema"), self._drivers.current().session() as session:
            for statement in [*schema_statements(), HOST_ID_MIGRATION_CYPHER]:
                session.execute_write(_run_statement, statement)

    def keys_enforced(self, deadline: float) -> bool:
        """True: Neo4j builds a uniqueness constraint before ``CREATE CONSTRAINT`` returns (``ensure_schema``)."""
        return True

    def stored_keys(self, statement: str, keys: list[str], deadline: float) -> set[str]:
        """Run the read ``statement`` on ``keys`` in one managed transaction, ending by ``deadline``
        (``time.monotonic()`` seconds); return its ``key`` column.

        Raises ``SinkUnavailable``, ``TransientError`` (also when no time is left) or ``SinkDataError``.
        """
        if not keys:
            return set()
        attempts = _Attempts(deadline, self._attempt_s, "read")
        read = unit_of_work(timeout=attempts.timeout_s)(_read_keys)
        with _translated("read"), self._session(attempts) as session:
            return set(session.execute_read(read, attempts, statement, keys))

    def write_rows(self, statement: str, rows: list[list[Any]], deadline: float) -> int:
        """Run ``statement`` on ``rows`` in one managed transaction, ending by ``deadline`` (``time.monotonic()``
        seconds); return its ``created`` column.

        Raises ``KeyConflict``, ``SinkUnavailable``, ``TransientError`` (also when no time is left) or
        ``SinkDataError``.
        """
        attempts = _Attempts(deadline, self._attempt_s, "write")
        write = unit_of_work(timeout=attempts.timeout_s)(_write_batch)
        try:
            with _translated("write"), self._session(attempts) as session:
                return int(session.execute_write(write, attempts, statement, rows))
        finally:
            attempts.count_reruns()  # deadlocks on hub nodes, run again by the driver: nothing else shows them

    def expire(self, statement: str, cutoff_ms: int, deadline: float) -> int:
        """Run the retention ``statement`` with ``$cutoff`` = ``cutoff_ms`` in one managed transaction, ending by
        ``deadline`` (``time.monotonic()`` seconds); its ``removed`` column. The driver runs it again after a
        deadlock with a writer (both lock the Host an Event hangs from).

        Raises ``SinkUnavailable``, ``TransientError`` (also when no time is left) or ``SinkDataError``.
        """
        attempts = _Attempts(deadline, self._attempt_s, "expire")
        expire = unit_of_work(timeout=attempts.timeout_s)(_expire)
        with _translated("expire"), self._session(attempts) as session:
            return int(session.execute_write(expire, attempts, statement, cutoff_ms))

    def count_events(self) -> int:
        with _translated("count"), self._drivers.current().session() as session:
            return int(session.execute_read(_count_events))

    def check(self) -> None:
        """Raise ``SinkUnavailable`` unless the server answers."""
        with _translated("check"):
            self._drivers.current().verify_connectivity()

    def close(self) -> None:
        """Close every thread's driver and its pool. Safe to call twice."""
        self._drivers.close()

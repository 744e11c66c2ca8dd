"""PostgreSQL as the TimescaleDB sink uses it: where and how to connect, the time-outs of a session from the sink's
budget and of a statement from a write's deadline (see ``etl.sinks.base``), and driver errors in the pipeline's
hierarchy.

Driver errors are translated by SQLSTATE class where there is one:

- a connection refused, dropped or timed out, a statement timeout -> ``SinkUnavailable``;
- a deadlock or serialization failure -> ``TransientError``;
- a value the server rejects (a NUL character, a timestamp out of range, a constraint) -> ``SinkDataError``;
- what no retry fixes, whatever the batch: a privilege missing, a read-only server or database, a table or column
  not as the sink made it -> ``SinkMisconfigured``.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool
from psycopg2 import errorcodes

from etl.config import Settings
from etl.errors import EtlError, SinkDataError, SinkMisconfigured, SinkUnavailable, TransientError
from etl.sinks.base import connect_timeout_s, request_timeout_s

DEFAULT_CONNECT_TIMEOUT_S = 5
# A server that vanished without closing the socket answers no statement and cancels none: TCP keepalives notice
# it. Their probes start after this share of the sink's budget and come this often, so it is noticed within it.
KEEPALIVE_IDLE_SHARE = 0.5
KEEPALIVE_INTERVAL_SHARE = 0.1
KEEPALIVE_COUNT = 3
# The share of the budget a write may spend getting a pooled connection and still run its fast-path COPY under the
# session's statement_timeout (the rest of the budget); past it, the COPY's timeout is first set to the time left.
CONNECTION_WAIT_SHARE = 0.1
# A statement the server cancels at its timeout still has its error to send and its transaction to end: timeouts
# set from the deadline end this long before it (or halfway to it).
STATEMENT_TIMEOUT_GRACE_S = 0.1

_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58"})  # connection, resources, operator, system
_RETRY_CLASSES = frozenset({"40"})  # transaction rollback: serialization failure, deadlock
_DATA_CLASSES = frozenset({"22", "23", "54"})  # data exception, integrity, program limit (a value too big)
# Syntax or access rule (a privilege, a table or column missing or of another type), no schema to create in; and a
# read-only server (a standby) or default_transaction_read_only. Retried, each would fail the same way forever.
_MISCONFIGURED_CLASSES = frozenset({"42", "3F"})
_MISCONFIGURED_CODES = frozenset({errorcodes.READ_ONLY_SQL_TRANSACTION})
_UNAVAILABLE_TYPES = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.pool.PoolError)
_HEALTHY_AFTER = _RETRY_CLASSES | _DATA_CLASSES  # the statement failed, the session is fine
SESSION_FAILURE_CLASSES = frozenset({"08", "40", "57"})  # the session, not the statement, failed



def connection_params(settings: Settings) -> dict[str, Any]:
    """Where and how to connect: host, database, credentials and the TLS options (libpq's names)."""
    params: dict[str, Any] = {"host": settings.pg_host, "port": settings.pg_port, "dbname": settings.pg_db,
                              "user": settings.pg_user, "password": settings.pg_password,
                              "sslmode": settings.pg_sslmode}
    for key in ("sslrootcert", "sslcert", "sslkey"):
        value = getattr(settings, f"pg_{key}")
        if value:
            params[key] = value
    return params


def connect_timeout(settings: Settings) -> int:
    """libpq's ``connect_timeout``, in whole seconds (its unit), at least 1: a share of the sink's budget."""
    return max(1, int(connect_timeout_s(settings.sink_budget_s, DEFAULT_CONNECT_TIMEOUT_S)))


def keepalive_options(settings: Settings) -> dict[str, int]:
    """libpq's TCP keepalive options, in whole seconds (its unit), at least 1: a server that vanished is noticed
    within the sink's budget (from a budget of 6 s on; below, whole seconds are too coarse)."""
    budget_s = settings.sink_budget_s
    return {"keepalives": 1, "keepalives_idle": max(1, int(budget_s * KEEPALIVE_IDLE_SHARE)),
            "keepalives_interval": max(1, int(budget_s * KEEPALIVE_INTERVAL_SHARE)),
            "keepalives_count": KEEPALIVE_COUNT}


def statement_timeout_ms(settings: Settings) -> int:
    """The session's statement timeout, in milliseconds: the sink's budget (``Settings.sink_budget_s``) less
    ``CONNECTION_WAIT_SHARE`` of it, so a write that got its connection within that share ends its fast path
    within the budget, and any statement is cancelled by the server before the actor's time limit."""
    return max(1, int(settings.sink_budget_s * (1 - CONNECTION_WAIT_SHARE) * 1000))


def local_timeout_ms(deadline: float, doing: str, *, now: float | None = None) -> int:
    """The ``statement_timeout`` that cancels a statement started ``now`` (``time.monotonic()`` unless given)
    ``STATEMENT_TIMEOUT_GRACE_S`` before ``deadline`` (``time.monotonic()`` seconds) or halfway to it, in
    milliseconds (PostgreSQL's unit), at least 1 (0 would mean none). Raises ``TransientError`` naming ``doing``
    when no time is left."""
    left_s = request_timeout_s(deadline, math.inf, doing, grace_s=STATEMENT_TIMEOUT_GRACE_S, now=now)
    return max(1, int(left_s * 1000))


def copy_timeout_ms(deadline: float, session_timeout_ms: int, doing: str, *, now: float | None = None) -> int | None:
    """The ``statement_timeout`` to set before a COPY started ``now``, in milliseconds: ``local_timeout_ms``, or
    ``None`` when the session's, ``session_timeout_ms``, is no longer. Raises ``TransientError`` naming ``doing``
    when no time is left."""
    timeout_ms = local_timeout_ms(deadline, doing, now=now)
    return None if session_timeout_ms <= timeout_ms else timeout_ms


def translate_error(exc: psycopg2.Error, table: str) -> EtlError:
    """The pipeline error for a driver error met while using ``table``; the message names the cause."""
    code = exc.pgcode or ""
    where = f"timescale table {table}"
    if code[:2] in _RETRY_CLASSES:
        return TransientError(f"{where}: transaction rolled back, retry: {describe_error(exc)}")
    if code[:2] in _MISCONFIGURED_CLASSES or code in _MISCONFIGURED_CODES:
        return SinkMisconfigured(f"{where}: the server refuses the sink, not retried: {describe_error(exc)}")
    if code[:2] in _DATA_CLASSES or isinstance(exc, (psycopg2.DataError, psycopg2.IntegrityError)):
        return SinkDataError(f"{where}: the server rejected the batch: {describe_error(exc)}")
    if code[:2] in _UNAVAILABLE_CLASSES or isinstance(exc, _UNAVAILABLE_TYPES):
        return SinkUnavailable(f"{where}: server unavailable: {describe_error(exc)}")
    return TransientError(f"{where}: unexpected database error: {describe_error(exc)}")


def describe_error(exc: psycopg2.Error) -> str:
    """A driver error in one line: the server's message, its SQLSTATE and name, its hint, and where it happened."""
    diag = exc.diag
    lines = str(exc).strip().splitlines()
    text = diag.message_primary or (lines[0] if lines else type(exc).__name__)
    if exc.pgcode:
        try:
            text += f" (SQLSTATE {exc.pgcode} {errorcodes.lookup(exc.pgcode).lower()})"
        except KeyError:
            text += f" (SQLSTATE {exc.pgcode})"
    if diag.message_hint:  # e.g. TimescaleDB's, naming shared_preload_libraries
        text += f"; hint: {diag.message_hint.strip().splitlines()[0]}"
    if diag.context:
        text += f"; at {diag.context.strip().splitlines()[0]}"
    return text


def recover(conn: psycopg2.extensions.connection, exc: psycopg2.Error) -> bool:
    """Roll back after a failed statement; True when the session is known good and may be reused."""
    return (exc.pgcode or "")[:2] in _HEALTHY_AFTER and rolled_back(conn)


def rolled_back(conn: psycopg2.extensions.connection) -> bool:
    """Roll back; True when that worked and the session may be reused."""
    if conn.closed:
        return False
    try:
        conn.rollback()
    except psycopg2.Error:
        return False
    return True

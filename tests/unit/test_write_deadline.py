"""One deadline per write (``etl.sinks.base``): how each sink derives a request's timeout from the time left, and
that the graph sink hands the same deadline to every request of a write."""

from __future__ import annotations

import time
from typing import Any

import pytest

from etl.config import Settings
from etl.errors import TransientError
from etl.sinks import postgres
from etl.sinks.base import inner_timeout_s, request_timeout_s, time_left_s, write_deadline
from etl.sinks.graph import falkordb_backend, neo4j_backend
from etl.sinks.graph import sink as graph_sink
from etl.sinks.graph.backend import KeyConflict
from etl.sinks.graph.cypher import CREATE_CYPHER, MERGE_CYPHER, STORED_PROCESSES_CYPHER
from etl.sinks.graph.sink import GraphSink

NOW = 1000.0  # a time.monotonic() reading


def out_of_time(call: Any) -> TransientError:
    """What ``call()`` raised: exactly a ``TransientError``, not ``SinkUnavailable``, which says the server is down."""
    with pytest.raises(TransientError) as raised:
        call()
    assert type(raised.value) is TransientError
    assert "no time left before the write's deadline" in str(raised.value)
    return raised.value


def test_a_write_deadline_is_its_budget_from_now() -> None:
    before = time.monotonic()
    deadline = write_deadline(7.5)
    assert before + 7.5 <= deadline <= time.monotonic() + 7.5


def test_time_left_is_counted_to_the_deadline_and_none_left_is_transient() -> None:
    assert time_left_s(NOW + 2.5, "x", now=NOW) == 2.5
    assert 0 < time_left_s(time.monotonic() + 60, "x") <= 60
    for now in (NOW, NOW + 1):
        error = out_of_time(lambda now=now: time_left_s(NOW, "Neo4j write", now=now))
        assert str(error).startswith("Neo4j write: ")


@pytest.mark.parametrize(("left_s", "cap_s", "grace_s", "expected_s"), [
    (10.0, 4.0, 1.0, 4.0),  # the deadline is far: the request's own cap
    (3.0, 4.0, 0.0, 3.0),  # nearer: what is left
    (3.0, 4.0, 1.0, 2.0),  # with a grace for the server's answer
    (1.5, 4.0, 1.0, 0.75),  # but never less than half of what is left
    (0.01, 4.0, 1.0, 0.005),
])
def test_a_request_gets_its_cap_or_the_time_left(left_s: float, cap_s: float, grace_s: float,
                                                  expected_s: float) -> None:
    assert request_timeout_s(NOW + left_s, cap_s, "x", grace_s=grace_s, now=NOW) == pytest.approx(expected_s)
    out_of_time(lambda: request_timeout_s(NOW, cap_s, "x", grace_s=grace_s, now=NOW))


def test_falkordb_asks_the_server_to_answer_before_the_deadline() -> None:
    grace_s = falkordb_backend.SOCKET_TIMEOUT_GRACE_S
    assert falkordb_backend.query_timeout_left_ms(5_000, NOW + 60, "read", now=NOW) == 5_000
    near_ms = falkordb_backend.query_timeout_left_ms(5_000, NOW + 3, "read", now=NOW)
    assert near_ms == int(inner_timeout_s(3, grace_s) * 1000) < 3_000
    assert falkordb_backend.query_timeout_left_ms(5_000, NOW + 1e-6, "read", now=NOW) == 1  # 0 would be none
    error = out_of_time(lambda: falkordb_backend.query_timeout_left_ms(5_000, NOW, "write", now=NOW))
    assert str(error).startswith("FalkorDB write: ")


def test_timescale_statements_are_cancelled_before_the_deadline() -> None:
    grace_s = postgres.STATEMENT_TIMEOUT_GRACE_S
    assert postgres.local_timeout_ms(NOW + 2.5, "t", now=NOW) == int((2.5 - grace_s) * 1000)
    assert postgres.local_timeout_ms(NOW + grace_s, "t", now=NOW) == int(grace_s / 2 * 1000)
    assert postgres.local_timeout_ms(NOW + 1e-6, "t", now=NOW) == 1  # 0 would be none
    out_of_time(lambda: postgres.local_timeout_ms(NOW, "t", now=NOW))


@pytest.mark.parametrize("timeout_s", [1, 3, 30, 300])
def test_timescale_sets_the_copys_timeout_only_after_a_long_wait_for_a_connection(timeout_s: int) -> None:
    settings = Settings.from_env({"PROCESSING_TIMEOUT": str(timeout_s)})
    budget_s, session_ms = settings.sink_budget_s, postgres.statement_timeout_ms(settings)
    started = NOW
    deadline = started + budget_s
    # The session's timeout ends the COPY a grace before the deadline: no round trip to set another.
    allowed_s = budget_s * postgres.CONNECTION_WAIT_SHARE - postgres.STATEMENT_TIMEOUT_GRACE_S
    for waited_s in (0.0, allowed_s * 0.99) if allowed_s > 0 else ():
        assert postgres.copy_timeout_ms(deadline, session_ms, "t", now=started + waited_s) is None
    for waited_s in (max(0.0, allowed_s) + 0.01, budget_s * 0.5, budget_s * 0.99):
        timeout_ms = postgres.copy_timeout_ms(deadline, session_ms, "t", now=started + waited_s)
        assert timeout_ms is not None and timeout_ms < session_ms
        assert waited_s + timeout_ms / 1000 < budget_s
    out_of_time(lambda: postgres.copy_timeout_ms(deadline, session_ms, "t", now=deadline))


def test_neo4j_attempts_are_timed_out_by_the_deadline_when_it_is_nearer() -> None:
    far = neo4j_backend._Attempts(time.monotonic() + 60, 5.0, "write")
    assert far.timeout_s == 5.0
    assert 5.0 < far.timeout_s + far.wait_s <= 60  # the wait for a connection leaves the attempt its time
    near = neo4j_backend._Attempts(time.monotonic() + 3, 5.0, "write")
    assert near.timeout_s <= inner_timeout_s(3, neo4j_backend.TIMEOUT_GRACE_S)
    assert near.wait_s >= min(neo4j_backend.TIMEOUT_GRACE_S, near.timeout_s)
    assert near.start() == 0
    error = out_of_time(lambda: neo4j_backend._Attempts(time.monotonic(), 5.0, "read"))
    assert str(error).startswith("Neo4j read: ")


def test_neo4j_starts_no_first_attempt_that_could_not_end_by_the_deadline() -> None:
    """Waiting for a connection took the first attempt's time: a ``TransientError``, and no attempt counted."""
    late = neo4j_backend._Attempts(time.monotonic() + 10, 5.0, "write")
    late._deadline = time.monotonic() + 4.9
    with neo4j_backend._translated("write"):
        out_of_time(late.start)
    assert late.made == 0


class RecordingBackend:
    """Records each request the sink makes and the deadline it passes; its create always conflicts, so the sink
    makes every request a write can: the key check, the read, the create and the merge."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, float]] = []

    def ensure_schema(self) -> None:
        pass

    def keys_enforced(self, deadline: float) -> bool:
        self.requests.append(("keys_enforced", deadline))
        return True

    def stored_keys(self, statement: str, keys: list[str], deadline: float) -> set[str]:
        assert statement == STORED_PROCESSES_CYPHER
        self.requests.append(("stored_keys", deadline))
        return set()

    def write_rows(self, statement: str, rows: list[list[Any]], deadline: float) -> int:
        self.requests.append(("create" if statement == CREATE_CYPHER else "merge", deadline))
        if statement == CREATE_CYPHER:
            raise KeyConflict("stored already")
        assert statement == MERGE_CYPHER
        return len(rows)

    def close(self) -> None:
        pass


def test_the_graph_sink_passes_one_deadline_to_every_request_of_a_write(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = RecordingBackend()
    monkeypatch.setattr(graph_sink, "connect_backend", lambda settings: backend)
    settings = Settings.from_env({"PROCESSING_TIMEOUT": "9"})
    sink = GraphSink(settings)
    batch = [{"id": f"e{i}", "type": "exec", "source": "/bin/sh", "timestamp": 1,
              "metadata": {"host_id": "h", "pid": str(i)}} for i in range(2)]
    for _ in range(2):
        backend.requests.clear()
        before = time.monotonic()
        assert sink.write(batch) == 2
        after = time.monotonic()
        assert [name for name, _ in backend.requests] == ["keys_enforced", "stored_keys", "create", "merge"]
        deadlines = {deadline for _, deadline in backend.requests}
        assert len(deadlines) == 1
        assert before + settings.sink_budget_s <= deadlines.pop() <= after + settings.sink_budget_s
    sink.close()

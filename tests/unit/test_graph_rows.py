"""Pure part of the graph sink: events -> Cypher rows, keys, the shared statement, and error mapping.

The error mapping of both backends is tested here too, since no Neo4j server runs in this suite.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import pytest
import redis
from neo4j import exceptions as neo

from etl.config import Settings
from etl.errors import EtlError, SinkDataError, SinkUnavailable, TransientError
from etl.pipeline.limits import GRAPH_KEY_BYTES
from etl.sinks.graph import falkordb_backend, neo4j_backend
from etl.sinks.graph.backend import KeyConflict
from etl.sinks.graph.cypher import (
    CREATE_CYPHER,
    MERGE_CYPHER,
    NAMED_CREATE_CYPHER,
    NAMED_MERGE_CYPHER,
    NODE_INDEXES,
    NODE_KEYS,
    positional,
)
from etl.sinks.graph.rows import ROW_FIELDS, as_lists, build_row, build_rows, compose_key, process_keys
from etl.sinks.graph.sink import GraphSink


def event(event_id: str = "event-1", **metadata: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "connect",
        "source": "/usr/bin/psql",
        "timestamp": 1704110400000,
        "env": "dev",
        "rdns": "host-3.local",
        "dst_rdns": "db.example.net",
        "metadata": metadata,
        "payload": {"ignored": True},
        "args": ["ignored"],
    }


FULL = {
    "host_id": "host-001", "host_ip": "10.1.2.3", "hostname": "web-1", "pid": "1234", "uid": "1001",
    "user": "alice", "container_id": "c0ffee", "binary_sha256": "abc123",
    "enriched_at": "2024-01-01T12:00:00Z", "enrichment_version": "1",
}


def test_full_event_row() -> None:
    row = build_row(event(**FULL))
    assert row == {
        "id": "event-1", "type": "connect", "source": "/usr/bin/psql", "timestamp": 1704110400000,
        "env": "dev", "rdns": "host-3.local", "dst_rdns": "db.example.net", "enriched_at": "2024-01-01T12:00:00Z",
        "host_id": "host-001", "host_ip": "10.1.2.3", "hostname": "web-1", "uid": "1001", "pid": "1234",
        "user": "alice", "container_id": "c0ffee", "binary_sha256": "abc123",
        "user_key": "uid:host-001:1001", "user_host_id": "host-001",
        "process_key": "host-001:1234:/usr/bin/psql", "process_new": False,
        "intel": [], "endpoint_id": None, "dst_ip": None, "dst_port": None, "protocol": None,
        "dst_asn": None, "dst_country": None, "dst_internal": None,
        "host_newest": False, "flow_count": 0, "flow_first": None, "flow_last": None, "dst_newest": False,
    }


def test_event_without_metadata_has_no_context() -> None:
    row = build_row({"id": "e", "type": "t", "source": "s", "timestamp": 1, "env": "dev", "rdns": None})
    batch = {"host_newest", "flow_count", "dst_newest", "process_new"}
    context = {k: v for k, v in row.items() if k not in {"id", "type", "source", "timestamp", "env", "intel", *batch}}
    assert set(context.values()) == {None}
    assert row["intel"] == []
    assert row["process_new"] is False


def test_every_row_has_the_same_keys() -> None:
    assert build_row(event(**FULL)).keys() == build_row({"id": "bare", "timestamp": 0}).keys()


def test_user_without_uid_is_keyed_by_name() -> None:
    row = build_row(event(host_id="host-001", user="alice"))
    assert (row["user_key"], row["uid"], row["user_host_id"]) == ("name:alice", None, None)


def test_uid_without_host_falls_back_to_name_or_nothing() -> None:
    assert build_row(event(uid="1001", user="bob"))["user_key"] == "name:bob"
    row = build_row(event(uid="1001"))
    assert (row["user_key"], row["uid"]) == (None, None)


def test_process_needs_host_and_pid() -> None:
    assert build_row(event(pid="1234"))["process_key"] is None
    assert build_row(event(host_id="h"))["process_key"] is None
    without_source = {**event(host_id="h", pid=7), "source": None}
    assert build_row(without_source)["process_key"] == "h:7:"


def test_numbers_and_strings_give_the_same_keys() -> None:
    a = build_row(event(host_id="h", pid=1234, uid=1001))
    b = build_row(event(host_id="h", pid="1234", uid="1001"))
    assert (a["process_key"], a["user_key"], a["pid"]) == (b["process_key"], b["user_key"], "1234")


def test_empty_strings_are_absent() -> None:
    row = build_row(event(host_id="", user="", container_id=""))
    assert (row["host_id"], row["user_key"], row["container_id"]) == (None, None, None)


def test_key_parts_are_escaped_so_keys_never_collide() -> None:
    assert compose_key("a:b", "c") != compose_key("a", "b:c")
    assert compose_key("a%3Ab") != compose_key("a:b")
    assert build_row({**event(host_id="h", pid="1"), "source": "C:\\x"})["process_key"] == "h:1:C%3A\\x"
    parts = ["", "a", ":", "%", "a:b", "50%", "%3A", "::", "x%y:z"]
    keys = {compose_key(p, q, r) for p in parts for q in parts for r in parts}
    assert len(keys) == len(parts) ** 3  # no two tuples share a key
    assert compose_key("50%", "a:b") == "50%25:a%3Ab" and compose_key("h", "1", "") == "h:1:"


def test_batch_keeps_one_row_per_id_last_wins_in_first_seen_order() -> None:
    rows = build_rows([event("a", user="x"), event("b"), event("a", user="y")])
    assert [(r["id"], r["user"]) for r in rows] == [("a", "y"), ("b", None)]


@pytest.mark.parametrize("bad", [{}, {"id": ""}, {"id": 7}])
def test_event_without_string_id_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(SinkDataError, match="id"):
        build_row(bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [("type", {"a": 1}), ("timestamp", float("nan")), ("rdns", ["x"])],
)
def test_values_no_graph_can_store_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(SinkDataError, match=field):
        build_row({**event(), field: value})


@pytest.mark.parametrize(
    ("event_fields", "metadata", "key"),
    [({"id": "e" * (GRAPH_KEY_BYTES + 1)}, {}, "id"),
     ({}, {"host_id": "日" * (GRAPH_KEY_BYTES // 3 + 1)}, "host_id"),
     ({}, {"container_id": "c" * (GRAPH_KEY_BYTES + 1)}, "container_id"),
     ({}, {"user": "u" * (GRAPH_KEY_BYTES - 4)}, "user_key"),  # "name:" makes it one byte too long
     ({"source": "/" + "s" * GRAPH_KEY_BYTES}, {"host_id": "h", "pid": "1"}, "process_key")],
)
def test_keys_longer_than_an_index_takes_are_rejected(event_fields: dict[str, Any], metadata: dict[str, Any],
                                                       key: str) -> None:
    with pytest.raises(SinkDataError, match=f"its {key} is .* bytes in UTF-8"):
        build_row({**event(), **event_fields, "metadata": {**event()["metadata"], **metadata}})


def test_keys_up_to_the_limit_are_kept() -> None:
    row = build_row({**event(), "id": "e" * GRAPH_KEY_BYTES, "metadata": {"host_id": "日" * (GRAPH_KEY_BYTES // 3)}})
    assert len(row["id"]) == GRAPH_KEY_BYTES and len(row["host_id"].encode()) <= GRAPH_KEY_BYTES


def test_metadata_values_must_be_scalars() -> None:
    with pytest.raises(SinkDataError, match="host_id"):
        build_row(event(host_id={"nested": 1}))
    with pytest.raises(SinkDataError, match="metadata"):
        build_row({**event(), "metadata": ["x"]})


CONTEXT_KEYS = [key for key in NODE_KEYS if key[0] != "Event"]
# A node merged on its key alone: a row field, or an indicator match's first item.
MERGED_ON_KEY = r"MERGE \(\w+:(\w+) \{(\w+): (?:r\.\w+|m\[0\])\}\)"
LINKS = r"(?:\(\w+\)-\[:(?:GENERATED|EXECUTED)\]->\(e\)|\(e\)-\[:TO\]->\(ne\))"


def test_merge_statement_is_one_unwind_that_merges_every_node_on_its_key_only() -> None:
    assert NAMED_MERGE_CYPHER.strip().startswith("UNWIND $rows AS r")
    assert ";" not in NAMED_MERGE_CYPHER and "CREATE (" not in NAMED_MERGE_CYPHER
    merged = re.findall(MERGED_ON_KEY, NAMED_MERGE_CYPHER)
    assert sorted(set(merged)) == sorted(NODE_KEYS)
    assert len(re.findall("MERGE " + LINKS, NAMED_MERGE_CYPHER)) == 5


def test_create_statement_creates_events_and_their_links_and_merges_the_context() -> None:
    assert NAMED_CREATE_CYPHER.strip().startswith("UNWIND $rows AS r")
    assert ";" not in NAMED_CREATE_CYPHER
    assert re.findall(r"CREATE \(e:Event \{id: r\.id,", NAMED_CREATE_CYPHER)
    merged = re.findall(MERGED_ON_KEY, NAMED_CREATE_CYPHER)
    assert sorted(set(merged)) == sorted(CONTEXT_KEYS)
    # A Process known to be new is created, with every property it has, and so is its link.
    assert "CREATE (p:Process {key: r.process_key, host_id: r.host_id, pid: r.pid, source: r.source," in (
        NAMED_CREATE_CYPHER)
    assert len(re.findall("CREATE " + LINKS, NAMED_CREATE_CYPHER)) == 6
    assert not re.findall("MERGE " + LINKS, NAMED_CREATE_CYPHER)
    # Both set the same Event properties.
    set_in_merge = set(re.findall(r"\be\.(\w+) = r\.\1", NAMED_MERGE_CYPHER))
    created_with = set(re.findall(r"(\w+): r\.\1", NAMED_CREATE_CYPHER.split("FOREACH")[0])) - {"id"}
    assert set_in_merge == created_with


def test_the_statements_that_run_read_rows_by_position() -> None:
    assert CREATE_CYPHER == positional(NAMED_CREATE_CYPHER)
    assert MERGE_CYPHER == positional(NAMED_MERGE_CYPHER)
    assert not re.search(r"\br\.", CREATE_CYPHER + MERGE_CYPHER)
    assert "MERGE (e:Event {id: r[0]})" in MERGE_CYPHER
    assert "CREATE (e:Event {id: r[0], " in CREATE_CYPHER
    pid = ROW_FIELDS.index("pid")
    assert positional("SET p.pid = r.pid, p.rdns = r.rdns, x.r = 1") == (
        f"SET p.pid = r[{pid}], p.rdns = r[{ROW_FIELDS.index('rdns')}], x.r = 1")
    with pytest.raises(KeyError, match="r.nope"):
        positional("RETURN r.nope")


def test_a_process_not_stored_is_new_on_its_first_row_only() -> None:
    rows = [build_row(event(f"e{i}", host_id="h", pid=pid)) for i, pid in enumerate(["1", "2", "1", "3", "2"])]
    rows.append(build_row(event("e-bare")))
    assert process_keys(rows) == ["h:1:/usr/bin/psql", "h:2:/usr/bin/psql", "h:3:/usr/bin/psql"]
    new = ROW_FIELDS.index("process_new")

    assert [r[new] for r in as_lists(rows, {"h:2:/usr/bin/psql"})] == [True, False, False, True, False, False]
    assert [r[new] for r in as_lists(rows, set())] == [True, True, False, True, False, False]
    assert [r[new] for r in as_lists(rows)] == [False] * 6  # nothing known: every Process is merged
    assert rows[0]["process_new"] is False  # the rows themselves are left as they were


def test_rows_go_as_lists_in_field_order() -> None:
    full, bare = build_row(event(**FULL)), build_row({"id": "bare", "timestamp": 0})
    assert tuple(full) == tuple(bare) == ROW_FIELDS
    assert as_lists([full, bare]) == [[full[f] for f in ROW_FIELDS], [bare[f] for f in ROW_FIELDS]]


def test_falkordb_header_is_json_unless_a_value_needs_an_escape() -> None:
    plain = as_lists([build_row(event(host_id="h", user="日本語 `x` {a,b}: 'q'"))])
    assert falkordb_backend.query_text(CREATE_CYPHER, plain) == (
        f"CYPHER rows={orjson.dumps(plain).decode()} {CREATE_CYPHER}")
    for tricky in ('say "hi"', "back\\slash", "new\nline", "tab\t", "bell\x07"):
        rows = as_lists([build_row(event(host_id="h", user=tricky))])
        assert falkordb_backend.query_text(CREATE_CYPHER, rows) is None, tricky


def test_sink_does_not_connect_when_built() -> None:
    sink = GraphSink(Settings(neo4j_uri="falkor://127.0.0.1:1"))
    sink.close()
    sink.close()


def neo4j_error(code: str, message: str = "from the server") -> Exception:
    # The driver builds server errors this way (private, but the only way to get the class for a code).
    return neo.Neo4jError._hydrate_neo4j(code=code, message=message)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (neo.ServiceUnavailable("down"), SinkUnavailable),
        (neo.SessionExpired("gone"), SinkUnavailable),
        (neo4j_error("Neo.ClientError.Security.Unauthorized"), SinkUnavailable),
        (neo4j_error("Neo.ClientError.Transaction.TransactionTimedOutClientConfiguration"), SinkUnavailable),
        (neo4j_error("Neo.ClientError.Transaction.LockClientStopped"), SinkUnavailable),
        (neo4j_error("Neo.ClientError.Transaction.Terminated"), SinkUnavailable),
        (neo4j_error("Neo.TransientError.Transaction.DeadlockDetected"), TransientError),
        (neo4j_error("Neo.DatabaseError.General.UnknownError"), TransientError),
        (neo4j_error("Neo.ClientError.Statement.TypeError"), SinkDataError),
        (neo4j_error("Neo.ClientError.Schema.ConstraintValidationFailed",
                     "Node(7) already exists with label `Event` and property `id` = 'e1'"), KeyConflict),
        (neo4j_error("Neo.ClientError.Schema.ConstraintValidationFailed",
                     "Node(7) with label `Event` must have the property `env`"), SinkDataError),
        (neo4j_error("Neo.DatabaseError.Schema.ConstraintCreationFailed"), SinkDataError),
        (neo4j_error("Neo.DatabaseError.Statement.ExecutionFailed",
                     "Property value is too large to index, please see index documentation"), SinkDataError),
        (neo4j_error("Neo.DatabaseError.Statement.ExecutionFailed", "something else"), TransientError),
    ],
)
def test_neo4j_errors_are_translated(err: Exception, expected: type[EtlError]) -> None:
    translated = neo4j_backend.translate(err, "write")
    assert type(translated) is expected
    assert str(translated).startswith("Neo4j write: ")


def result_failed_from(cause: Exception) -> Exception:
    try:
        raise neo.ResultFailedError(None, "The result has failed.") from cause
    except neo.ResultFailedError as e:
        return e


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (neo4j_error("Neo.ClientError.Schema.ConstraintValidationFailed",
                     "Node(7) already exists with label `Event` and property `id` = 'e1'"), KeyConflict),
        (neo4j_error("Neo.ClientError.Statement.TypeError"), SinkDataError),
        (neo.ServiceUnavailable("down"), SinkUnavailable),
    ],
)
def test_a_failed_result_is_translated_by_its_cause(cause: Exception, expected: type[EtlError]) -> None:
    # The driver's rollback after a failed statement may raise ResultFailedError from the server's error.
    assert type(neo4j_backend.translate(result_failed_from(cause), "write")) is expected
    assert type(neo4j_backend.translate(result_failed_from(ValueError("x")), "write")) is TransientError


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (redis.ConnectionError("refused"), SinkUnavailable),
        (redis.TimeoutError("slow"), SinkUnavailable),
        (redis.exceptions.AuthenticationError("WRONGPASS"), SinkUnavailable),
        (redis.exceptions.ReadOnlyError("READONLY replica"), SinkUnavailable),
        (redis.ResponseError("Query timed out"), SinkUnavailable),
        (redis.ResponseError("The query TIMEOUT parameter value cannot exceed the TIMEOUT_MAX ..."),
         SinkUnavailable),
        (redis.ResponseError("Max pending queries exceeded"), TransientError),
        (redis.exceptions.OutOfMemoryError("OOM"), TransientError),
        (redis.ResponseError("Property values can only be of primitive types"), SinkDataError),
        (redis.ResponseError("unique constraint violation on node of type Event"), KeyConflict),
    ],
)
def test_falkordb_errors_are_translated(err: Exception, expected: type[EtlError]) -> None:
    translated = falkordb_backend.translate(err, "write")
    assert type(translated) is expected
    assert str(translated).startswith("FalkorDB write: ")


def test_neo4j_schema_is_idempotent_ddl_one_per_key_and_index() -> None:
    statements = neo4j_backend.schema_statements()
    assert len(statements) == len(NODE_KEYS) + len(NODE_INDEXES)
    assert all(" IF NOT EXISTS FOR (n:" in s for s in statements)
    assert sum(s.endswith(" IS UNIQUE") for s in statements) == len(NODE_KEYS)
    assert "CREATE INDEX host_id_index IF NOT EXISTS FOR (n:Host) ON (n.id)" in statements
    user = "CREATE CONSTRAINT user_key_unique IF NOT EXISTS FOR (n:User) REQUIRE n.key IS UNIQUE"
    assert user in statements


def test_every_attempt_after_a_failed_one_is_counted_by_that_failures_code() -> None:
    from prometheus_client import REGISTRY

    def reruns(code: str) -> float:
        return REGISTRY.get_sample_value("etl_graph_write_reruns_total", {"code": code}) or 0.0

    deadlock = "Neo.TransientError.Transaction.DeadlockDetected"
    before = (reruns(deadlock), reruns(neo4j_backend.OTHER_FAILURE))
    deadline = time.monotonic() + 30.0
    attempts = neo4j_backend._Attempts(deadline, 15.0, "write")  # noqa: SLF001 - one write's bookkeeping, as the driver drives it
    attempts.made, attempts.failed = 3, {0: deadlock}  # failed in its statement, then at commit, then done
    attempts.count_reruns()
    assert (reruns(deadlock), reruns(neo4j_backend.OTHER_FAILURE)) == (before[0] + 1, before[1] + 1)
    once = neo4j_backend._Attempts(deadline, 15.0, "write")  # noqa: SLF001
    once.made = 1
    once.count_reruns()
    assert (reruns(deadlock), reruns(neo4j_backend.OTHER_FAILURE)) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize("parts", [("h", "1", "/bin/sh"), ("h:1", "1", "/a%b"), ("日", ":", "%"), ("", "", "")])
def test_the_contracts_key_size_bounds_the_graphs_keys(parts: tuple[str, str, str]) -> None:
    from etl.pipeline.limits import key_bytes

    size = len(compose_key(*parts).encode())
    assert key_bytes(*parts) >= size
    if any(":" in p or "%" in p for p in parts):
        assert key_bytes(*parts) == size

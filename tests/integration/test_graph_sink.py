"""The graph sink's contract, run against every backend (``graph_env``): FalkorDB and Neo4j, each a real server.

Each test reads the graph back through the backend's own client (a "probe"), not through the sink.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from neo4j import GraphDatabase
from prometheus_client import REGISTRY

from etl.config import Settings
from etl.dev import servers
from etl.errors import SinkDataError, SinkUnavailable, TransientError
from etl.pipeline.limits import GRAPH_KEY_BYTES
from etl.sinks.base import write_deadline
from etl.sinks.graph import neo4j_backend
from etl.sinks.graph import sink as graph_sink
from etl.sinks.graph.backend import KeyConflict
from etl.sinks.graph.cypher import CREATE_CYPHER, MERGE_CYPHER, NODE_KEYS
from etl.sinks.graph.rows import as_lists, build_rows
from etl.sinks.graph.sink import GraphSink, connect_backend
from tests.graphs import (
    FALKORDB,
    GRAPH_BACKENDS,
    NEO4J,
    Probe,
    backend_of,
    graph_env,
    neo4j_server_or_skip,
    reset,
)
from tests.integration import graph_fixtures
from tests.waiting import wait_for

# The suite's fixtures, shared with the other graph suite (pytest finds them by these names).
settings, probe, sink = graph_fixtures.settings, graph_fixtures.probe, graph_fixtures.sink

CONSTRAINT_WAIT_S = 10.0
WRITE_AGAIN_S = 10.0
LABELS = [label for label, _ in NODE_KEYS]
# Works on both backends: each node's key, whatever its label.
EDGES = ("MATCH (a)-[r]->(e:Event) RETURN labels(a)[0], coalesce(a.key, a.host_id, a.container_id), "
         "type(r), e.id")


def wait_for_constraints(probe: Probe) -> set[tuple[str, str]]:
    """The operational key constraints, once all exist or CONSTRAINT_WAIT_S has passed."""
    deadline = time.monotonic() + CONSTRAINT_WAIT_S
    while (found := probe.unique_keys()) != set(NODE_KEYS) and time.monotonic() < deadline:
        pass  # FalkorDB builds constraints asynchronously; each probe is a round trip
    return found


def soon(settings: Settings) -> float:
    """The deadline of a write starting now, for calling a backend as the sink does."""
    return write_deadline(settings.sink_budget_s)


def event(event_id: str, **metadata: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "connect", "source": "/usr/bin/psql", "timestamp": 1704110400000,
            "env": "test", "rdns": None, "metadata": metadata, "payload": {"bytes": 12}}


def alice(event_id: str, pid: str = "1234", **more: Any) -> dict[str, Any]:
    return event(event_id, host_id="host-001", host_ip="10.1.2.3", pid=pid, uid="1001", user="alice",
                 enriched_at="2024-01-01T12:00:00Z", enrichment_version="1", **more)


def counts(probe: Probe) -> dict[str, int]:
    found = {label: probe.rows(f"MATCH (n:{label}) RETURN count(n)")[0][0] for label in LABELS}
    found["relationships"] = probe.rows("MATCH ()-[r]->() RETURN count(r)")[0][0]
    return found


def edges(probe: Probe) -> set[tuple[str, str, str, str]]:
    return {tuple(row) for row in probe.rows(EDGES)}  # type: ignore[misc]


def test_batch_creates_the_nodes_and_relationships(sink: GraphSink, probe: Probe) -> None:
    created = sink.write([alice("e1", container_id="c0ffee", binary_sha256="abc123"), alice("e2", pid="999")])

    assert created == 2
    assert counts(probe) == {"Event": 2, "Host": 1, "User": 1, "Process": 2, "Container": 1, "NetworkEndpoint": 0,
                             "Indicator": 0, "relationships": 7}
    assert edges(probe) == {
        ("Host", "host-001", "GENERATED", "e1"), ("Host", "host-001", "GENERATED", "e2"),
        ("User", "uid:host-001:1001", "EXECUTED", "e1"), ("User", "uid:host-001:1001", "EXECUTED", "e2"),
        ("Process", "host-001:1234:/usr/bin/psql", "EXECUTED", "e1"),
        ("Process", "host-001:999:/usr/bin/psql", "EXECUTED", "e2"),
        ("Container", "c0ffee", "GENERATED", "e1"),
    }
    assert probe.rows("MATCH (e:Event {id: 'e1'}) RETURN e.type, e.source, e.timestamp, e.env, e.rdns, "
                      "e.host_id, e.enriched_at") == [
        ["connect", "/usr/bin/psql", 1704110400000, "test", None, "host-001", "2024-01-01T12:00:00Z"]]
    assert probe.rows("MATCH (p:Process {key: 'host-001:1234:/usr/bin/psql'}) "
                      "RETURN p.host_id, p.pid, p.source, p.binary_sha256") == [
        ["host-001", "1234", "/usr/bin/psql", "abc123"]]


def test_replaying_a_batch_changes_nothing(sink: GraphSink, probe: Probe) -> None:
    batch = [alice("e1", container_id="c0ffee"), alice("e2", pid="999"), event("e3")]
    assert sink.write(batch) == 3
    before = (counts(probe), edges(probe))

    assert sink.write(batch) == 0
    assert (counts(probe), edges(probe)) == before
    assert sink.count_events() == 3


def test_a_batch_with_some_events_stored_creates_only_the_others(sink: GraphSink, probe: Probe) -> None:
    assert sink.write([alice("e1"), alice("e2", pid="999")]) == 2
    before = edges(probe)

    # e2 is stored: creating the batch fails on Event's key, and the batch is merged instead.
    assert sink.write([alice("e2", pid="999"), alice("e3", pid="777", container_id="c1"), event("e4")]) == 2
    assert counts(probe) == {"Event": 4, "Host": 1, "User": 1, "Process": 3, "Container": 1, "NetworkEndpoint": 0,
                             "Indicator": 0, "relationships": 10}
    assert before < edges(probe)
    assert sink.count_events() == 4


def test_creating_a_stored_event_writes_nothing_of_the_batch(settings: Settings, sink: GraphSink,
                                                             probe: Probe) -> None:
    sink.write([alice("e2")])
    before = (counts(probe), edges(probe))
    backend = connect_backend(settings)
    try:
        assert backend.keys_enforced(soon(settings))
        with pytest.raises(KeyConflict, match="Event"):
            backend.write_rows(CREATE_CYPHER, as_lists(build_rows([alice("e1", pid="5", container_id="c9"),
                                                                   alice("e2"), event("e3", host_id="h9")])),
                               soon(settings))
    finally:
        backend.close()
    assert (counts(probe), edges(probe)) == before


def test_a_new_process_on_several_events_of_a_batch_is_one_node(sink: GraphSink, probe: Probe) -> None:
    sink.write([alice("e1", pid="1", binary_sha256="aa"), alice("e2", pid="1", binary_sha256="bb"),
                alice("e3", pid="1"), alice("e4", pid="2")])

    assert sorted(probe.rows("MATCH (p:Process)-[:EXECUTED]->(e) RETURN p.pid, p.binary_sha256, count(e)")) == [
        ["1", "bb", 3], ["2", None, 1]]
    assert counts(probe)["Process"] == 2


def test_creating_a_stored_process_writes_nothing_of_the_batch(settings: Settings, sink: GraphSink,
                                                               probe: Probe) -> None:
    sink.write([alice("e1", pid="1")])
    before = (counts(probe), edges(probe))
    backend = connect_backend(settings)
    try:
        # The rows claim process 1 is new: it is not.
        rows = as_lists(build_rows([alice("e2", pid="2"), alice("e3", pid="1")]), stored_processes=set())
        with pytest.raises(KeyConflict, match="Process"):
            backend.write_rows(CREATE_CYPHER, rows, soon(settings))
    finally:
        backend.close()
    assert (counts(probe), edges(probe)) == before


def test_a_process_stored_between_the_read_and_the_write_is_merged(
        settings: Settings, probe: Probe, monkeypatch: pytest.MonkeyPatch) -> None:
    class Racing:
        """The real backend, with another writer storing the same process right after the sink read."""

        def __init__(self, backend: Any) -> None:
            self._backend = backend

        def __getattr__(self, name: str) -> Any:
            return getattr(self._backend, name)

        def stored_keys(self, statement: str, keys: list[str], deadline: float) -> set[str]:
            stored = self._backend.stored_keys(statement, keys, deadline)
            other = real(settings)
            other.write_rows(MERGE_CYPHER, as_lists(build_rows([alice("e-other", pid="1")])), soon(settings))
            other.close()
            return stored

    real = graph_sink.connect_backend
    monkeypatch.setattr(graph_sink, "connect_backend", lambda s: Racing(real(s)))
    sink = GraphSink(settings)
    sink.open()
    wait_for_constraints(probe)
    try:
        assert sink.write([alice("e1", pid="1"), alice("e2", pid="2")]) == 2
    finally:
        sink.close()
    assert sorted(probe.rows("MATCH (p:Process)-[:EXECUTED]->(e) RETURN p.pid, e.id")) == [
        ["1", "e-other"], ["1", "e1"], ["2", "e2"]]
    assert counts(probe)["Process"] == 2


def test_context_keeps_its_last_known_values_whether_events_are_created_or_merged(sink: GraphSink,
                                                                                 probe: Probe) -> None:
    def context() -> list[list[Any]]:
        return [probe.rows("MATCH (h:Host) RETURN h.host_ip, h.hostname")[0],
                probe.rows("MATCH (u:User) RETURN u.key, u.host_id, u.uid, u.name")[0],
                probe.rows("MATCH (p:Process) RETURN p.host_id, p.pid, p.source, p.binary_sha256")[0]]

    def seen(event_id: str, **known: Any) -> dict[str, Any]:
        return event(event_id, host_id="host-001", pid="1234", uid="1001", **known)

    sink.write([seen("e1", host_ip="10.1.2.3", hostname="db-1", user="alice", binary_sha256="aa")])
    learnt = [["10.1.2.3", "db-1"], ["uid:host-001:1001", "host-001", "1001", "alice"],
              ["host-001", "1234", "/usr/bin/psql", "aa"]]
    assert context() == learnt
    # A later event lacking them erases nothing, created or replayed.
    sink.write([seen("e2")])
    sink.write([seen("e2")])
    assert context() == learnt
    # New values replace old ones, in a created batch and in a merged one (e2 is stored).
    sink.write([seen("e3", host_ip="10.9.9.9", hostname="db-2", user="alice2", binary_sha256="bb")])
    assert context() == [["10.9.9.9", "db-2"], ["uid:host-001:1001", "host-001", "1001", "alice2"],
                         ["host-001", "1234", "/usr/bin/psql", "bb"]]
    sink.write([seen("e2"), seen("e4", host_ip="10.8.8.8", hostname="db-3", user="alice3", binary_sha256="cc")])
    assert context() == [["10.8.8.8", "db-3"], ["uid:host-001:1001", "host-001", "1001", "alice3"],
                         ["host-001", "1234", "/usr/bin/psql", "cc"]]
    # One value alone changes alone.
    sink.write([seen("e5", hostname="db-4")])
    assert context()[0] == ["10.8.8.8", "db-4"]


def test_events_from_one_host_and_user_share_their_nodes(sink: GraphSink, probe: Probe) -> None:
    sink.write([alice("e1")])
    sink.write([alice("e2", pid="555"), event("e3", host_id="host-001", user="alice")])

    assert counts(probe)["Host"] == 1
    # alice by uid on host-001, and alice known by name only: two identities, each shared by its events.
    assert sorted(probe.rows("MATCH (u:User)-[:EXECUTED]->(e) RETURN u.key, count(e)")) == [
        ["name:alice", 1], ["uid:host-001:1001", 2]]


def test_same_pid_on_two_hosts_is_two_processes(sink: GraphSink, probe: Probe) -> None:
    sink.write([event("e1", host_id="host-001", pid="1234"), event("e2", host_id="host-002", pid="1234")])

    assert sorted(probe.rows("MATCH (p:Process) RETURN p.host_id, p.pid")) == [
        ["host-001", "1234"], ["host-002", "1234"]]
    assert counts(probe)["Host"] == 2


def test_event_without_metadata_is_a_lone_event_node(sink: GraphSink, probe: Probe) -> None:
    bare = {"id": "bare", "type": "exec", "source": "/bin/sh", "timestamp": 1}

    assert sink.write([bare]) == 1
    assert counts(probe) == {"Event": 1, "Host": 0, "User": 0, "Process": 0, "Container": 0, "NetworkEndpoint": 0,
                             "Indicator": 0, "relationships": 0}


def test_open_twice_keeps_one_constraint_per_key(sink: GraphSink, probe: Probe) -> None:
    sink.open()
    sink.open()

    assert wait_for_constraints(probe) == set(NODE_KEYS)
    assert sink.write([alice("e1")]) == 1


def test_concurrent_opens_of_a_new_graph_all_succeed(settings: Settings, probe: Probe) -> None:
    sinks = [GraphSink(settings) for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(GraphSink.open, sinks))
    for s in sinks:
        s.close()

    assert wait_for_constraints(probe) == set(NODE_KEYS)


def test_open_over_duplicate_keys_is_a_data_error(settings: Settings, probe: Probe) -> None:
    probe.run("CREATE (:Host {host_id: 'dup'}), (:Host {host_id: 'dup'})")
    sink = GraphSink(settings)
    deadline = time.monotonic() + CONSTRAINT_WAIT_S

    with pytest.raises(SinkDataError, match="Host"):
        while time.monotonic() < deadline:
            sink.open()  # FalkorDB finds the duplicates while it builds the constraint, after open returned
    sink.close()


def test_unicode_and_quotes_round_trip(sink: GraphSink, probe: Probe) -> None:
    tricky = "it's \"quoted\" \\ back\\slash\nnew line — 日本語 🚀 `tick`"
    sink.write([{**event("ünï-'\"", host_id=tricky, user=tricky, hostname=tricky), "source": tricky}])

    assert probe.rows("MATCH (h:Host)-[:GENERATED]->(e:Event) "
                      "RETURN h.host_id, h.hostname, e.id, e.source") == [[tricky, tricky, "ünï-'\"", tricky]]
    assert probe.rows("MATCH (u:User) RETURN u.name") == [[tricky]]


def test_text_without_escapes_round_trips(sink: GraphSink, probe: Probe) -> None:
    # No backslash, quote or control character: on FalkorDB this goes in the JSON-written parameter header.
    plain = "it's {a,b}: [x] — 日本語 🚀 `tick` $rows r.id"
    sink.write([{**event("e-{1}", host_id=plain, user=plain, hostname=plain, pid=12.5), "source": plain},
                {**event("e-2", host_id="h2"), "timestamp": 1500.25, "env": ""}])

    assert probe.rows("MATCH (h:Host)-[:GENERATED]->(e:Event) RETURN h.host_id, h.hostname, e.id, e.source "
                      "ORDER BY e.id") == [["h2", None, "e-2", "/usr/bin/psql"], [plain, plain, "e-{1}", plain]]
    assert probe.rows("MATCH (p:Process) RETURN p.pid") == [["12.5"]]
    assert probe.rows("MATCH (e:Event {id: 'e-2'}) RETURN e.timestamp, e.env") == [[1500.25, ""]]


def test_write_to_a_closed_port_is_unavailable(settings: Settings) -> None:
    scheme = urlsplit(settings.neo4j_uri).scheme
    down = GraphSink(Settings(**{**vars(settings), "neo4j_uri": f"{scheme}://127.0.0.1:{servers.free_port()}"}))

    with pytest.raises(SinkUnavailable):
        down.open()
    with pytest.raises(SinkUnavailable):
        down.write([alice("e1")])
    with pytest.raises(SinkUnavailable):
        down.check()
    down.close()
    down.close()


def test_closed_sink_refuses_writes_until_reopened(sink: GraphSink, probe: Probe) -> None:
    sink.check()
    sink.close()
    with pytest.raises(SinkUnavailable):
        sink.write([alice("e1")])
    sink.open()
    assert sink.write([alice("e1")]) == 1


def test_concurrent_overlapping_batches_store_each_node_once(settings: Settings, sink: GraphSink,
                                                            probe: Probe) -> None:
    hosts, users = ["host-a", "host-b"], ["u1", "u2", "u3"]
    events = [{**event(f"e{i}", host_id=hosts[i % 2], uid=users[i % 3], pid=str(100 + i % 5),
                       container_id=f"c{i % 4}"), "args": {"dst_ip": f"10.0.0.{i % 3}", "dst_port": 443}}
              for i in range(60)]
    # Four threads, each writing every event in batches of 10 from its own starting offset.
    batches = [[events[(start + k) % 60] for k in range(b, b + 10)]
               for start in (0, 5, 17, 33) for b in range(0, 60, 10)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        created = sum(pool.map(sink.write, batches))

    # Each new event is counted once: by the one write that stored it (another writer's MERGE of it waits for it).
    assert created == 60
    found = counts(probe)
    expected_processes = len({(e["metadata"]["host_id"], e["metadata"]["pid"]) for e in events})
    flows = 2 * 3  # each host talks to each of the three endpoints
    assert found == {"Event": 60, "Host": 2, "User": 6, "Process": expected_processes, "Container": 4,
                     "NetworkEndpoint": 3, "Indicator": 0, "relationships": 60 * 5 + flows}
    assert probe.rows("MATCH ()-[c:COMMUNICATES]->() RETURN sum(c.count)") == [[60]]


def test_each_writer_thread_has_its_own_neo4j_driver(make_settings: Callable[..., Settings],
                                                     neo4j_server: servers.Server,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No Bolt connection passes between threads (see ``etl.sinks.graph.neo4j_drivers``): four threads writing
    through one sink make four drivers, one each, and reuse it; closing the sink closes them all."""
    made: list[tuple[int, Any]] = []
    real_driver = neo4j_backend.GraphDatabase.driver

    def counted(*args: Any, **kwargs: Any) -> Any:
        made.append((threading.get_ident(), real_driver(*args, **kwargs)))
        return made[-1][1]

    settings = make_settings(**graph_env(NEO4J, neo4j_server))
    reset(settings)
    monkeypatch.setattr(neo4j_backend.GraphDatabase, "driver", counted)
    sink = GraphSink(settings)
    sink.open()  # the opening thread's driver
    barrier = threading.Barrier(4)

    def write_twice(n: int) -> int:
        barrier.wait()
        return sink.write([event(f"a{n}", host_id="shared")]) + sink.write([event(f"b{n}", host_id="shared")])

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sum(pool.map(write_twice, range(4))) == 8
    sink.close()

    assert len(made) == 5 == len({thread for thread, _ in made})
    for _, driver in made:
        with pytest.raises(Exception, match="closed"):
            driver.session()


def test_events_are_created_only_once_their_keys_are_enforced(settings: Settings, probe: Probe) -> None:
    backend = connect_backend(settings)
    try:
        if backend_of(settings) == FALKORDB:
            assert not backend.keys_enforced(soon(settings))  # no schema yet: the sink would merge
            backend.ensure_schema()
            wait_for_constraints(probe)  # FalkorDB builds constraints after creating them
        else:
            backend.ensure_schema()
            # Neo4j built them before CREATE CONSTRAINT returned: what its constant keys_enforced() relies on.
            assert probe.unique_keys() == set(NODE_KEYS)
        assert backend.keys_enforced(soon(settings))
    finally:
        backend.close()


def test_a_key_too_long_for_an_index_is_a_data_error_and_stores_nothing(sink: GraphSink, probe: Probe) -> None:
    # Neo4j refuses an index entry past about 8 KiB, and FalkorDB crashes past 4 KiB: the sink refuses such a key
    # on both backends alike, and takes one just under the limit.
    with pytest.raises(SinkDataError, match="host_id"):
        sink.write([alice("e1"), event("e2", host_id="h" * (GRAPH_KEY_BYTES + 1))])
    assert sink.write([alice("e1"), event("e2", host_id="日" * (GRAPH_KEY_BYTES // 3))]) == 2
    assert counts(probe)["Host"] == 2


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_a_restarted_server_is_unavailable_then_recovers(backend: str, tmp_path: Path) -> None:
    server = (servers.redis_server(tmp_path, falkordb=True) if backend == FALKORDB
              else neo4j_server_or_skip(tmp_path)).start()
    # Time for a cold server to plan the statements: a restarted Neo4j takes seconds for its first write.
    sink = GraphSink(Settings.from_env({**graph_env(backend, server), "GRAPH_NAME": "restart",
                                        "PROCESSING_TIMEOUT": "10"}))
    try:
        sink.open()
        assert sink.write([alice("e1")]) == 1
        server.stop()
        with pytest.raises(SinkUnavailable):
            sink.write([alice("e2")])
        with pytest.raises(SinkUnavailable):
            sink.check()
        server.start()
        sink.check()
        assert sink.write([alice("e3")]) == 1  # the connections of before the restart are not reused
        assert sink.count_events() == 2
    finally:
        sink.close()
        server.stop()


def written(sink: GraphSink, batch: list[dict[str, Any]]) -> bool:
    try:
        sink.write(batch)
    except SinkUnavailable:
        return False
    return True


def test_a_stalled_falkordb_gives_up_within_the_budget(tmp_path: Path) -> None:
    """A FalkorDB that is connected but not answering (SIGSTOP): the write fails as unavailable within the sink's
    budget, before Dramatiq's time limit (``PROCESSING_TIMEOUT``) would interrupt the actor; it succeeds again once
    the server answers."""
    server = servers.redis_server(tmp_path, falkordb=True).start()
    assert server.proc is not None
    settings = Settings.from_env({**graph_env(FALKORDB, server), "GRAPH_NAME": "stall", "PROCESSING_TIMEOUT": "4"})
    sink = GraphSink(settings)
    try:
        sink.open()
        assert sink.write([alice("e1")]) == 1
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="[Tt]imeout"):
            sink.write([alice("e2")])
        assert time.monotonic() - started <= settings.sink_budget_s < settings.processing_timeout_s
        server.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: written(sink, [alice("e2")]), timeout_s=WRITE_AGAIN_S)
        assert sink.count_events() == 2
    finally:
        server.proc.send_signal(signal.SIGCONT)
        sink.close()
        server.stop()


def test_a_neo4j_write_waiting_on_a_lock_gives_up_within_the_budget(make_settings: Callable[..., Settings],
                                                                      neo4j_server: servers.Server) -> None:
    """Another transaction holds the lock of a Host the batch merges: the write's transaction times out on the
    server (one attempt's share of the sink's budget), before Dramatiq's time limit would interrupt the actor."""
    settings = make_settings(**graph_env(NEO4J, neo4j_server), PROCESSING_TIMEOUT="12")
    reset(settings)
    sink = GraphSink(settings)
    sink.write([event("seed", host_id="hz")])
    holder = GraphDatabase.driver(settings.neo4j_uri, auth=(settings.neo4j_user, settings.graph_password))
    try:
        with holder.session() as session, session.begin_transaction() as tx:
            tx.run("MATCH (h:Host {host_id: 'hz'}) SET h.held = true").consume()
            started = time.monotonic()
            with pytest.raises(SinkUnavailable, match="TransactionTimedOut|LockClientStopped"):
                sink.write([event("blocked", host_id="hz")])
            elapsed_s = time.monotonic() - started
            assert neo4j_backend.attempt_timeout_s(settings) <= elapsed_s <= settings.sink_budget_s
            tx.rollback()
        assert sink.write([event("blocked", host_id="hz")]) == 1
    finally:
        holder.close()
        sink.close()


def test_a_neo4j_write_gives_up_at_its_deadline_not_a_request_later(
        make_settings: Callable[..., Settings], neo4j_server: servers.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write's deadline bounds its create and merge together. Attempts may take most of the budget here, so
    nothing else could: the create waits, for a good part of the budget, on the key of its new event, which another
    transaction is creating and then rolls back; it then conflicts on the stored event, and the merge waits for
    that event's host, which a third transaction holds. The write gives up within the budget of its start, not an
    attempt's timeout after the merge began."""
    monkeypatch.setattr(neo4j_backend, "ATTEMPT_BUDGET_SHARE", 0.9)
    settings = make_settings(**graph_env(NEO4J, neo4j_server), PROCESSING_TIMEOUT="10")
    reset(settings)
    sink = GraphSink(settings)
    sink.write([event("stored", host_id="h2")])
    batch = [event("new", host_id="h1"), event("stored", host_id="h2")]
    holder = GraphDatabase.driver(settings.neo4j_uri, auth=(settings.neo4j_user, settings.graph_password))
    try:
        with holder.session() as creating, holder.session() as locking, ThreadPoolExecutor(1) as pool:
            creator = creating.begin_transaction()
            creator.run("CREATE (:Event {id: 'new'})").consume()
            lock = locking.begin_transaction()
            lock.run("MATCH (h:Host {host_id: 'h2'}) SET h.held = true").consume()
            started = time.monotonic()
            write = pool.submit(sink.write, batch)
            create_waited_s = settings.sink_budget_s * 0.25
            wait_for(lambda: blocked_transactions(holder, "CREATE (e:Event", create_waited_s), timeout_s=10)
            creator.rollback()
            wait_for(lambda: blocked_transactions(holder, "e.timestamp IS NULL AS fresh"), timeout_s=10)
            with pytest.raises(TransientError, match="TransactionTimedOut|LockClientStopped|no time left"):
                write.result(timeout=30)
            elapsed_s = time.monotonic() - started
            lock.rollback()
        assert elapsed_s <= settings.sink_budget_s
        assert sink.write(batch) == 1
    finally:
        holder.close()
        sink.close()


def reruns(code: str) -> float:
    return REGISTRY.get_sample_value("etl_graph_write_reruns_total", {"code": code}) or 0.0


def test_neo4j_deadlock_is_run_again_and_counted(make_settings: Callable[..., Settings],
                                                 neo4j_server: servers.Server) -> None:
    """Two batches lock the same hosts in opposite orders: Neo4j kills one with a deadlock, the driver runs it
    again, both are stored whole, and the deadlock is counted. (FalkorDB runs one write at a time: none there.)"""
    settings = make_settings(**graph_env(NEO4J, neo4j_server))
    reset(settings)
    sink = GraphSink(settings)
    sink.write([event("seed-1", host_id="h1"), event("seed-2", host_id="h2"), event("seed-z", host_id="hz")])
    deadlock = "Neo.TransientError.Transaction.DeadlockDetected"
    before = reruns(deadlock)
    holder = GraphDatabase.driver(settings.neo4j_uri, auth=(settings.neo4j_user, settings.graph_password))
    try:
        with holder.session() as session, session.begin_transaction() as tx:
            # Both batches lock their first host, then wait for hz; once it is free, one of them takes it and
            # then waits for the other's first host, which waits for hz: a cycle.
            tx.run("MATCH (h:Host {host_id: 'hz'}) SET h.held = true").consume()
            with ThreadPoolExecutor(max_workers=2) as pool:
                written = [pool.submit(sink.write, [event(f"{name}-{i}", host_id=h) for i, h in enumerate(hosts)])
                           for name, hosts in (("a", ["h1", "hz", "h2"]), ("b", ["h2", "hz", "h1"]))]
                wait_for(lambda: blocked_transactions(holder) >= 2, timeout_s=30)
                tx.commit()
                assert [w.result(timeout=60) for w in written] == [3, 3]
        assert reruns(deadlock) == before + 1
        assert sink.count_events() == 9
    finally:
        holder.close()
        sink.close()


def blocked_transactions(driver: Any, running: str = "", for_s: float = 0.0) -> int:
    """Transactions blocked by another's lock (whose query holds ``running``, and that began ``for_s`` seconds ago
    at least)."""
    shown = driver.execute_query("SHOW TRANSACTIONS YIELD status, currentQuery, elapsedTime "
                                 "WHERE status STARTS WITH 'Blocked' AND currentQuery CONTAINS $running "
                                 "AND elapsedTime.milliseconds >= $ms RETURN count(*) AS n",
                                 running=running, ms=int(for_s * 1000))
    return int(shown.records[0]["n"])

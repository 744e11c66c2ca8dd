"""Network flows in the graph, as the AegisFlux decision service reads them, on every graph backend.

Its two queries run verbatim against a graph the sink built from a corpus with known flows, before and after the
whole corpus (and a dead-letter-style single event) is written again: replays must not change a row or a count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from etl.config import Settings
from etl.sinks.graph.cypher import NODE_INDEXES
from etl.sinks.graph.sink import GraphSink
from tests.graphs import FALKORDB, Probe, backend_of
from tests.integration import graph_fixtures

# The suite's fixtures, shared with the other graph suite (pytest finds them by these names).
settings, probe, sink = graph_fixtures.settings, graph_fixtures.probe, graph_fixtures.sink

# The decision service's queries, as it sends them (see ../shared/SYSTEM.md).
ENDPOINTS_OF_HOST = ("MATCH (h:Host {id:$hostID})-[:COMMUNICATES]->(ne:NetworkEndpoint) "
                     "RETURN h.id, ne.ip, ne.port, ne.protocol")
HOSTS_SHARING_ENDPOINTS = ("MATCH (h1:Host {id:$hostID})-[:COMMUNICATES]->(ne:NetworkEndpoint)<-[:COMMUNICATES]-"
                           "(h2:Host) WHERE h1.id <> h2.id RETURN h2.id, ne.ip, ne.port")
FLOWS = ("MATCH (h:Host)-[c:COMMUNICATES]->(ne:NetworkEndpoint) "
         "RETURN h.id, ne.endpoint_id, c.count, c.first_seen, c.last_seen")
HOSTS = "MATCH (h:Host) RETURN h.id, h.host_id, h.last_seen, h.env, h.rdns"
BASE_MS = 1_704_110_400_000


def flow_event(event_id: str, host_id: str | None, offset_ms: int, **args: Any) -> dict[str, Any]:
    metadata = {"host_id": host_id, "pid": "4242", "uid": "0"} if host_id else {}
    return {"id": event_id, "type": "connect", "source": "/usr/bin/curl", "timestamp": BASE_MS + offset_ms,
            "env": "prod", "rdns": f"{host_id}.corp.example" if host_id else None, "dst_rdns": None,
            "metadata": metadata, "args": args}


DB = {"dst_ip": "10.0.0.5", "dst_port": 5432, "protocol": "tcp"}
WEB6 = {"remote_ip": "2001:DB8::1", "remote_port": "443", "proto": "tcp"}
DNS = {"dst_ip": "8.8.8.8", "dst_port": 53, "protocol": "udp"}
NO_PORT = {"dst_ip": "10.0.0.9"}

# Out of time order on purpose, with an event of no host and one of no flow.
CORPUS = [
    flow_event("h1-db-1", "h1", 300, **DB), flow_event("h2-db-1", "h2", 100, **DB),
    flow_event("h1-db-2", "h1", 100, **DB), flow_event("h1-web-1", "h1", 500, **WEB6),
    flow_event("h3-web-1", "h3", 200, **WEB6), flow_event("h2-dns-1", "h2", 400, **DNS),
    flow_event("h2-dns-2", "h2", 450, **DNS), flow_event("h1-db-3", "h1", 200, **DB),
    flow_event("h1-np-1", "h1", 50, **NO_PORT), flow_event("anon-db", None, 600, **DB),
    flow_event("h4-file", "h4", 700, path="/etc/passwd"),
]

EXPECTED_ENDPOINTS_OF_H1 = [["h1", "10.0.0.5", 5432, "tcp"], ["h1", "10.0.0.9", None, None],
                            ["h1", "2001:db8::1", 443, "tcp"]]
EXPECTED_SHARING_WITH_H1 = [["h2", "10.0.0.5", 5432], ["h3", "2001:db8::1", 443]]
EXPECTED_FLOWS = [
    ["h1", "10.0.0.5:5432", 3, BASE_MS + 100, BASE_MS + 300],
    ["h1", "10.0.0.9", 1, BASE_MS + 50, BASE_MS + 50],
    ["h1", "[2001:db8::1]:443", 1, BASE_MS + 500, BASE_MS + 500],
    ["h2", "10.0.0.5:5432", 1, BASE_MS + 100, BASE_MS + 100],
    ["h2", "8.8.8.8:53", 2, BASE_MS + 400, BASE_MS + 450],
    ["h3", "[2001:db8::1]:443", 1, BASE_MS + 200, BASE_MS + 200],
]
EXPECTED_HOSTS = [
    ["h1", "h1", BASE_MS + 500, "prod", "h1.corp.example"], ["h2", "h2", BASE_MS + 450, "prod", "h2.corp.example"],
    ["h3", "h3", BASE_MS + 200, "prod", "h3.corp.example"], ["h4", "h4", BASE_MS + 700, "prod", "h4.corp.example"],
]


def sorted_rows(probe: Probe, cypher: str, **params: Any) -> list[list[Any]]:
    return sorted(probe.rows(cypher, **params), key=lambda row: [str(v) for v in row])


def assert_decision_service_view(probe: Probe) -> None:
    assert sorted_rows(probe, ENDPOINTS_OF_HOST, hostID="h1") == EXPECTED_ENDPOINTS_OF_H1
    assert sorted_rows(probe, HOSTS_SHARING_ENDPOINTS, hostID="h1") == EXPECTED_SHARING_WITH_H1
    assert sorted_rows(probe, HOSTS_SHARING_ENDPOINTS, hostID="h2") == [["h1", "10.0.0.5", 5432]]
    assert sorted_rows(probe, ENDPOINTS_OF_HOST, hostID="h4") == []
    assert sorted_rows(probe, FLOWS) == EXPECTED_FLOWS
    assert sorted_rows(probe, HOSTS) == EXPECTED_HOSTS
    assert probe.rows("MATCH (:Event)-[t:TO]->(:NetworkEndpoint) RETURN count(t)") == [[10]]
    assert probe.rows("MATCH (n:NetworkEndpoint) RETURN count(n)") == [[4]]


def test_the_decision_services_queries_see_the_flows_and_replays_change_nothing(sink: GraphSink,
                                                                                 probe: Probe) -> None:
    assert sum(sink.write(CORPUS[i:i + 4]) for i in range(0, len(CORPUS), 4)) == len(CORPUS)
    assert_decision_service_view(probe)

    # The whole corpus again, batched otherwise (the create conflicts: every batch is merged), then one event
    # as a dead-letter replay sends it, and a batch holding a copy twice.
    assert sink.write(CORPUS) == 0
    assert sum(sink.write(CORPUS[i:i + 3]) for i in range(0, len(CORPUS), 3)) == 0
    assert sink.write([CORPUS[0]]) == 0
    assert sink.write([CORPUS[5], CORPUS[5]]) == 0
    assert_decision_service_view(probe)


def test_new_events_in_a_merged_batch_each_count_once(sink: GraphSink, probe: Probe) -> None:
    sink.write([CORPUS[0]])
    # The stored event makes the create conflict; the two new ones for the same flow are merged one after the other.
    batch = [CORPUS[0], flow_event("late", "h1", -100, **DB), flow_event("later", "h1", 900, **DB)]
    assert sink.write(batch) == 2
    assert sorted_rows(probe, FLOWS) == [["h1", "10.0.0.5:5432", 3, BASE_MS - 100, BASE_MS + 900]]
    assert sorted_rows(probe, HOSTS) == [["h1", "h1", BASE_MS + 900, "prod", "h1.corp.example"]]


def test_an_event_arriving_late_never_moves_a_host_back(sink: GraphSink, probe: Probe) -> None:
    sink.write([flow_event("now", "h1", 1_000)])
    old = {**flow_event("old", "h1", 10), "env": "staging", "rdns": "old-name.example"}
    assert sink.write([old]) == 1
    assert sorted_rows(probe, HOSTS) == [["h1", "h1", BASE_MS + 1_000, "prod", "h1.corp.example"]]


def test_hosts_stored_before_host_id_existed_get_it_and_lookups_are_indexed(settings: Settings,
                                                                            probe: Probe) -> None:
    probe.run("CREATE (:Host {host_id: 'legacy', hostname: 'old'})")
    sink = GraphSink(settings)
    try:
        sink.open()
        sink.write([flow_event("e1", "legacy", 0, **DB)])
    finally:
        sink.close()
    assert sorted_rows(probe, ENDPOINTS_OF_HOST, hostID="legacy") == [["legacy", "10.0.0.5", 5432, "tcp"]]
    assert set(NODE_INDEXES) <= indexed(settings, probe)


def indexed(settings: Settings, probe: Probe) -> set[tuple[str, str]]:
    """(label, property) of every node index, unique ones included."""
    if backend_of(settings) == FALKORDB:
        rows = probe.rows("CALL db.indexes() YIELD label, properties RETURN label, properties")
    else:
        rows = probe.rows("SHOW INDEXES YIELD labelsOrTypes, properties WHERE labelsOrTypes IS NOT NULL "
                          "RETURN labelsOrTypes[0], properties")
    return {(label, prop) for label, props in rows for prop in props}


def test_an_endpoint_first_seen_without_a_protocol_learns_it_from_a_later_flow(sink: GraphSink,
                                                                               probe: Probe) -> None:
    sink.write([flow_event("a", "h1", 0, dst_ip="10.0.0.5", dst_port=5432)])
    assert probe.rows("MATCH (ne:NetworkEndpoint) RETURN ne.endpoint_id, ne.protocol") == [["10.0.0.5:5432", None]]
    sink.write([flow_event("b", "h2", 10, **DB)])
    assert probe.rows("MATCH (ne:NetworkEndpoint) RETURN ne.endpoint_id, ne.protocol") == [["10.0.0.5:5432", "tcp"]]


def test_new_events_of_a_new_flow_in_a_merged_batch_each_count_once(sink: GraphSink, probe: Probe) -> None:
    sink.write([CORPUS[0]])
    web = {"dst_ip": "10.9.9.9", "dst_port": 80}
    batch = [CORPUS[0], flow_event("n1", "h9", 30, **web), flow_event("n2", "h9", 10, **web, protocol="tcp")]
    assert sink.write(batch) == 2
    assert sorted_rows(probe, FLOWS) == [["h1", "10.0.0.5:5432", 1, BASE_MS + 300, BASE_MS + 300],
                                         ["h9", "10.9.9.9:80", 2, BASE_MS + 10, BASE_MS + 30]]
    # The batch named the endpoint's protocol on its second event only: the endpoint has it.
    assert probe.rows("MATCH (ne:NetworkEndpoint {endpoint_id: '10.9.9.9:80'}) RETURN ne.protocol") == [["tcp"]]


def test_concurrent_writers_never_move_a_host_back(sink: GraphSink, probe: Probe) -> None:
    # Each batch holds one event of h1; the writers race with times out of order. The newest event wins.
    times = [(i * 7919) % 400 for i in range(400)]
    batches = [[{**flow_event(f"t{t}", "h1", t), "env": f"env-{t}"}] for t in times]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sum(pool.map(sink.write, batches)) == len(batches)
    newest = max(times)
    assert sorted_rows(probe, HOSTS) == [["h1", "h1", BASE_MS + newest, f"env-{newest}", "h1.corp.example"]]

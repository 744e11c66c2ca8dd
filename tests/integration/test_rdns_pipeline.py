"""RDNS_MODE=ptr through the whole pipeline: the real bridge and worker processes ask a real DNS server on
loopback, and the names land in PostgreSQL, the graph and on the enriched stream."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg2
import pytest
from falkordb import FalkorDB
from prometheus_client.parser import text_string_to_metric_families

from etl.config import Settings
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.pipeline.enrich import ENRICHMENT_VERSION
from etl.pipeline.peers import destination_of
from tests.integration.accounting import publish_all, read_enriched
from tests.support.ptrserver import PtrServer
from tests.waiting import wait_for

SERVFAIL_NET = "192.0.2.0/24"


def extra_events() -> list[dict[str, Any]]:
    """IPv6 on both sides, a SERVFAIL peer, and a host known only by name (never PTR-resolved)."""
    def event(event_id: str, metadata: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
        return {"id": event_id, "type": "connect", "source": "/usr/bin/curl", "timestamp": 1_704_110_400_000,
                "metadata": metadata, "payload": base64.b64encode(orjson.dumps(args)).decode()}

    return [event("v6-1", {"host_id": "host-v6", "host_ip": "2001:db8::10"}, {"remote_ip": "2001:db8::20"}),
            event("v6-2", {"host_id": "host-v6", "host_ip": "2001:DB8::10"}, {"dst_ip": "2001:db8::21"}),
            event("servfail-1", {"host_id": "host-v6", "host_ip": "2001:db8::10"}, {"dst_ip": "192.0.2.8"}),
            event("named-1", {"host_id": "host-n", "hostname": "web01.example.com"}, {"dst_ip": "203.0.113.2"})]


@pytest.fixture
def events() -> list[dict[str, Any]]:
    return [*map(orjson.loads, generate(400, hosts=10, seed=5)), *extra_events()]


@pytest.fixture
def dns_server(events: list[dict[str, Any]]) -> Iterator[PtrServer]:
    """Names for every host address and for the even-numbered IPv4 peers (odd ones are NXDOMAIN); IPv6 peers
    ending in 20 only."""
    with PtrServer(servfail=[SERVFAIL_NET]) as server:
        for e in events:
            if "host_ip" in e["metadata"]:
                server.add(e["metadata"]["host_ip"], f"{e['metadata']['host_id']}.hosts.example.com", 300)
        for last in range(0, 256, 2):
            server.add(f"203.0.113.{last}", f"peer-{last}.example.net", 300)
        server.add("2001:db8::20", "peer-v6.example.net", 300)
        yield server


def peer_of(event: dict[str, Any]) -> str | None:
    """The destination the pipeline resolves, from the raw event's base64 payload."""
    return destination_of({**event, "args": orjson.loads(base64.b64decode(event["payload"]))})


def addresses_of(event: dict[str, Any]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = set()
    for candidate in (event["metadata"].get("host_ip"), peer_of(event)):
        try:
            found.add(ipaddress.ip_address(candidate or ""))
        except ValueError:
            pass  # absent, or a name
    return found


def expected_names(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """(rdns, dst_rdns) as the DNS server's records make them."""
    host_ip = event["metadata"].get("host_ip")
    rdns = f"{event['metadata']['host_id']}.hosts.example.com" if host_ip else None
    peer = peer_of(event)
    if peer is None or ipaddress.ip_address(peer) in ipaddress.ip_network(SERVFAIL_NET):
        return rdns, None
    address = ipaddress.ip_address(peer)
    if address.version == 6:
        return rdns, "peer-v6.example.net" if address == ipaddress.ip_address("2001:db8::20") else None
    last = int(peer.rsplit(".", 1)[1])
    return rdns, f"peer-{last}.example.net" if last % 2 == 0 else None


def worker_metric(pipeline: Pipeline, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{pipeline.ports['worker-enrich']}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_ptr_names_reach_every_sink(make_settings: Callable[..., Settings], start_pipeline: Callable[..., Pipeline],
                                    events: list[dict[str, Any]], dns_server: PtrServer) -> None:
    # A generous budget: this test is about where the names go; test_ptr_resolver holds the budget itself.
    settings = make_settings(RDNS_MODE="ptr", RDNS_NAMESERVERS=dns_server.nameserver, RDNS_TIMEOUT_MS=3000,
                             RDNS_BATCH_BUDGET_MS=10_000, MAX_BATCH_SIZE=50, BATCH_LINGER_MS=20)
    pipeline = start_pipeline(settings)
    asyncio.run(publish_all(settings, [orjson.dumps(e) for e in events]))

    def settled() -> bool:
        c = report.collect(settings)
        return set(c.totals.values()) == {len(events)} and not any(c.queued.values())

    wait_for(settled, timeout_s=90, describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    expected = {e["id"]: expected_names(e) for e in events}
    named_peers = sum(1 for _, dst in expected.values() if dst is not None)
    assert 20 < named_peers < len(events), "the sample has named peers, and events without one"

    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=settings.pg_db, user="postgres")
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, rdns, dst_rdns, metadata->>'enrichment_version' FROM {settings.pg_table}")
        rows = cur.fetchall()
    conn.close()
    assert {r[0]: (r[1], r[2]) for r in rows} == expected
    assert {r[3] for r in rows} == {ENRICHMENT_VERSION}

    published = {e["id"]: (e["rdns"], e["dst_rdns"]) for e, _ in asyncio.run(read_enriched(settings))}
    assert published == expected

    graph = FalkorDB(host="127.0.0.1", port=int(settings.neo4j_uri.rsplit(":", 1)[1])).select_graph(
        settings.graph_name)
    merged = graph.ro_query("MATCH (e:Event) RETURN e.id, e.rdns, e.dst_rdns").result_set
    assert {i: (r, d) for i, r, d in merged} == expected

    distinct = set().union(*map(addresses_of, events))
    assert dns_server.queries() == len(distinct), "one enrich process: each address asked once, then cached"
    assert worker_metric(pipeline, "etl_rdns_lookups_total", result="ok") > 0
    assert worker_metric(pipeline, "etl_rdns_lookups_total", result="nxdomain") > 0
    assert worker_metric(pipeline, "etl_rdns_lookups_total", result="servfail") == 1
    assert worker_metric(pipeline, "etl_rdns_cache_requests_total", result="hit") > 0

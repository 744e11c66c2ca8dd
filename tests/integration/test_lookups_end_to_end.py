"""The lookups through the whole pipeline, as production runs it: a feed directory (``INTEL_PATHS``), an asset
inventory (``ASSETS_PATH``) and GeoIP databases built on the spot, the real bridge and every pool between real NATS,
Redis, PostgreSQL and a graph server, FalkorDB and Neo4j in turn (``graph_env``). Events that match land in
TimescaleDB with ``intel_match`` and their matches, the others without; each row carries its assets and its
destination's place; the analyst's query finds exactly the hosts whose events matched; every event sent is stored
or dead-lettered."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest

from etl.config import Settings
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.sinks.graph.cypher import HOSTS_OF_INDICATOR_CYPHER
from tests.graphs import open_probe
from tests.integration.accounting import publish_all
from tests.support.mmdb import asn_record, city_record, write_mmdb
from tests.waiting import wait_for

EVIL_IP = "203.0.113.66"
EVIL_DOMAIN = "evil.example"
EVIL_HASH = "c0" * 32
CLEAN_PEER = "198.51.100.4"
# host_id -> (host_ip, its asset as the inventory says)
HOSTS = {
    "web-1": ("10.1.2.3", {"site": "lab", "owner": "research", "criticality": "low", "internal": True}),
    "web-2": ("10.2.0.4", {"site": "hq", "owner": "it", "criticality": "medium", "internal": True}),
    "db-1": ("10.1.9.9", {"site": "lab", "owner": "research", "criticality": "low", "internal": True}),
    "laptop-1": ("192.168.1.5", {"site": None, "owner": None, "criticality": None, "internal": True}),
}
EXTERNAL = {"site": None, "owner": None, "criticality": None, "internal": False}
GEO = {EVIL_IP: {"country": "NL", "asn": 64500, "organization": "Bad Hosting"},
       CLEAN_PEER: {"country": "US", "asn": 64501, "organization": "Good Cloud"}}
MALFORMED = [b"not json", b'{"id": "wrong-type", "type": 5, "source": "s", "timestamp": 1}', b"[1, 2]"]


def match(kind: str, value: str, source: str, severity: str, field: str) -> dict[str, Any]:
    return {"type": kind, "value": value, "source": source, "severity": severity, "field": field, "observed": value}


IP_HIT = match("ip", EVIL_IP, "feed-a", "high", "destination")
DOMAIN_HIT = match("domain", EVIL_DOMAIN, "feed-b", "medium", "payload")
HASH_HIT = match("sha256", EVIL_HASH, "feed-b", "critical", "metadata.binary_sha256")


def write_lookups(root: Path) -> dict[str, str]:
    """The four tables' files under ``root`` (two feeds in one directory, in two formats), as settings."""
    feeds = root / "feeds"
    feeds.mkdir()
    (feeds / "a.csv").write_text(f"type,value,source,severity\nip,{EVIL_IP},feed-a,high\n"
                                 "ip,192.0.2.1,feed-a,low\nthis line is malformed\n")
    (feeds / "b.jsonl").write_text("".join(orjson.dumps(i).decode() + "\n" for i in (
        {"type": "domain", "value": EVIL_DOMAIN, "source": "feed-b", "severity": "medium"},
        {"type": "sha256", "value": EVIL_HASH, "source": "feed-b", "severity": "critical"})))
    assets = root / "assets.csv"
    assets.write_text("cidr,site,owner,criticality\n10.0.0.0/8,hq,it,medium\n10.1.0.0/16,lab,research,low\n")
    city = write_mmdb(root / "city.mmdb", {f"{ip}/32": city_record(geo["country"]) for ip, geo in GEO.items()},
                      database_type="GeoLite2-City")
    asn = write_mmdb(root / "asn.mmdb", {f"{ip}/32": asn_record(geo["asn"], geo["organization"])
                                         for ip, geo in GEO.items()}, database_type="GeoLite2-ASN")
    return {"INTEL_PATHS": str(feeds), "ASSETS_PATH": str(assets), "GEOIP_CITY_PATH": str(city),
            "GEOIP_ASN_PATH": str(asn)}


def event(event_id: str, host: str, args: dict[str, Any], binary: str | None = None) -> dict[str, Any]:
    """An agent's event (visibility.v1: a single-base64 JSON payload) from ``host``."""
    metadata = {"host_id": host, "host_ip": HOSTS[host][0]}
    if binary is not None:
        metadata["binary_sha256"] = binary
    return {"id": event_id, "type": "connect", "source": "/usr/bin/curl", "timestamp": 1704110400000,
            "metadata": metadata, "payload": base64.b64encode(orjson.dumps(args)).decode()}


def corpus() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]], str | None]]:
    """Each event by id, with the matches it must carry and its destination."""
    out: dict[str, tuple[dict[str, Any], list[dict[str, Any]], str | None]] = {}
    for i in range(40):
        host = ("web-1", "web-2", "db-1", "laptop-1")[i % 4]
        if i % 10 == 0 and host == "web-1" or i % 10 == 2 and host == "db-1":
            out[f"ev-{i}"] = (event(f"ev-{i}", host, {"dst_ip": EVIL_IP, "dst_port": 443}), [IP_HIT], EVIL_IP)
        elif i == 15:  # laptop-1 runs a known-bad binary, to a peer of ours
            out[f"ev-{i}"] = (event(f"ev-{i}", host, {"dst_ip": "10.2.0.4"}, binary=EVIL_HASH), [HASH_HIT],
                              "10.2.0.4")
        elif i == 5:  # web-2 asks for a known-bad name
            out[f"ev-{i}"] = (event(f"ev-{i}", host, {"dst_ip": CLEAN_PEER, "query": EVIL_DOMAIN}), [DOMAIN_HIT],
                              CLEAN_PEER)
        elif i % 3 == 0:  # no destination
            out[f"ev-{i}"] = (event(f"ev-{i}", host, {"path": "/etc/hosts"}, binary="ab" * 32), [], None)
        else:
            out[f"ev-{i}"] = (event(f"ev-{i}", host, {"dst_ip": CLEAN_PEER, "dst_port": 53}), [], CLEAN_PEER)
    return out


@pytest.fixture
def settings(tmp_path: Path, make_settings: Callable[..., Settings], graph_env: dict[str, str]) -> Settings:
    return make_settings(**graph_env, **write_lookups(tmp_path), MAX_BATCH_SIZE=8, BATCH_LINGER_MS=20)


def settled(settings: Settings, valid: int, dead: int) -> Callable[[], bool]:
    def probe() -> bool:
        counts = report.collect(settings)
        return (counts.totals == {"stored": valid, "merged": valid, "published": valid}
                and counts.dead_lettered == {"enrich": dead} and not any(counts.queued.values()))

    return probe


def stored_rows(settings: Settings) -> dict[str, tuple[Any, ...]]:
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=settings.pg_db, user="postgres")
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, intel_match, intel, src_asset, dst_asset, dst_geo FROM {settings.pg_table}")
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()
    return rows


def expected_row(event: dict[str, Any], intel: list[dict[str, Any]], peer: str | None) -> tuple[Any, ...]:
    dst_asset = None if peer is None else HOSTS["web-2"][1] if peer == "10.2.0.4" else EXTERNAL
    dst_geo = GEO.get(peer) if peer is not None else None
    return bool(intel), intel, HOSTS[event["metadata"]["host_id"]][1], dst_asset, dst_geo


def graph_rows(settings: Settings, cypher: str, **params: Any) -> list[list[Any]]:
    probe = open_probe(settings)
    try:
        return probe.rows(cypher, **params)
    finally:
        probe.close()


def hosts_of(settings: Settings, kind: str, value: str) -> list[str]:
    return [row[0] for row in graph_rows(settings, HOSTS_OF_INDICATOR_CYPHER, type=kind, value=value)]


def test_matches_assets_and_places_reach_timescale_and_the_graph(settings: Settings,
                                                                 start_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = start_pipeline(settings)
    events = corpus()
    sent = [orjson.dumps(e) for e, _, _ in events.values()]
    asyncio.run(publish_all(settings, sent + MALFORMED))

    wait_for(settled(settings, len(events), len(MALFORMED)), timeout_s=90,
             describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    rows = stored_rows(settings)
    assert rows.keys() == events.keys(), "every event sent is stored or dead-lettered, none twice"
    wrong = {i: (rows[i], expected_row(*events[i])) for i in events if rows[i] != expected_row(*events[i])}
    assert not wrong, f"{len(wrong)} rows differ (found, wanted): {list(wrong.items())[:3]}"
    assert sum(matched for matched, *_ in rows.values()) == 6

    assert hosts_of(settings, "ip", EVIL_IP) == ["db-1", "web-1"]
    assert hosts_of(settings, "domain", EVIL_DOMAIN) == ["web-2"]
    assert hosts_of(settings, "sha256", EVIL_HASH) == ["laptop-1"]
    assert hosts_of(settings, "ip", "192.0.2.1") == []
    endpoints = {r[0]: tuple(r[1:]) for r in graph_rows(
        settings, "MATCH (ne:NetworkEndpoint) RETURN ne.endpoint_id, ne.asn, ne.country, ne.internal")}
    assert endpoints[f"{EVIL_IP}:443"] == (64500, "NL", False)
    assert endpoints[f"{CLEAN_PEER}:53"] == (64501, "US", False)
    assert {v for k, v in endpoints.items() if k.startswith("10.2.0.4")} == {(None, None, True)}, endpoints

"""The enriched event's lookup fields: ``intel``, ``src_asset``, ``dst_asset``, ``dst_geo`` and
``context.intel_match``, from real tables (an inventory, an indicator index, ``.mmdb`` files built on the spot)
through ``enrich_batch``, on events as the pipeline parses them."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from etl.lookups import context
from etl.lookups.assets import Asset, AssetInventory
from etl.lookups.feeds.values import indicator
from etl.lookups.geoip import GeoIp
from etl.lookups.indicators import IndicatorIndex
from etl.lookups.tables import EMPTY, LookupTables
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import Event, parse_event
from etl.rdns.strategies import OffResolver
from tests.support.mmdb import asn_record, city_record, write_mmdb

NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
HASH = "ab" * 32
UNLISTED_INTERNAL = {"site": None, "owner": None, "criticality": None, "internal": True}
UNLISTED_EXTERNAL = {"site": None, "owner": None, "criticality": None, "internal": False}


def event(metadata: dict[str, Any] | None = None, args: dict[str, Any] | None = None) -> Event:
    """An event as ``parse_event`` returns it, its args sent as base64 of JSON, as the agents send them."""
    raw: dict[str, Any] = {"id": "e-1", "timestamp": 1, "type": "net_connect", "metadata": metadata or {}}
    if args is not None:
        raw["payload"] = base64.b64encode(orjson.dumps(args)).decode()
    return parse_event(orjson.dumps(raw), max_bytes=1 << 20)


def enriched(ev: Event, tables: LookupTables = EMPTY) -> Event:
    return enrich_batch([ev], env="test", resolver=OffResolver(), now=NOW, tables=tables)[0]


@pytest.fixture
def inventory() -> AssetInventory:
    return AssetInventory.build([
        ("10.0.0.0/8", Asset("hq", "it", "medium", True)),
        ("10.20.0.0/16", Asset("lab", "research", "low", True)),
        ("10.20.30.0/24", Asset("lab", "research", "critical", True)),
        ("203.0.113.0/24", Asset("dmz", "web", "high", True)),
        ("2001:db8:10::/48", Asset("hq6", "it", "high", True)),
        ("2001:db8:10:20::/64", Asset("lab6", "research", None, True)),
    ])


@pytest.fixture
def geoip(tmp_path: Path) -> Iterator[GeoIp]:
    city = write_mmdb(tmp_path / "city.mmdb", {
        "198.51.100.0/24": city_record("NL"), "10.0.0.0/8": city_record("XX"), "2a00:1450::/32": city_record("IE"),
    }, database_type="GeoLite2-City")
    asn = write_mmdb(tmp_path / "asn.mmdb", {
        "198.51.100.0/24": asn_record(64500, "Example Transit"), "10.0.0.0/8": asn_record(64999, "Nobody"),
        "2a00:1450::/32": asn_record(15169, "Example Six"),
    }, database_type="GeoLite2-ASN")
    with GeoIp.open(city, asn) as opened:
        yield opened


@pytest.mark.parametrize(("host", "site", "criticality"), [
    ("10.20.30.40", "lab", "critical"), ("10.20.31.1", "lab", "low"), ("10.99.0.1", "hq", "medium"),
    ("2001:db8:10:20::5", "lab6", None), ("2001:db8:10:21::5", "hq6", "high"),
])
def test_the_most_specific_prefix_names_the_hosts_asset(inventory: AssetInventory, host: str, site: str,
                                                         criticality: str | None) -> None:
    out = enriched(event({"host_ip": host}), LookupTables(assets=inventory))
    assert out["src_asset"]["site"] == site and out["src_asset"]["criticality"] == criticality
    assert out["src_asset"]["internal"] is True


def test_the_destination_has_its_own_asset(inventory: AssetInventory) -> None:
    out = enriched(event({"host_ip": "10.20.30.40"}, {"dst_ip": "203.0.113.9"}), LookupTables(assets=inventory))
    assert out["dst_asset"] == {"site": "dmz", "owner": "web", "criticality": "high", "internal": True}
    out = enriched(event({"host_ip": "10.20.30.40"}, {"remote_ip": "8.8.8.8"}), LookupTables(assets=inventory))
    assert out["dst_asset"] == UNLISTED_EXTERNAL


@pytest.mark.parametrize(("address", "internal"), [
    ("10.1.2.3", True), ("192.168.0.1", True), ("100.64.1.1", True), ("127.0.0.1", True), ("::1", True),
    ("fe80::1%eth0", True), ("fd00::1", True), ("8.8.8.8", False), ("2a00:1450::1", False),
    ("::ffff:192.168.0.1", True), ("::ffff:8.8.8.8", False),
])
def test_without_an_inventory_an_address_is_still_internal_or_external(address: str, internal: bool) -> None:
    out = enriched(event({"host_ip": address}, {"dst_ip": address}))
    expected = UNLISTED_INTERNAL if internal else UNLISTED_EXTERNAL
    assert (out["src_asset"], out["dst_asset"]) == (expected, expected)


@pytest.mark.parametrize("text", ["web01.example.com", "10.1.2.300", "", "   ", "1" * 80])
def test_a_host_or_destination_that_is_no_address_has_no_asset(text: str) -> None:
    out = enriched(event({"host_ip": text}, {"dst_ip": text}))
    assert (out["src_asset"], out["dst_asset"], out["dst_geo"]) == (None, None, None)


def test_absent_fields_are_null_or_empty_and_always_present() -> None:
    out = enriched(event())
    assert (out["intel"], out["src_asset"], out["dst_asset"], out["dst_geo"]) == ([], None, None, None)
    assert out["context"]["intel_match"] is False


def test_geo_is_for_an_external_destination_only(geoip: GeoIp) -> None:
    tables = LookupTables(geoip=geoip)
    out = enriched(event({"host_ip": "198.51.100.7"}, {"dst_ip": "198.51.100.8"}), tables)
    assert out["dst_geo"] == {"country": "NL", "asn": 64500, "organization": "Example Transit"}
    out = enriched(event(args={"dst_ip": "2a00:1450::7"}), tables)
    assert out["dst_geo"] == {"country": "IE", "asn": 15169, "organization": "Example Six"}
    # The database knows 10.0.0.0/8 too, but a private address is nowhere on the internet.
    assert enriched(event(args={"dst_ip": "10.1.1.1"}), tables)["dst_geo"] is None


@pytest.mark.parametrize("address", ["224.0.0.251", "239.255.255.250", "255.255.255.255", "0.0.0.0", "ff02::fb",
                                     "::"])
def test_multicast_broadcast_and_unspecified_destinations_are_internal_without_geo(tmp_path: Path,
                                                                                  address: str) -> None:
    """Even a database with records for them (a catch-all, or a vendor's guess) is not asked."""
    wide = {"0.0.0.0/1": "AA", "128.0.0.0/1": "AA", "::/1": "AA", "8000::/1": "AA"}
    city = write_mmdb(tmp_path / "city.mmdb", {net: city_record(c) for net, c in wide.items()},
                      database_type="GeoLite2-City")
    with GeoIp.open(city) as geoip:
        out = enriched(event(args={"dst_ip": address}), LookupTables(geoip=geoip))
        assert (out["dst_asset"], out["dst_geo"]) == (UNLISTED_INTERNAL, None)
        assert enriched(event(args={"dst_ip": "8.8.8.8"}), LookupTables(geoip=geoip))["dst_geo"] is not None


def test_geo_is_null_where_the_database_knows_nothing_or_none_is_configured(geoip: GeoIp) -> None:
    assert enriched(event(args={"dst_ip": "8.8.8.8"}), LookupTables(geoip=geoip))["dst_geo"] is None
    assert enriched(event(args={"dst_ip": "198.51.100.8"}))["dst_geo"] is None


def test_an_inventory_listing_a_public_range_keeps_geo_off_it(inventory: AssetInventory, geoip: GeoIp) -> None:
    tables = LookupTables(assets=inventory, geoip=geoip)
    assert enriched(event(args={"dst_ip": "203.0.113.9"}), tables)["dst_geo"] is None
    assert enriched(event(args={"dst_ip": "198.51.100.9"}), tables)["dst_geo"]["country"] == "NL"


def intel_tables(*values: str) -> LookupTables:
    return LookupTables(indicators=IndicatorIndex.build(indicator(v, "feed-a", "high") for v in values))


@pytest.mark.parametrize(("ev", "match"), [
    (event({"host_ip": "192.0.2.1"}),
     {"type": "ip", "value": "192.0.2.1", "field": "metadata.host_ip", "observed": "192.0.2.1"}),
    (event(args={"dst_ip": "198.51.100.77"}),
     {"type": "cidr", "value": "198.51.100.0/24", "field": "destination", "observed": "198.51.100.77"}),
    (event(args={"query": "www.evil.example", "dst_ip": "10.0.0.53"}),
     {"type": "domain", "value": "evil.example", "field": "payload", "observed": "www.evil.example"}),
    (event({"binary_sha256": HASH.upper()}),
     {"type": "sha256", "value": HASH, "field": "metadata.binary_sha256", "observed": HASH}),
])
def test_each_kind_of_indicator_is_reported(ev: Event, match: dict[str, str]) -> None:
    out = enriched(ev, intel_tables("192.0.2.1", "198.51.100.0/24", "evil.example", HASH))
    assert out["intel"] == [{**match, "source": "feed-a", "severity": "high"}]
    assert out["context"]["intel_match"] is True
    assert orjson.loads(orjson.dumps(out["intel"])) == out["intel"], "plain JSON values"


def test_an_event_carries_at_most_max_intel_matches_and_says_how_many_it_left_out() -> None:
    # 40 feeds list the destination's network, and one its binary: 41 matches, the binary's last found.
    feeds = [indicator("203.0.113.0/24", f"feed-{n:02}", "high") for n in range(40)]
    tables = LookupTables(indicators=IndicatorIndex.build([*feeds, indicator(HASH, "vt", "critical")]))
    ev = event({"binary_sha256": HASH, "intel_omitted": 99}, {"dst_ip": "203.0.113.5"})
    out = enriched(ev, tables)
    assert len(out["intel"]) == context.MAX_INTEL_MATCHES == 32
    assert [m["source"] for m in out["intel"]] == [f"feed-{n:02}" for n in range(32)]
    assert out["metadata"]["intel_omitted"] == 41 - 32
    assert len(orjson.dumps(out)) < 16_384, "bounded by the cap, not by the feeds"
    # Within the cap nothing is left out, and an agent's own key of that name is not taken for enrichment's.
    few = enriched(event({"intel_omitted": 99}, {"dst_ip": "203.0.113.5"}),
                   LookupTables(indicators=IndicatorIndex.build(feeds[:3])))
    assert len(few["intel"]) == 3 and "intel_omitted" not in few["metadata"]


def test_an_event_matching_no_indicator_has_an_empty_list() -> None:
    out = enriched(event({"host_ip": "192.0.2.2", "binary_sha256": "cd" * 32}, {"query": "good.example"}),
                   intel_tables("192.0.2.1", "evil.example", HASH))
    assert out["intel"] == [] and out["context"]["intel_match"] is False


def test_every_event_of_a_batch_gets_its_own_fields(inventory: AssetInventory) -> None:
    events = [event({"host_ip": "10.20.30.40"}, {"dst_ip": "192.0.2.1"}) for _ in range(3)]
    events.append(event({"host_ip": "10.99.0.1"}))
    out = enrich_batch(events, env="t", resolver=OffResolver(), now=NOW,
                       tables=LookupTables(assets=inventory, indicators=intel_tables("192.0.2.1").indicators))
    assert [e["src_asset"]["site"] for e in out] == ["lab", "lab", "lab", "hq"]
    assert [len(e["intel"]) for e in out] == [1, 1, 1, 0]
    assert out[0]["src_asset"] is not out[1]["src_asset"], "no dict shared between events"
    assert out[0]["intel"] is not out[1]["intel"]


def test_what_a_snapshot_remembers_stays_true_to_each_payload_and_address() -> None:
    tables = intel_tables("evil.example", "192.0.2.1")
    events = [event({"host_ip": "192.0.2.1"}, {"query": "www.evil.example"}),
              event({"host_ip": "192.0.2.2"}, {"query": "www.good.example"}),
              event({"host_ip": "192.0.2.1"}, {"query": "www.evil.example"}),
              event({"host_ip": "192.0.2.2"}, {"query": "www.good.example"})]
    for _ in range(2):  # the second time every answer comes from the memo
        out = enrich_batch(events, env="t", resolver=OffResolver(), now=NOW, tables=tables)
        assert [[(m["type"], m["observed"]) for m in e["intel"]] for e in out] == [
            [("ip", "192.0.2.1"), ("domain", "www.evil.example")], [],
            [("ip", "192.0.2.1"), ("domain", "www.evil.example")], []]
    out[0]["intel"][0]["value"] = "changed by a consumer"
    assert enriched(events[2], tables)["intel"][0]["value"] == "192.0.2.1", "the memo hands out copies"


@pytest.mark.parametrize("ev", [
    event(args={"query": "www.evil.example", "pad": "x" * 1000}),  # too long to remember
    parse_event(orjson.dumps({"id": "o", "timestamp": 1, "metadata": {}, "payload": {"query": "www.evil.example"}}),
                max_bytes=1 << 20),  # an object payload: no raw text to remember it by
])
def test_a_payload_not_remembered_is_scanned_every_time(ev: Event) -> None:
    tables = intel_tables("evil.example")
    assert [m["value"] for m in enriched(ev, tables)["intel"]] == ["evil.example"]
    assert [m["value"] for m in enriched(ev, tables)["intel"]] == ["evil.example"]


def test_a_new_snapshot_starts_from_nothing_remembered() -> None:
    ev = event({"host_ip": "192.0.2.1"}, {"query": "www.evil.example"})
    assert len(enriched(ev, intel_tables("192.0.2.1"))["intel"]) == 1
    assert [m["type"] for m in enriched(ev, intel_tables("evil.example"))["intel"]] == ["domain"]


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "MAX_MEMO_ENTRIES", 8)
    tables = intel_tables("192.0.2.1")
    events = [event({"host_ip": f"10.0.0.{i}"}, {"query": f"www.x{i}.example"}) for i in range(50)]
    sizes = [len(tables.memo) for e in events if enriched(e, tables)]
    assert max(sizes) <= 8 and len(set(sizes)) > 1
    assert enriched(event({"host_ip": "192.0.2.1"}), tables)["intel"][0]["value"] == "192.0.2.1"


def test_an_agents_long_text_is_not_kept_where_an_address_would_be() -> None:
    tables = intel_tables("192.0.2.1")
    huge = "1" * 16_000  # the longest a metadata string may be is about this
    out = enriched(event({"host_ip": huge}, {"dst_ip": huge + "2"}), tables)
    assert (out["src_asset"], out["dst_asset"], out["intel"]) == (None, None, [])
    assert not [key for key in tables.memo if len(key[1]) > 100], "the snapshot keeps no such text"
    assert tables.indicators is not None
    assert tables.indicators.match(event({"host_ip": huge})) == []
    assert not [text for text in tables.indicators._address_cache if len(text) > 100], "nor the index's cache"


def test_a_snapshot_made_from_another_remembers_nothing_of_it() -> None:
    ev = event({"host_ip": "192.0.2.1"})
    old = intel_tables("192.0.2.1")
    assert len(enriched(ev, old)["intel"]) == 1
    new = dataclasses.replace(old, indicators=intel_tables("198.51.100.1").indicators)
    assert new.memo is not old.memo and enriched(ev, new)["intel"] == []

"""The indicator index against events as the pipeline parses them: which candidates match, and what each match
reports."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from etl.lookups import indicators
from etl.lookups.candidates import MAX_DOMAINS, MAX_SCAN_STRINGS, Field, domains
from etl.lookups.feeds import read_feeds
from etl.lookups.feeds.values import Indicator, IndicatorType, indicator
from etl.lookups.indicators import IndicatorIndex, Match
from etl.pipeline.events import Event, parse_event

HASH = "0f" * 32
T = IndicatorType


def event(metadata: dict[str, Any] | None = None, args: dict[str, Any] | None = None,
          payload: bytes | None = None) -> Event:
    """An event as ``parse_event`` returns it, its args sent as base64 of JSON, as the agents send them."""
    raw: dict[str, Any] = {"id": "e-1", "timestamp": 1, "type": "net_connect", "metadata": metadata or {}}
    if args is not None:
        raw["payload"] = base64.b64encode(orjson.dumps(args)).decode()
    elif payload is not None:
        raw["payload"] = base64.b64encode(payload).decode()
    return parse_event(orjson.dumps(raw), max_bytes=1 << 20)


def index(*values: str, source: str = "feed", severity: str = "high") -> IndicatorIndex:
    return IndicatorIndex.build(indicator(v, source, severity) for v in values)


def hits(matches: list[Match]) -> list[tuple[str, str, str, str]]:
    return [(m.type.value, m.value, m.field.value, m.observed) for m in matches]


def test_host_and_destination_addresses_match_exactly_in_either_family() -> None:
    idx = index("192.0.2.1", "2001:db8::1", "203.0.113.9")
    ev = event({"host_ip": "192.0.2.1"}, {"dst_ip": "2001:DB8:0::1"})
    assert hits(idx.match(ev)) == [("ip", "192.0.2.1", "metadata.host_ip", "192.0.2.1"),
                                   ("ip", "2001:db8::1", "destination", "2001:DB8:0::1")]
    # remote_ip when there is no dst_ip; an IPv4-mapped IPv6 peer is its IPv4 address; ::1 is not 0.0.0.1
    assert hits(idx.match(event(args={"remote_ip": "::ffff:203.0.113.9"}))) == [
        ("ip", "203.0.113.9", "destination", "::ffff:203.0.113.9")]
    assert index("0.0.0.1").match(event({"host_ip": "::1"})) == []


def test_an_address_matches_every_cidr_that_contains_it_most_specific_first() -> None:
    idx = index("10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "2001:db8::/32")
    assert hits(idx.match(event({"host_ip": "10.1.2.3"}))) == [
        ("cidr", "10.1.0.0/16", "metadata.host_ip", "10.1.2.3"), ("cidr", "10.0.0.0/8", "metadata.host_ip", "10.1.2.3")]
    assert hits(idx.match(event(args={"dst_ip": "2001:db8:ff::7"}))) == [
        ("cidr", "2001:db8::/32", "destination", "2001:db8:ff::7")]
    assert idx.match(event({"host_ip": "11.0.0.1"}, {"dst_ip": "2001:db9::1"})) == []


def test_one_network_in_ipv4_and_ipv4_mapped_form_keeps_every_feed_that_lists_it() -> None:
    destination = event(args={"dst_ip": "10.1.2.3"})
    either_text = IndicatorIndex.build([indicator("10.1.0.0/16", "feedA", "high"),
                                        indicator("::ffff:10.1.0.0/112", "feedB", "low")])
    raw_mapped = IndicatorIndex.build([Indicator(T.CIDR, "10.1.0.0/16", "feedA", "high"),
                                       Indicator(T.CIDR, "::ffff:a01:0/112", "feedB", "low")])
    for idx in (either_text, raw_mapped):
        assert [(m.value, m.source, m.severity) for m in idx.match(destination)] == [
            ("10.1.0.0/16", "feedA", "high"), ("10.1.0.0/16", "feedB", "low")]
        assert idx.counts()[T.CIDR] == 1


def test_a_payload_domain_matches_itself_and_its_listed_parents_never_a_lookalike() -> None:
    idx = index("evil.com", "b.evil.com", "other.example")
    ev = event(args={"query": "see A.B.Evil.COM now", "argv": ["curl", "https://notevil.com/x", "ñevil.com"]})
    assert hits(idx.match(ev)) == [("domain", "b.evil.com", "payload", "a.b.evil.com"),
                                   ("domain", "evil.com", "payload", "a.b.evil.com")]
    # Parents stop at two labels: a bare top-level domain, which no feed can list, is never looked up.
    tld = IndicatorIndex.build([Indicator(T.DOMAIN, "com", "feed", "high")])
    assert tld.match(event(args={"q": "evil.com"})) == []


def test_the_binary_hash_matches_in_any_case() -> None:
    idx = index(HASH.upper(), source="vt", severity="critical")
    (found,) = idx.match(event({"binary_sha256": HASH.upper()}))
    assert found == Match(T.SHA256, HASH, "vt", "critical", Field.BINARY, HASH)
    assert idx.match(event({"binary_sha256": "0f" * 31})) == []
    assert idx.match(event({"binary_sha256": "zz" * 32})) == []


def test_an_event_without_candidates_or_with_bad_ones_matches_nothing() -> None:
    idx = index("192.0.2.1", "10.0.0.0/8", "evil.com", HASH)
    assert idx.match(event()) == []
    assert idx.match(event({"host_ip": "not an address", "binary_sha256": ""}, {"dst_ip": "  "})) == []


def test_one_value_in_two_feeds_is_reported_once_per_source_and_severity(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("type,value,source,severity\nip,192.0.2.1,acme,high\nip,192.0.2.1,acme,high\n"
                                    "domain,evil.com,acme,low\n")
    (tmp_path / "b.txt").write_text("192.0.2.1\nEVIL.COM\n")
    (tmp_path / "c.jsonl").write_text('{"value": "192.0.2.1", "source": "acme", "severity": "HIGH"}\n')
    indicators: list[Indicator] = list(read_feeds([tmp_path], []))
    idx = IndicatorIndex.build(indicators)
    assert idx.counts() == {T.IP: 1, T.CIDR: 0, T.DOMAIN: 1, T.SHA256: 0}
    found = idx.match(event({"host_ip": "192.0.2.1"}, {"q": "evil.com"}))
    assert [(m.value, m.source, m.severity) for m in found] == [
        ("192.0.2.1", "acme", "high"), ("192.0.2.1", "b.txt", "unknown"),
        ("evil.com", "acme", "low"), ("evil.com", "b.txt", "unknown")]


def test_domains_are_read_from_opaque_payload_bytes_too() -> None:
    ev = event(payload=b"\x00\x01GET http://Evil.COM/x HTTP/1.1")
    assert "args" not in ev
    assert hits(index("evil.com").match(ev)) == [("domain", "evil.com", "payload", "evil.com")]


def test_the_domains_scanned_are_bounded() -> None:
    names = [f"host{i}.example.com" for i in range(MAX_DOMAINS + 5)]
    ev = event(args={"names": names + ["evil.com"]})
    assert domains(ev) == names[:MAX_DOMAINS]
    assert index("evil.com").match(ev) == []
    assert domains(event(args={"path": "/etc/passwd", "n": "1.2.3.4", "f": "report.v2.pdf-"})) == []
    # Only the first MAX_SCAN_STRINGS strings are looked at, nested ones included.
    def args(strings: int) -> dict[str, Any]:
        return {**{f"k{i}": "x" for i in range(strings)}, "nested": {"q": ["evil.com"]}}

    assert domains(event(args=args(MAX_SCAN_STRINGS))) == []
    assert domains(event(args=args(MAX_SCAN_STRINGS - 1))) == ["evil.com"]


def test_address_lookups_are_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indicators, "MAX_CACHED_ADDRESSES", 2)
    idx = index("192.0.2.1", "10.0.0.0/8")
    for host in ("192.0.2.1", "10.0.0.1", "192.0.2.1", "11.0.0.1", "10.0.0.1"):
        assert [m.value for m in idx.match(event({"host_ip": host}))] == {
            "192.0.2.1": ["192.0.2.1"], "10.0.0.1": ["10.0.0.0/8"], "11.0.0.1": []}[host]
    assert len(idx._address_cache) == 2  # emptied once, when the third address came

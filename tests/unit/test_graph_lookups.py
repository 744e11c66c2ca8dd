"""Pure part of the graph's lookup fields: an event's intel as Indicator matches, its peer's ASN, country and
internal flag, and each indicator's newest match in a batch."""

from __future__ import annotations

from typing import Any

import pytest

from etl.errors import SinkDataError
from etl.pipeline.limits import GRAPH_KEY_BYTES
from etl.sinks.graph.lookups import MATCH_FIELDS, NEWEST, endpoint_lookups, mark_newest, mark_peer_newest, matches
from etl.sinks.graph.rows import build_row, build_rows


def hit(value: str = "203.0.113.9", **fields: Any) -> dict[str, Any]:
    return {"type": "ip", "value": value, "source": "feed-a", "severity": "high", "field": "destination",
            "observed": value, **fields}


def event(event_id: str = "e1", timestamp: int = 1000, **fields: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "connect", "source": "/usr/bin/curl", "timestamp": timestamp,
            "metadata": {"host_id": "h1"}, "args": {"dst_ip": "203.0.113.9", "dst_port": 443}, **fields}


def test_each_match_is_a_list_keyed_by_type_value_and_source() -> None:
    [match] = matches("e1", [hit()])
    assert dict(zip(MATCH_FIELDS, match, strict=True)) == {
        "key": "ip:203.0.113.9:feed-a", "type": "ip", "value": "203.0.113.9", "source": "feed-a",
        "severity": "high", "field": "destination", "observed": "203.0.113.9", "newest": False}
    assert matches("e1", None) == [] == matches("e1", [])


def test_an_indicator_reported_twice_by_an_event_is_one_match_the_first() -> None:
    found = matches("e1", [hit(field="metadata.host_ip"), hit(severity="low"), hit(source="feed-b")])
    assert [(m[0], m[4], m[5]) for m in found] == [("ip:203.0.113.9:feed-a", "high", "metadata.host_ip"),
                                                   ("ip:203.0.113.9:feed-b", "high", "destination")]


def test_key_parts_are_escaped_and_a_long_domain_is_kept() -> None:
    [v6] = matches("e1", [hit("2001:db8::1")])
    assert v6[0] == "ip:2001%3Adb8%3A%3A1:feed-a"
    domain = ("a" * 63 + ".") * 3 + "b" * 59  # 251 characters, within a domain's 253
    assert matches("e1", [hit(domain, type="domain")])[0][2] == domain


@pytest.mark.parametrize("intel", [
    "ip:1.2.3.4", [["ip", "1.2.3.4"]], [hit(value=None)], [hit(source="")], [hit(severity={"x": 1})],
    [hit(observed="nul\x00")], [hit(source="s" * (GRAPH_KEY_BYTES - 10))],
])
def test_intel_no_graph_can_store_is_a_data_error(intel: Any) -> None:
    with pytest.raises(SinkDataError, match="e1"):
        matches("e1", intel)


def test_the_peer_learns_asn_country_and_internal_when_the_event_says() -> None:
    geo = {"country": "NL", "asn": 64500, "organization": "Example Net"}
    asset = {"site": None, "owner": None, "criticality": None, "internal": False}
    assert endpoint_lookups("e1", {"dst_geo": geo, "dst_asset": asset}) == {
        "dst_asn": 64500, "dst_country": "NL", "dst_internal": False}
    assert endpoint_lookups("e1", {}) == {"dst_asn": None, "dst_country": None, "dst_internal": None}
    with pytest.raises(SinkDataError, match="dst_geo"):
        endpoint_lookups("e1", {"dst_geo": ["NL"]})
    with pytest.raises(SinkDataError, match="asn"):
        endpoint_lookups("e1", {"dst_geo": {"asn": 2**70}})


def test_rows_carry_the_lookups_and_an_event_without_a_peer_carries_none() -> None:
    row = build_row(event(intel=[hit()], dst_geo={"country": "NL", "asn": 64500, "organization": None}))
    assert (row["intel"][0][0], row["dst_asn"], row["dst_country"], row["dst_internal"]) == (
        "ip:203.0.113.9:feed-a", 64500, "NL", None)
    bare = build_row({**event(dst_geo={"country": "NL", "asn": 1, "organization": None}), "args": None})
    assert (bare["endpoint_id"], bare["dst_asn"], bare["dst_country"]) == (None, None, None)
    older = build_row(event())  # enriched before the lookups
    assert (older["intel"], older["dst_asn"], older["dst_internal"]) == ([], None, None)


def test_each_indicators_newest_match_in_a_batch_is_marked_later_row_on_equal_times() -> None:
    rows = build_rows([event("a", 300, intel=[hit()]), event("b", 500, intel=[hit(), hit("198.51.100.1")]),
                       event("c", 100, intel=[hit()]), event("d", 500, intel=[hit(source="feed-b")]),
                       event("e", 500, intel=[hit(source="feed-b")])])
    newest = {(row["id"], match[0]) for row in rows for match in row["intel"] if match[NEWEST]}
    assert newest == {("b", "ip:203.0.113.9:feed-a"), ("b", "ip:198.51.100.1:feed-a"),
                      ("e", "ip:203.0.113.9:feed-b")}
    mark_newest(rows)  # idempotent: a batch written again (created, then merged) marks the same
    assert {(row["id"], m[0]) for row in rows for m in row["intel"] if m[NEWEST]} == newest


def test_each_endpoints_newest_row_that_says_something_of_its_peer_is_marked() -> None:
    asset = {"site": None, "owner": None, "criticality": None, "internal": False}
    other = {"dst_ip": "198.51.100.7", "dst_port": 443}
    rows = build_rows([event("a", 300, dst_asset=asset), event("b", 500, dst_asset=asset),
                       event("c", 100, dst_asset=asset),
                       event("d", 900),  # enriched before the lookups: says nothing, newest or not
                       {**event("e", 700, dst_asset=asset), "args": other},
                       {**event("f", 700, dst_asset=asset), "args": other},
                       {**event("g", 800), "args": None}])
    assert [row["id"] for row in rows if row["dst_newest"]] == ["b", "f"]
    mark_peer_newest(rows)  # idempotent, as mark_newest
    assert [row["id"] for row in rows if row["dst_newest"]] == ["b", "f"]

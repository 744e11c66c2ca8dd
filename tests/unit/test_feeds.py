"""Indicator feeds read from real files in each format: what they yield, what they skip and count, what is fatal."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from etl.errors import LookupFileError, SinkDataError
from etl.lookups.feeds import FeedReport, load_feed, read_feeds
from etl.lookups.feeds.values import DEFAULT_SEVERITY, BadValue, Indicator, IndicatorType, indicator
from etl.lookups.sources import load_intel
from etl.pipeline.limits import MAX_DOMAIN_CHARS, MAX_INDICATOR_SEVERITY_CHARS, MAX_INDICATOR_SOURCE_CHARS
from etl.sinks.graph.lookups import matches

HASH = "AB" * 32
T = IndicatorType


def triples(indicators: list[Indicator]) -> list[tuple[str, str, str, str]]:
    return [(i.type.value, i.value, i.source, i.severity) for i in indicators]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "kind", "canonical"), [
    ("192.0.2.1", T.IP, "192.0.2.1"),
    ("::FFFF:192.0.2.1", T.IP, "192.0.2.1"),
    ("2001:DB8:0:0::1", T.IP, "2001:db8::1"),
    ("198.51.100.0/24", T.CIDR, "198.51.100.0/24"),
    ("2001:DB8::/32", T.CIDR, "2001:db8::/32"),
    (" Evil.Example.COM. ", T.DOMAIN, "evil.example.com"),
    ("bücher.example", T.DOMAIN, "xn--bcher-kva.example"),
    (HASH, T.SHA256, HASH.lower()),
])
def test_a_value_s_type_is_inferred_and_its_form_made_canonical(text: str, kind: IndicatorType, canonical: str) -> None:
    found = indicator(text, "feed")
    assert (found.type, found.value, found.severity) == (kind, canonical, DEFAULT_SEVERITY)


@pytest.mark.parametrize(("text", "declared"), [
    ("localhost", ""),  # one label: not a domain an indicator can name
    ("evil..com", ""),
    ("10.0.0.1/8", ""),  # host bits set: a typo would widen the network
    ("300.1.1.1/8", ""),
    ("192.0.2.1", "domain"),  # the declared type disagrees with the value
    ("evil.com", "url"),
    ("", ""),
])
def test_a_bad_value_is_refused(text: str, declared: str) -> None:
    with pytest.raises(BadValue):
        indicator(text, "feed", declared=declared)


def test_a_plain_list_infers_types_ignores_comments_and_counts_bad_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "blocklist.txt", f"# a comment\n192.0.2.1\n\nEVIL.com.  # trailing\nnot a value\n"
                                             f"{HASH}\n10.0.0.0/8\n999.1.2.3\n")
    indicators, report = load_feed(path)
    assert triples(indicators) == [
        ("ip", "192.0.2.1", "blocklist.txt", "unknown"), ("domain", "evil.com", "blocklist.txt", "unknown"),
        ("sha256", HASH.lower(), "blocklist.txt", "unknown"), ("cidr", "10.0.0.0/8", "blocklist.txt", "unknown")]
    assert (report.skipped, report.bad_lines) == (2, [5, 8])


def test_csv_reads_its_columns_in_any_order_and_counts_bad_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "intel.csv", "severity,value,type,source\n"
                                         "HIGH,192.0.2.1,ip,acme\n"
                                         "low,Evil.COM,,\n"  # type inferred, source the file's name
                                         "high,192.0.2.0/24,ip,acme\n"  # declared ip, is a CIDR
                                         "high,one,two\n"  # a column short
                                         "\n"
                                         "medium,2001:db8::/32,cidr,acme\n")
    indicators, report = load_feed(path)
    assert triples(indicators) == [("ip", "192.0.2.1", "acme", "high"),
                                          ("domain", "evil.com", "intel.csv", "low"),
                                          ("cidr", "2001:db8::/32", "acme", "medium")]
    assert (report.skipped, report.bad_lines) == (2, [4, 5])


def test_json_lines_read_objects_and_count_lines_that_are_not_one(tmp_path: Path) -> None:
    lines = [orjson.dumps({"type": "sha256", "value": HASH, "source": "vt", "severity": "critical"}).decode(),
             "[1, 2]", "{not json", orjson.dumps({"value": 5}).decode(),
             orjson.dumps({"value": "bad.example.org", "source": "x"}).decode()]
    indicators, report = load_feed(write(tmp_path / "intel.jsonl", "\n".join(lines) + "\n"))
    assert triples(indicators) == [("sha256", HASH.lower(), "vt", "critical"),
                                          ("domain", "bad.example.org", "x", "unknown")]
    assert (report.skipped, report.bad_lines) == (3, [2, 3, 4])


def test_a_source_or_severity_the_sinks_cannot_store_makes_a_malformed_line(tmp_path: Path) -> None:
    """Over its bound, a source would make the Indicator's graph key too long, and the graph would refuse every
    event that matched it; a NUL no graph property or JSONB text holds. Such a line is skipped, with its number."""
    source, severity = "s" * MAX_INDICATOR_SOURCE_CHARS, "h" * MAX_INDICATOR_SEVERITY_CHARS
    long_source, long_severity = source + "s", severity + "h"
    path = write(tmp_path / "intel.csv", "value,source,severity\n"
                                         f"192.0.2.1,{long_source},high\n"
                                         f"192.0.2.2,acme,{long_severity}\n"
                                         "192.0.2.3,ac\x00me,high\n"
                                         "192.0.2.4,acme,hi\x00gh\n"
                                         f"192.0.2.5,{source},{severity}\n")  # at the bounds
    indicators, report = load_feed(path)
    assert [i.value for i in indicators] == ["192.0.2.5"]
    assert (report.skipped, report.bad_lines) == (4, [2, 3, 4, 5])
    lines = [orjson.dumps({"value": "evil.example", "source": long_source}).decode(),
             orjson.dumps({"value": "evil.example", "severity": long_severity}).decode()]
    indicators, report = load_feed(write(tmp_path / "intel.jsonl", "\n".join(lines) + "\n"))
    assert (indicators, report.skipped, report.bad_lines) == ([], 2, [1, 2])


def test_the_longest_source_allowed_keys_an_indicator_within_the_graph_s_bound() -> None:
    """The bound is the graph key's, for the longest value (a domain) and a source of 4-byte characters: at it the
    graph takes the match, one character past it the graph would refuse the event."""
    longest_domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57, "com"])
    assert len(longest_domain) == MAX_DOMAIN_CHARS
    at_bound = indicator(longest_domain, "\U0001f600" * MAX_INDICATOR_SOURCE_CHARS)

    def entry(source: str) -> list[dict[str, object]]:
        return [{"type": "domain", "value": at_bound.value, "source": source, "severity": "high",
                 "field": "payload", "observed": at_bound.value}]

    assert matches("e1", entry(at_bound.source))
    with pytest.raises(SinkDataError, match="key"):
        matches("e1", entry(at_bound.source + "\U0001f600"))
    with pytest.raises(BadValue, match="source"):
        indicator(longest_domain, at_bound.source + "\U0001f600")


def stix_indicator(pattern: str, **extra: object) -> dict[str, object]:
    return {"type": "indicator", "spec_version": "2.1", "id": "indicator--x", "pattern": pattern,
            "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z", **extra}


def test_a_stix_bundle_yields_each_supported_comparison_and_counts_the_rest(tmp_path: Path) -> None:
    objects = [
        stix_indicator("[ipv4-addr:value = '198.51.100.0/24']"),
        stix_indicator("[ipv6-addr:value = '2001:DB8::/32' OR ipv6-addr:value = '2001:db8::1']"),
        stix_indicator("[domain-name:value = 'Evil.Example.COM'] OR [file:hashes.'SHA-256' = '" + HASH + "']"),
        stix_indicator("[ipv4-addr:value ISSUBSET '203.0.113.0/24']"),
        {"type": "identity", "id": "identity--y", "name": "not an indicator"},
        stix_indicator("[url:value = 'http://evil.example.com/']"),  # another object type: unsupported
        stix_indicator("[ipv4-addr:value = '192.0.2.9' AND domain-name:value = 'x.example']"),  # AND: unsupported
        stix_indicator("[ipv4-addr:value = '192.0.2.9'] FOLLOWEDBY [ipv4-addr:value = '192.0.2.8']"),
        stix_indicator("[domain-name:value LIKE '%.example']"),  # operator: unsupported
        stix_indicator("[ipv4-addr:value = '192.0.2.10'", ),  # does not parse: malformed
        stix_indicator("[ipv4-addr:value = '2001:db8::1']"),  # the wrong family: malformed
        stix_indicator("[ipv4-addr:value = '192.0.2.11']", revoked=True),  # revoked: not an indicator any more
        {"type": "indicator", "id": "indicator--z"},  # no pattern: malformed
    ]
    path = write(tmp_path / "bundle.json", orjson.dumps({"type": "bundle", "id": "bundle--1", "objects": objects})
                 .decode())
    indicators, report = load_feed(path)
    assert triples(indicators) == [
        ("cidr", "198.51.100.0/24", "bundle.json", "unknown"), ("cidr", "2001:db8::/32", "bundle.json", "unknown"),
        ("ip", "2001:db8::1", "bundle.json", "unknown"), ("domain", "evil.example.com", "bundle.json", "unknown"),
        ("sha256", HASH.lower(), "bundle.json", "unknown"), ("cidr", "203.0.113.0/24", "bundle.json", "unknown")]
    assert (report.unsupported, report.skipped, report.bad_lines) == (4, 3, [10, 11, 13])


def test_a_stix_indicator_matches_only_inside_its_validity_window_at_the_load(tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    objects = [
        stix_indicator("[ipv4-addr:value = '192.0.2.1']", valid_until="2026-06-01T12:00:01Z"),  # still valid
        stix_indicator("[ipv4-addr:value = '192.0.2.2']", valid_until="2026-06-01T12:00:00Z"),  # expires now
        stix_indicator("[ipv4-addr:value = '192.0.2.3']", valid_until="2025-01-01T00:00:00.000Z"),  # expired
        stix_indicator("[ipv4-addr:value = '192.0.2.4']", valid_from="2026-06-01T12:00:00.5Z"),  # not yet
        stix_indicator("[ipv4-addr:value = '192.0.2.5']", valid_from="2026-06-01T12:00:00Z"),  # begins now
        stix_indicator("[url:value = 'http://x.example/']", valid_until="2025-01-01T00:00:00Z"),  # expired first
        stix_indicator("[ipv4-addr:value = '192.0.2.6']", valid_until="next week"),  # not a timestamp: malformed
        stix_indicator("[ipv4-addr:value = '192.0.2.7']", valid_from=5),  # not a timestamp: malformed
    ]
    path = write(tmp_path / "bundle.json", orjson.dumps({"type": "bundle", "objects": objects}).decode())
    indicators, report = load_feed(path, now)
    assert [i.value for i in indicators] == ["192.0.2.1", "192.0.2.5"]
    assert (report.outside_validity, report.unsupported, report.skipped, report.bad_lines) == (4, 0, 2, [7, 8])
    reports: list[FeedReport] = []
    assert [i.value for i in read_feeds([path], reports, now)] == ["192.0.2.1", "192.0.2.5"]
    assert reports[0].outside_validity == 4


def test_by_default_a_stix_indicator_s_window_is_judged_by_the_clock(tmp_path: Path) -> None:
    objects = [stix_indicator("[ipv4-addr:value = '192.0.2.1']", valid_until="2000-01-01T00:00:00Z"),
               stix_indicator("[ipv4-addr:value = '192.0.2.2']", valid_from="9999-01-01T00:00:00Z"),
               stix_indicator("[ipv4-addr:value = '192.0.2.3']", valid_until="9999-01-01T00:00:00Z")]
    path = write(tmp_path / "bundle.json", orjson.dumps({"type": "bundle", "objects": objects}).decode())
    indicators, report = load_feed(path)
    assert ([i.value for i in indicators], report.skipped) == (["192.0.2.3"], 0)


@pytest.mark.parametrize(("name", "text"), [
    ("bundle.json", "{not json"),
    ("bundle.json", '{"type": "indicator", "pattern": "[ipv4-addr:value = \'192.0.2.1\']"}'),
    ("intel.csv", "ip,source\n192.0.2.1,x\n"),  # no value column: no row can be read
    ("list.txt", b"\xff\xfe\x00bad".decode("latin-1")),
])
def test_a_file_that_cannot_be_parsed_at_all_is_a_typed_error(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(LookupFileError) as caught:
        load_feed(path)
    assert caught.value.path == str(path)


@pytest.mark.parametrize(("name", "text"), [
    ("empty.csv", ""), ("empty.json", ""), ("empty.jsonl", ""), ("empty.txt", ""),
    ("blank.json", " \n"), ("comments.csv", "# nothing listed yet\n\n#type,value\n"),
])
def test_an_empty_feed_file_has_no_indicators_and_fails_nothing(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / "feeds").mkdir()
    write(tmp_path / "feeds" / name, text)
    write(tmp_path / "feeds" / "other.txt", "192.0.2.1\n")
    loaded = load_intel((str(tmp_path / "feeds"),))
    assert (loaded.entries, loaded.skipped) == (1, 0)
    indicators, report = load_feed(tmp_path / "feeds" / name)
    assert (indicators, report.loaded, report.skipped) == ([], 0, 0)


def test_a_csv_header_may_follow_comments_and_blank_lines_as_in_the_asset_inventory(tmp_path: Path) -> None:
    path = write(tmp_path / "intel.csv", "# exported by acme\n\nvalue,severity\n192.0.2.1,high\n"
                                         "# a note between rows\n192.0.2.2,low\n")
    indicators, report = load_feed(path)
    assert triples(indicators) == [("ip", "192.0.2.1", "intel.csv", "high"), ("ip", "192.0.2.2", "intel.csv", "low")]
    assert report.skipped == 0


def test_directories_are_read_recursively_in_name_order_and_a_missing_path_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "feeds" / "sub").mkdir(parents=True)
    write(tmp_path / "feeds" / "b.txt", "192.0.2.2\n")
    write(tmp_path / "feeds" / "sub" / "a.txt", "192.0.2.3\n")
    write(tmp_path / "feeds" / "a.txt", "192.0.2.1\n")
    write(tmp_path / "feeds" / ".hidden.txt", "192.0.2.9\n")
    single = write(tmp_path / "one.csv", "value\n192.0.2.4\n")
    reports: list[FeedReport] = []
    values = [i.value for i in read_feeds([tmp_path / "feeds", single], reports)]
    assert values == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    assert [(Path(r.path).name, r.loaded) for r in reports] == [("a.txt", 1), ("b.txt", 1), ("a.txt", 1),
                                                                ("one.csv", 1)]
    with pytest.raises(LookupFileError, match="no such file"):
        list(read_feeds([tmp_path / "missing"], []))


def test_a_feed_streams_into_its_index_holding_nothing_of_the_file_beside_it(tmp_path: Path) -> None:
    """What a worker holds at the peak of loading a feed is the index it builds: no file's text, lines or list of
    indicators (which cost three times the index when they were held)."""
    path = tmp_path / "big.csv"
    with path.open("w") as out:
        out.write("type,value,source,severity\n")
        for i in range(30_000):
            out.write(f"ip,10.{i >> 16}.{(i >> 8) & 255}.{i & 255},acme,high\n" if i % 2
                      else f"domain,host{i}.evil{i % 97}.example,acme,high\n")
    tracemalloc.start()
    try:
        loaded = load_intel((str(path),))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded.entries == 30_000
    assert peak - held < held // 4, f"held {held:,} bytes, peak {peak:,}"

"""The lookup section of ``etl status`` (``etl.ops.lookup_status``): the metrics read from Prometheus text as the enrich
pool serves it, merged across pages and processes, the match rates, and the lines shown."""

from __future__ import annotations

import json

import pytest

from etl.config import Settings
from etl.ops import lookup_status, status
from etl.ops.lookup_status import Lookups, TableState
from etl.ops.status import STAGES, Snapshot

NOW = 1_700_000_000.0

# The enrich pool's page: the multiprocess collector's (gauges without a pid, counters added up), after one reload
# failed and a few matches.
ENRICH_PAGE = f"""\
# HELP etl_lookup_entries Entries in each lookup table in use
# TYPE etl_lookup_entries gauge
etl_lookup_entries{{table="intel"}} 13.0
etl_lookup_entries{{table="assets"}} 6.0
etl_lookup_entries{{table="geoip_city"}} 7.0
# HELP etl_lookup_source_timestamp_seconds Unix time of the newest file each table in use was loaded from
# TYPE etl_lookup_source_timestamp_seconds gauge
etl_lookup_source_timestamp_seconds{{table="intel"}} {NOW - 125}
etl_lookup_source_timestamp_seconds{{table="assets"}} {NOW - 3 * 86400 - 7200}
etl_lookup_source_timestamp_seconds{{table="geoip_city"}} 0.0
# HELP etl_lookup_skipped_lines Malformed lines or objects skipped in each table in use
# TYPE etl_lookup_skipped_lines gauge
etl_lookup_skipped_lines{{table="intel"}} 2.0
etl_lookup_skipped_lines{{table="assets"}} 0.0
# HELP etl_lookup_reload_failures_total Loads of a lookup table that failed (the old table was kept)
# TYPE etl_lookup_reload_failures_total counter
etl_lookup_reload_failures_total{{table="intel"}} 1.0
# HELP etl_lookup_table_failing 1 while the lookup table's current files failed to load
# TYPE etl_lookup_table_failing gauge
etl_lookup_table_failing{{table="intel"}} 0.0
etl_lookup_table_failing{{table="assets"}} 1.0
# HELP etl_intel_matches_total Indicator matches in enriched events, by source and type
# TYPE etl_intel_matches_total counter
etl_intel_matches_total{{source="sandbox",type="sha256"}} 4.0
etl_intel_matches_total{{source="taxii-bundle.json",type="cidr"}} 30.0
etl_intel_matches_total{{source="taxii-bundle.json",type="domain"}} 11.0
"""

# A single process's own page (no multiprocess collector): labelled by pid, with the counters' _created samples.
PROCESS_PAGE = """\
# TYPE etl_lookup_entries gauge
etl_lookup_entries{pid="7",table="intel"} 12.0
etl_lookup_entries{pid="8",table="intel"} 13.0
# TYPE etl_lookup_reload_failures_total counter
etl_lookup_reload_failures_total{pid="7",table="intel"} 1.0
etl_lookup_reload_failures_total{pid="8",table="intel"} 2.0
etl_lookup_reload_failures_created{pid="8",table="intel"} 1.7e9
# TYPE etl_intel_matches_total counter
etl_intel_matches_total{pid="7",source="sandbox",type="sha256"} 1.0
etl_intel_matches_total{pid="8",source="sandbox",type="sha256"} 2.0
etl_intel_matches_created{pid="8",source="sandbox",type="sha256"} 1.7e9
"""


def test_the_enrich_pools_page_gives_each_table_and_the_matches() -> None:
    found = status.parse_metrics(ENRICH_PAGE).lookups
    assert found is not None
    assert found.tables["intel"] == TableState(entries=13, loaded_from=NOW - 125, skipped=2, reload_failures=1)
    assert found.tables["assets"] == TableState(entries=6, loaded_from=NOW - 3 * 86400 - 7200, skipped=0,
                                                reload_failures=0, failing=True), "no counter yet: no failure yet"
    assert found.tables["geoip_city"].loaded_from is None, "0: never loaded, so its age is unknown"
    assert found.matches == {"sandbox": {"sha256": 4}, "taxii-bundle.json": {"cidr": 30, "domain": 11}}
    assert found.total_matches() == 45
    assert found.matches_by_source() == {"sandbox": 4, "taxii-bundle.json": 41}


def test_processes_of_one_page_merge_as_the_pools_collector_merges_them() -> None:
    found = status.parse_metrics(PROCESS_PAGE).lookups
    assert found == Lookups({"intel": TableState(entries=13, reload_failures=3)}, {"sandbox": {"sha256": 3}})


def test_a_page_without_lookup_metrics_has_none() -> None:
    assert status.parse_metrics("# TYPE up gauge\nup 1\n").lookups is None


def test_pages_merge_the_most_entries_the_oldest_source_and_add_counts() -> None:
    a = Lookups({"intel": TableState(10, NOW - 5, 0, 1)}, {"feed": {"ip": 2}})
    b = Lookups({"intel": TableState(12, NOW - 50, 3, 2), "assets": TableState(4)}, {"feed": {"ip": 1, "cidr": 5}})
    assert a.merge(b) == Lookups({"intel": TableState(12, NOW - 50, 3, 3), "assets": TableState(4)},
                                 {"feed": {"ip": 3, "cidr": 5}})
    assert lookup_status.merge(None, a) == a == lookup_status.merge(a, None)
    merged = status.ProcessMetrics(lookups=a).merge(status.ProcessMetrics(lookups=b))
    assert merged.lookups == a.merge(b)


def test_a_table_is_failing_when_any_process_says_so() -> None:
    page = """\
# TYPE etl_lookup_table_failing gauge
etl_lookup_table_failing{pid="7",table="intel"} 0.0
etl_lookup_table_failing{pid="8",table="intel"} 1.0
etl_lookup_table_failing{pid="8",table="assets"} 0.0
"""
    found = status.parse_metrics(page).lookups
    assert found is not None and found.tables["intel"].failing and not found.tables["assets"].failing


def test_match_rates_are_per_second_and_a_new_series_counts_from_zero() -> None:
    before = Lookups(matches={"feed": {"ip": 10}})
    after = Lookups(matches={"feed": {"ip": 16, "domain": 2}})
    assert lookup_status.match_rates(before, after, 2.0) == {"feed": {"ip": 3.0, "domain": 1.0}}
    assert lookup_status.match_rates(None, after, 2.0) == {"feed": {"ip": None, "domain": None}}
    assert lookup_status.match_rates(before, after, 0.0) == {"feed": {"ip": None, "domain": None}}
    assert lookup_status.match_rates(before, None, 2.0) == {}


def test_snapshot_match_rates_use_the_time_between_them() -> None:
    def taken(at: float, n: int) -> Snapshot:
        return Snapshot(taken_at=at, totals=dict.fromkeys(STAGES, 0), lookups=Lookups(matches={"f": {"ip": n}}))

    assert status.match_rates(taken(10.0, 4), taken(14.0, 12)) == {"f": {"ip": 2.0}}
    assert status.match_rates(None, taken(14.0, 12)) == {"f": {"ip": None}}


@pytest.mark.parametrize(("seconds", "shown"), [(None, "?"), (-3, "0s"), (42.9, "42s"), (185, "3m05s"),
                                                (7440, "2h04m"), (3 * 86400 + 7200, "3d02h")])
def test_ages_show_their_two_largest_units(seconds: float | None, shown: str) -> None:
    assert lookup_status.age(seconds) == shown


def test_the_section_shows_each_table_then_the_matches_by_source() -> None:
    found = status.parse_metrics(ENRICH_PAGE).lookups
    rates = {"sandbox": {"sha256": 0.5}, "taxii-bundle.json": {"cidr": 2.0, "domain": 0.25}}
    lines = lookup_status.render_lookups(found, rates, NOW)
    assert lines[0].split() == ["lookup", "table", "entries", "age", "skipped", "reload", "failures"]
    assert lines[1].split() == ["intel", "13", "2m05s", "2", "1"]
    assert lines[2].split() == ["assets", "6", "3d02h", "0", "0", "FAILING", "to", "load"]
    assert lines[3].split() == ["geoip_city", "7", "?", "?", "0"]
    assert lines[4] == "intel matches   45 (2.8/s)"
    assert lines[5:] == ["  sandbox       sha256 4 (0.5/s)",
                         "  taxii-bundle.json cidr 30 (2.0/s)  domain 11 (0.2/s)"]


def test_rates_not_yet_known_are_left_out() -> None:
    lines = lookup_status.render_lookups(Lookups(matches={"feed": {"ip": 3}}), {"feed": {"ip": None}}, NOW)
    assert lines[-2:] == ["intel matches   3", "  feed          ip 3"]


def test_the_brief_section_is_one_line_with_the_oldest_table_and_all_matches() -> None:
    found = status.parse_metrics(ENRICH_PAGE).lookups
    rates = {"sandbox": {"sha256": 0.5}, "taxii-bundle.json": {"cidr": 2.0, "domain": 0.25}}
    assert lookup_status.render_brief(found, rates, NOW) == [
        "lookups         intel 13, assets 6 FAILING, geoip_city 7 (oldest 3d02h, 2 skipped, 1 reload failures); "
        "45 matches (2.8/s)"]
    assert lookup_status.render_brief(None, {}, NOW) == lookup_status.render_lookups(None, {}, NOW)


def test_unknown_and_empty_are_told_apart() -> None:
    assert lookup_status.render_lookups(None, {}, NOW) == ["lookups         ? (no /metrics page answered)"]
    (empty,) = lookup_status.render_lookups(Lookups(), {}, NOW)
    assert empty.startswith("lookups         none on the pages read") and "INTEL_PATHS" in empty


def test_status_renders_the_section_and_writes_it_to_json() -> None:
    found = status.parse_metrics(ENRICH_PAGE).lookups
    snap = Snapshot(taken_at=NOW, totals=dict.fromkeys(STAGES, 0), lookups=found)
    rates = {"sandbox": {"sha256": 1.5}}
    text = status.render(snap, dict.fromkeys(STAGES), Settings(), matches=rates)
    assert "intel matches   45" in text and "  sandbox       sha256 4 (1.5/s)" in text
    data = json.loads(status.to_json(snap, dict.fromkeys(STAGES), matches=rates))
    assert data["lookups"]["tables"]["intel"] == {"entries": 13, "loaded_from": NOW - 125, "skipped": 2,
                                                  "reload_failures": 1, "failing": False}
    assert data["lookups"]["matches"]["taxii-bundle.json"] == {"cidr": 30, "domain": 11}
    assert data["match_rates"] == rates


"""Retention's pure parts: durations, the run loop and its schedule, the statements it sends, and which worker
runs what."""

from __future__ import annotations

import random

import pytest

from etl.config import Settings
from etl.envvalues import duration, duration_text
from etl.errors import ConfigError
from etl.middleware.retention import expiries_for
from etl.retention.runs import (
    JITTER_SHARE,
    Run,
    cutoff_s,
    expire,
    lease_ms,
    next_delay_s,
    run_budget_s,
)
from etl.sinks.graph.cypher import NODE_INDEXES, WRITTEN, expire_events_cypher
from etl.sinks.timescale_retention import COMPRESSION_OPTIONS, Policies, policy_changes, quoted


@pytest.mark.parametrize(("raw", "seconds"), [
    ("", 0), ("0", 0), ("0d", 0), ("45", 45), ("90s", 90), ("90m", 5400), ("12h", 43_200), ("30d", 2_592_000),
    (" 7D ", 604_800),
])
def test_durations(raw: str, seconds: int) -> None:
    assert duration("GRAPH_RETENTION", raw) == seconds
    assert duration("GRAPH_RETENTION", duration_text(seconds)) == seconds


@pytest.mark.parametrize("raw", ["30 days", "1w", "-5m", "1.5h", "h", "12h30m"])
def test_bad_durations_say_what_is_expected(raw: str) -> None:
    with pytest.raises(ConfigError, match="GRAPH_RETENTION must be a duration such as 90s, 15m, 12h or 30d"):
        Settings.from_env({"GRAPH_RETENTION": raw})


def test_duration_text_picks_the_largest_whole_unit() -> None:
    assert [duration_text(s) for s in (0, 59, 60, 3600, 5400, 86_400, 90_000)] == ["0", "59s", "1m", "1h", "90m",
                                                                                   "1d", "25h"]


def test_retention_settings() -> None:
    s = Settings.from_env({"GRAPH_RETENTION": "30d", "TIMESCALE_RETENTION": "90d", "TIMESCALE_COMPRESS_AFTER": "7d",
                           "RETENTION_INTERVAL": "5m"})
    assert (s.graph_retention_s, s.timescale_retention_s, s.timescale_compress_after_s, s.retention_interval_s) == (
        30 * 86_400, 90 * 86_400, 7 * 86_400, 300)
    assert Settings.from_env(s.to_env()) == s
    assert s.to_env()["GRAPH_RETENTION"] == "30d"
    defaults = Settings.from_env({})
    assert (defaults.graph_retention_s, defaults.timescale_retention_s, defaults.retention_interval_s) == (0, 0, 10)
    with pytest.raises(ConfigError, match="RETENTION_INTERVAL must be a duration of at least 1s"):
        Settings.from_env({"RETENTION_INTERVAL": "0"})


class FakeExpiry:
    """Holds ``expired`` events and removes up to ``batch`` per call; the clock moves ``step_s`` per call."""

    sink = "fake"
    removes = "events"
    lease_key = "fake"
    retention_s = 60

    def __init__(self, expired: int, batch: int, clock: list[float], step_s: float = 1.0) -> None:
        self.expired, self.batch, self.clock, self.step_s = expired, batch, clock, step_s
        self.cutoffs: list[float] = []

    def remove_before(self, cutoff_s: float) -> int:
        self.cutoffs.append(cutoff_s)
        self.clock[0] += self.step_s
        removed = min(self.batch, self.expired)
        self.expired -= removed
        return removed

    def close(self) -> None:
        pass


def run_fake(expired: int, batch: int, budget_s: float, **options: object) -> tuple[Run, FakeExpiry, list[int]]:
    clock = [100.0]
    fake = FakeExpiry(expired, batch, clock)
    counted: list[int] = []

    def pause(seconds: float) -> None:
        clock[0] += seconds

    run = expire(fake, 1234.5, budget_s, clock=lambda: clock[0], removed_now=counted.append,  # type: ignore[arg-type]
                 pause=pause, **options)
    return run, fake, counted


def test_a_run_goes_on_until_a_batch_comes_back_short() -> None:
    run, fake, counted = run_fake(expired=25, batch=10, budget_s=100)
    # Each statement takes a second, and is followed by a pause as long (PAUSE_FACTOR) but for the last.
    assert run == Run(removed=25, statements=3, seconds=5.0, complete=True)
    assert counted == [10, 10, 5] and fake.cutoffs == [1234.5] * 3


def test_a_full_last_batch_takes_one_more_statement_to_know_it_is_done() -> None:
    run, _, counted = run_fake(expired=20, batch=10, budget_s=100)
    assert (run.statements, run.complete, counted) == (3, True, [10, 10, 0])


def test_a_run_ends_at_its_budget_with_work_left() -> None:
    run, fake, _ = run_fake(expired=100, batch=10, budget_s=4.5)
    assert (run.removed, run.statements, run.complete, fake.expired) == (30, 3, False, 70)


def test_a_run_ends_when_the_worker_stops() -> None:
    run, fake, _ = run_fake(expired=100, batch=10, budget_s=100, stopping=lambda: True)
    assert (run.removed, run.complete, fake.expired) == (10, False, 90)


def test_nothing_expired_is_one_statement() -> None:
    run, _, _ = run_fake(expired=0, batch=10, budget_s=0)
    assert (run.removed, run.statements, run.complete) == (0, 1, True)


def test_the_schedule_keeps_runs_apart() -> None:
    interval_s = 60.0
    delays = [next_delay_s(interval_s, random.Random(seed)) for seed in range(200)]
    assert min(delays) >= interval_s * (1 - JITTER_SHARE) and max(delays) <= interval_s * (1 + JITTER_SHARE)
    assert len(set(delays)) > 100  # spread, so replicas do not all ask at once
    # A run ends before its lease, and a lease before the next run of the same process.
    assert run_budget_s(interval_s) * 1000 < lease_ms(interval_s) < min(delays) * 1000
    assert lease_ms(0.0001) == 1
    assert cutoff_s(1_000_000.0, 3600) == 996_400.0


def test_the_graph_statement_is_bounded_and_indexed() -> None:
    assert expire_events_cypher(2000) == ("MATCH (e:Event) WHERE e.timestamp < $cutoff WITH e LIMIT 2000 "
                                          "DETACH DELETE e RETURN count(e) AS removed")
    assert ("Event", "timestamp") in NODE_INDEXES and "timestamp" in WRITTEN.properties
    with pytest.raises(ValueError, match="positive"):
        expire_events_cypher(0)


TABLE = "events"
NAME = ('"events"',)


def test_policies_are_added_when_missing() -> None:
    assert policy_changes(TABLE, Policies(2_592_000, 604_800), Policies(0, 0)) == [
        ("SELECT add_retention_policy(%s::regclass, drop_after => make_interval(secs => %s), if_not_exists => true)",
         (*NAME, 2_592_000)),
        (COMPRESSION_OPTIONS.format(table='"events"'), ()),
        ("SELECT add_compression_policy(%s::regclass, compress_after => make_interval(secs => %s), "
         "if_not_exists => true)", (*NAME, 604_800)),
    ]
    assert COMPRESSION_OPTIONS.format(table='"events"') == (
        "ALTER TABLE \"events\" SET (timescaledb.compress, timescaledb.compress_segmentby = 'host_id', "
        "timescaledb.compress_orderby = '\"time\" DESC, id')")


def test_policies_in_place_change_nothing() -> None:
    assert policy_changes(TABLE, Policies(3600, 600), Policies(3600, 600, compression_enabled=True)) == []
    assert policy_changes(TABLE, Policies(0, 0), Policies(0, 0, compression_enabled=True)) == []


def test_a_changed_age_replaces_its_policy() -> None:
    assert policy_changes(TABLE, Policies(7200, 600), Policies(3600, 600, compression_enabled=True)) == [
        ("SELECT remove_retention_policy(%s::regclass, if_exists => true)", NAME),
        ("SELECT add_retention_policy(%s::regclass, drop_after => make_interval(secs => %s), if_not_exists => true)",
         (*NAME, 7200)),
    ]
    assert [s for s, _ in policy_changes(TABLE, Policies(3600, 1200), Policies(3600, 600, True))] == [
        "SELECT remove_compression_policy(%s::regclass, if_exists => true)",
        "SELECT add_compression_policy(%s::regclass, compress_after => make_interval(secs => %s), "
        "if_not_exists => true)"]


def test_policies_no_longer_wanted_are_removed_and_compression_stays_enabled() -> None:
    assert policy_changes(TABLE, Policies(0, 0), Policies(3600, 600, compression_enabled=True)) == [
        ("SELECT remove_retention_policy(%s::regclass, if_exists => true)", NAME),
        ("SELECT remove_compression_policy(%s::regclass, if_exists => true)", NAME),
    ]


def test_a_table_name_is_quoted_as_an_identifier() -> None:
    assert quoted("Events") == '"Events"' and quoted('a"b') == '"a""b"'


@pytest.mark.parametrize(("env", "queues", "sinks"), [
    ({}, None, []),
    ({"GRAPH_RETENTION": "1d"}, {"graph"}, ["graph"]),
    ({"GRAPH_RETENTION": "1d"}, {"timescale"}, []),
    ({"GRAPH_RETENTION": "1d", "TIMESCALE_RETENTION": "1d"}, {"enrich", "publish"}, []),
    ({"GRAPH_RETENTION": "1d", "TIMESCALE_RETENTION": "1d"}, {"timescale"}, ["timescale"]),
    ({"GRAPH_RETENTION": "1d", "TIMESCALE_RETENTION": "1d"}, None, ["graph", "timescale"]),
    ({"TIMESCALE_COMPRESS_AFTER": "1d"}, None, []),  # compression is TimescaleDB's own job
])
def test_each_pool_runs_the_retention_of_its_own_sink(env: dict[str, str], queues: set[str] | None,
                                                      sinks: list[str]) -> None:
    assert [e.sink for e in expiries_for(Settings.from_env(env), queues)] == sinks

"""What ``etl dev`` shows while it runs and when it stops: the generator's state, whether the generated events are
all accounted for, the progress (redrawn on a terminal, one line per change elsewhere) and the summary."""

from __future__ import annotations

from dataclasses import replace

import pytest

from etl.config import Settings
from etl.dev.progress import HEARTBEAT_S, Progress, Sent, idle, progress_frame, progress_line, summary, unaccounted
from etl.ops.lookup_status import Lookups, TableState
from etl.ops.status import STAGES, Snapshot

SETTINGS = Settings()
NO_RATES = dict.fromkeys(STAGES)
CURSOR_UP = "\x1b["


def snap(*, taken_at: float = 1_700_000_000.0, dead: dict[str, int] | None = None, **totals: int | None) -> Snapshot:
    """A snapshot with every stage total 0 unless given, and the dead letters by stage."""
    dead = {} if dead is None else dead
    return Snapshot(taken_at=taken_at, totals={**dict.fromkeys(STAGES, 0), "dead_lettered": sum(dead.values()),
                                               **totals},
                    dead_letters=dead, queues={"enrich": 0, "publish": 0, "timescale": 0, "graph": 0}, lag=0,
                    ack_pending=0, breakers={"publish": "closed", "timescale": "closed", "graph": "closed"})


# --- Sent ---

def test_sent_describes_the_generator_state() -> None:
    assert Sent(sent=40, malformed=1, total=200).describe() == "generated 40/200 (1 malformed), sending"
    assert Sent(sent=200, malformed=1, total=200, finished=True).describe().endswith(", done")
    stopped = Sent(sent=7, total=200, finished=True, error="NatsUnavailable: no servers")
    assert stopped.describe() == "generated 7/200 (0 malformed), stopped: NatsUnavailable: no servers"
    assert Sent(enabled=False).describe() == "generator off: waiting for events from outside"
    assert Sent(sent=400, malformed=2, duplicates=4, total=400).describe() == (
        "generated 400/400 (2 malformed, 4 duplicates), sending")


def test_valid_events_are_those_sent_that_are_not_malformed_nor_sent_before() -> None:
    assert Sent(sent=200, malformed=3).valid == 197
    assert Sent(sent=200, malformed=3, duplicates=2).valid == 195


# --- unaccounted ---

BASELINE = snap(received=50, published=40, stored=45, merged=42, dead={"enrich": 2, "graph": 3})


def after(published: int, stored: int, merged: int, dead: dict[str, int]) -> Snapshot:
    """A later reading: the baseline's sink totals plus what this run added."""
    return snap(published=40 + published, stored=45 + stored, merged=42 + merged, dead=dead)


def test_all_accounted_for_when_every_sink_holds_every_valid_event_of_this_run() -> None:
    now = after(98, 98, 98, {"enrich": 4, "graph": 3})
    assert unaccounted(BASELINE, now, Sent(sent=100, malformed=2, finished=True)) == 0


def test_each_sink_holds_a_duplicate_once_and_that_accounts_for_it() -> None:
    now = after(96, 96, 96, {"enrich": 4, "graph": 3})
    assert unaccounted(BASELINE, now, Sent(sent=100, malformed=2, duplicates=2, finished=True)) == 0


def test_the_sink_furthest_behind_counts() -> None:
    now = after(98, 90, 95, {"enrich": 4, "graph": 3})
    assert unaccounted(BASELINE, now, Sent(sent=100, malformed=2)) == 8


def test_a_dead_letter_counts_for_its_own_sink_only() -> None:
    sent = Sent(sent=100, malformed=0)
    stored_dead = after(100, 95, 100, {"enrich": 2, "graph": 3, "timescale": 5})
    assert unaccounted(BASELINE, stored_dead, sent) == 0
    graph_dead_instead = after(100, 95, 100, {"enrich": 2, "graph": 8})
    assert unaccounted(BASELINE, graph_dead_instead, sent) == 5


def test_dead_letters_from_before_this_run_do_not_count() -> None:
    # the graph already had 3 dead letters: they do not make up for 3 events missing from it now
    now = after(100, 100, 97, {"enrich": 2, "graph": 3})
    assert unaccounted(BASELINE, now, Sent(sent=100)) == 3


def test_malformed_events_count_once_dead_lettered_by_the_enrich_stage() -> None:
    sent = Sent(sent=100, malformed=3, finished=True)
    assert unaccounted(BASELINE, after(97, 97, 97, {"enrich": 3, "graph": 3}), sent) == 2
    assert unaccounted(BASELINE, after(97, 97, 97, {"enrich": 5, "graph": 3}), sent) == 0
    # a sink's dead letter is not a rejected malformed event
    assert unaccounted(BASELINE, after(97, 97, 97, {"enrich": 2, "graph": 3, "publish": 3}), sent) == 3


def test_unknown_when_a_reading_is_missing() -> None:
    now = after(1, 1, 1, {"enrich": 2, "graph": 3})
    assert unaccounted(BASELINE, replace(now, dead_letters=None), Sent(sent=1)) is None
    assert unaccounted(BASELINE, replace(now, totals={**now.totals, "merged": None}), Sent(sent=1)) is None


def test_unknown_when_the_baseline_is_missing_a_reading() -> None:
    now = after(1, 1, 1, {"enrich": 2, "graph": 3})
    assert unaccounted(replace(BASELINE, dead_letters=None), now, Sent(sent=1)) is None
    assert unaccounted(replace(BASELINE, totals={**BASELINE.totals, "stored": None}), now, Sent(sent=1)) is None


def test_never_negative_when_more_arrived_than_was_generated() -> None:
    # events published from outside reach the sinks too
    now = after(500, 500, 500, {"enrich": 50, "graph": 3})
    assert unaccounted(BASELINE, now, Sent(sent=100, malformed=1)) == 0
    assert unaccounted(BASELINE, now, Sent(enabled=False)) == 0


# --- idle ---

def test_idle_when_nothing_waits_anywhere() -> None:
    assert idle(snap())


@pytest.mark.parametrize("changes", [
    {"queues": {"enrich": 0, "publish": 0, "timescale": 1, "graph": 0}},
    {"lag": 3},
    {"ack_pending": 1},
    {"queues": None},
    {"lag": None},
    {"ack_pending": None},
])
def test_busy_when_something_waits_or_is_unknown(changes: dict[str, object]) -> None:
    assert not idle(replace(snap(), **changes))


# --- progress_line ---

def test_the_line_has_each_stage_with_its_rate_what_waits_and_the_generator() -> None:
    now = replace(snap(received=120, published=100, stored=None, merged=90, dead={"enrich": 1}),
                  lag=7, queues={"enrich": 1, "publish": 2, "timescale": 0, "graph": 0})
    rates = {**NO_RATES, "received": 60.0, "published": 49.6}
    line = progress_line(now, rates, 12.34, Sent(sent=121, malformed=1, total=200), missing=30)
    assert line.startswith("[  12.3s] received 120 (+60/s)  published 100 (+50/s)  stored ?  merged 90  "
                           "dead-lettered 1  lag 7  queued 3  |  generated 121/200 (1 malformed), sending")
    assert "\n" not in line
    assert "accounted" not in line  # only said once the generator is done
    assert "breakers" not in line and "paused" not in line


def test_the_line_shows_breakers_that_are_not_closed_and_a_paused_bridge() -> None:
    now = replace(snap(), breakers={"publish": "closed", "timescale": "open", "graph": "half-open"},
                  bridge_paused=True, errors={"redis": "ConnectionError: refused"})
    line = progress_line(now, NO_RATES, 1.0, Sent(), missing=None)
    assert "breakers: timescale open, graph half-open" in line
    assert "publish closed" not in line
    assert "bridge paused" in line
    assert "! redis unreadable" in line


MATCHES = Lookups({"intel": TableState(13)}, {"sandbox": {"sha256": 4}, "partner-isac": {"ip": 7, "domain": 9}})


def test_the_line_has_the_indicator_matches_and_their_rate_when_the_metrics_tell() -> None:
    now = replace(snap(received=120, dead={"enrich": 1}), lookups=MATCHES)
    rates = {"sandbox": {"sha256": 1.0}, "partner-isac": {"ip": 2.0, "domain": 0.4}}
    line = progress_line(now, NO_RATES, 1.0, Sent(), missing=None, matches=rates)
    assert "dead-lettered 1  matches 20 (+3/s)  lag 0" in line
    assert "matches 20  lag" in progress_line(now, NO_RATES, 1.0, Sent(), missing=None)  # no rate yet
    assert "matches" not in progress_line(snap(), NO_RATES, 1.0, Sent(), missing=None)  # no metrics page


def test_unknown_breaker_states_are_not_shown_as_tripped() -> None:
    now = replace(snap(), breakers={"publish": None, "timescale": None, "graph": None}, bridge_paused=False)
    line = progress_line(now, NO_RATES, 1.0, Sent(), missing=None)
    assert "breakers" not in line and "paused" not in line


@pytest.mark.parametrize(("missing", "tail"), [
    (0, "; all 200 generated events accounted for"),
    (5, "; 5 not yet accounted for"),
    (None, "; ? not yet accounted for"),
])
def test_once_the_generator_is_done_the_line_says_what_is_accounted_for(missing: int | None, tail: str) -> None:
    line = progress_line(snap(), NO_RATES, 1.0, Sent(sent=200, malformed=1, total=200, finished=True), missing)
    assert line.endswith(tail)


def test_without_a_generator_nothing_is_said_about_accounting() -> None:
    line = progress_line(snap(), NO_RATES, 1.0, Sent(enabled=False), missing=0)
    assert line.endswith("generator off: waiting for events from outside")


# --- progress_frame ---

def test_the_frame_is_the_status_table_with_the_generator_line_cut_to_the_width() -> None:
    sent = Sent(sent=200, malformed=1, total=200, finished=True)
    wide = progress_frame(snap(), NO_RATES, SETTINGS, 1.0, sent, 0, width=500)
    assert "Ctrl-C to stop the stack" in wide and "Ctrl-C to quit" not in wide
    assert wide.splitlines()[-1] == "generated 200/200 (1 malformed), done; all 200 generated events accounted for"
    narrow = progress_frame(snap(), NO_RATES, SETTINGS, 1.0, sent, 0, width=20)
    assert all(len(line) <= 20 for line in narrow.splitlines())
    assert len(narrow.splitlines()) == len(wide.splitlines())
    assert [line[:20] for line in wide.splitlines()] == narrow.splitlines()


def test_the_frame_shows_the_lookup_tables_and_the_matches_by_source() -> None:
    frame = progress_frame(replace(snap(), lookups=MATCHES), NO_RATES, SETTINGS, 1.0, Sent(), None, width=200,
                           matches={"sandbox": {"sha256": 0.5}})
    assert any(line.split()[:2] == ["intel", "13"] for line in frame.splitlines())
    assert "  partner-isac  domain 9  ip 7" in frame and "  sandbox       sha256 4 (0.5/s)" in frame


def test_the_frame_shows_a_tripped_breaker() -> None:
    now = replace(snap(), breakers={"publish": "closed", "timescale": "open", "graph": "closed"})
    assert "timescale open" in progress_frame(now, NO_RATES, SETTINGS, 1.0, Sent(), None, width=200)


# --- Progress ---

class Screen:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def __call__(self, text: str) -> None:
        self.writes.append(text)


GENERATING = Sent(total=10)


def show(progress: Progress, snapshot: Snapshot, elapsed_s: float, sent: Sent = GENERATING) -> None:
    progress.show(snapshot, NO_RATES, SETTINGS, elapsed_s=elapsed_s, interval_s=1.0, sent=sent, missing=None)


def test_on_a_terminal_each_frame_replaces_the_last() -> None:
    screen = Screen()
    progress = Progress(screen, terminal=True, width=100, height=60)
    show(progress, snap(received=1), 1.0)
    show(progress, snap(received=2), 2.0)
    first, second = screen.writes
    assert CURSOR_UP not in first
    lines = first.count("\n") + 1
    assert second.startswith(f"\x1b[{lines}F\x1b[J")
    assert second.removeprefix(f"\x1b[{lines}F\x1b[J") == progress_frame(
        snap(received=2), NO_RATES, SETTINGS, 1.0, GENERATING, None, 100)


def test_a_terminal_frame_is_redrawn_even_when_nothing_changed() -> None:
    screen = Screen()
    progress = Progress(screen, terminal=True, width=100, height=60)
    show(progress, snap(), 1.0)
    show(progress, snap(), 1.5)
    assert len(screen.writes) == 2


def test_after_release_the_next_frame_goes_below_the_last() -> None:
    screen = Screen()
    progress = Progress(screen, terminal=True, width=100, height=60)
    show(progress, snap(), 1.0)
    progress.release()
    show(progress, snap(), 2.0)
    assert CURSOR_UP not in screen.writes[1]


def test_a_frame_taller_than_the_terminal_falls_back_to_lines() -> None:
    screen = Screen()
    progress = Progress(screen, terminal=True, width=100, height=5)
    show(progress, snap(received=1), 1.0)
    show(progress, snap(received=2), 2.0)
    assert all(CURSOR_UP not in w and "\n" not in w for w in screen.writes)
    assert screen.writes[0].startswith("[   1.0s] received 1")


def test_a_frame_too_tall_with_the_lookup_section_has_it_on_one_line_before_falling_back_to_lines() -> None:
    now = replace(snap(received=1), lookups=MATCHES)
    full = progress_frame(now, NO_RATES, SETTINGS, 1.0, GENERATING, None, 100)
    brief = progress_frame(now, NO_RATES, SETTINGS, 1.0, GENERATING, None, 100, brief=True)
    tall, short = full.count("\n") + 1, brief.count("\n") + 1
    assert short < tall and "lookups         intel 13 (oldest ?, 0 skipped, 0 reload failures); 20 matches" in brief
    screen = Screen()
    show(Progress(screen, terminal=True, width=100, height=tall), now, 1.0)
    show(Progress(screen, terminal=True, width=100, height=short), now, 1.0)
    assert screen.writes == [brief, progress_line(now, NO_RATES, 1.0, GENERATING, None)]


def test_elsewhere_a_line_is_written_only_when_something_changed() -> None:
    screen = Screen()
    progress = Progress(screen, terminal=False, width=100, height=60)
    show(progress, snap(received=1), 1.0)
    show(progress, snap(received=1), 2.0)  # same totals
    show(progress, snap(received=2), 3.0)  # a total moved
    show(progress, replace(snap(received=2), lag=5), 4.0)  # the lag moved
    show(progress, replace(snap(received=2), lag=5), 5.0, Sent(sent=3, total=10))  # the generator moved
    assert [w.split("]")[0] for w in screen.writes] == ["[   1.0s", "[   3.0s", "[   4.0s", "[   5.0s"]
    assert all(CURSOR_UP not in w for w in screen.writes)


def test_elsewhere_a_new_match_is_a_change() -> None:
    screen = Screen()
    progress = Progress(screen, terminal=False, width=100, height=60)
    show(progress, replace(snap(), lookups=Lookups()), 1.0)
    show(progress, replace(snap(), lookups=Lookups()), 2.0)
    show(progress, replace(snap(), lookups=MATCHES), 3.0)
    assert len(screen.writes) == 2 and "matches 20" in screen.writes[1]


def test_elsewhere_a_tripped_breaker_is_a_change() -> None:
    screen = Screen()
    progress = Progress(screen, terminal=False, width=100, height=60)
    show(progress, snap(), 1.0)
    show(progress, replace(snap(), breakers={"publish": "closed", "timescale": "open", "graph": "closed"}), 2.0)
    assert len(screen.writes) == 2 and "breakers: timescale open" in screen.writes[1]


def test_elsewhere_an_unchanged_reading_is_repeated_as_a_heartbeat() -> None:
    screen = Screen()
    progress = Progress(screen, terminal=False, width=100, height=60)
    show(progress, snap(), 10.0)
    show(progress, snap(), 10.0 + HEARTBEAT_S - 0.5)
    assert len(screen.writes) == 1
    show(progress, snap(), 10.0 + HEARTBEAT_S)
    assert len(screen.writes) == 2
    show(progress, snap(), 10.0 + HEARTBEAT_S + 1.0)  # the heartbeat restarts from the last line written
    assert len(screen.writes) == 2


# --- summary ---

def test_the_summary_names_each_sink_and_the_dead_letters_by_stage() -> None:
    final = snap(published=199, stored=198, merged=197, dead={"timescale": 1, "enrich": 2})
    assert summary(final).splitlines() == [
        "summary (totals in the data directory, across runs)",
        "  events.enriched messages  199",
        "  TimescaleDB rows          198",
        "  graph Event nodes         197",
        "  dead letters              3 (enrich 2, timescale 1)",
        "  indicator matches         ? (the enrich pool's metrics did not answer)",
    ]


def test_the_summary_counts_this_runs_matches_by_source() -> None:
    lines = summary(replace(snap(), lookups=MATCHES)).splitlines()
    assert "  indicator matches         20 this run (partner-isac 16, sandbox 4)" in lines
    assert "  indicator matches         0 this run (none)" in summary(replace(snap(), lookups=Lookups()))


def test_the_summary_says_none_or_unknown_for_dead_letters() -> None:
    assert "  dead letters              0 (none)" in summary(snap()).splitlines()
    unknown = replace(snap(stored=None, dead_lettered=None), dead_letters=None, errors={"postgresql": "down"})
    lines = summary(unknown).splitlines()
    assert "  TimescaleDB rows          ?" in lines
    assert "  dead letters              ? (?)" in lines
    assert lines[-1] == "  ! postgresql: down"


def test_the_summary_says_what_is_left_for_the_next_start() -> None:
    assert "left for the next start" not in summary(snap())
    left = replace(snap(), queues={"enrich": 2, "publish": 0, "timescale": 1, "graph": 0}, lag=40)
    assert summary(left).splitlines()[-1] == \
        "  left for the next start   3 batches in Redis, 40 events in JetStream"
    only_lag = replace(snap(), lag=7)
    assert "0 batches in Redis, 7 events in JetStream" in summary(only_lag)

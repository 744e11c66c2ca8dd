"""The dead-letter log: one summary line per stage and reason type per window, with the first ids, and nothing
counted left unsaid at shutdown."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from etl.pipeline.deadletter import DeadLetter
from etl.pipeline.dlqlog import SUMMARY_FIRST_IDS, DeadLetterLog, FullNotice, Summary, Tally
from etl.pipeline.dlqscripts import DROPPED
from tests.waiting import wait_for


def bad(stage: str, reason: str, n: int, tag: str = "") -> list[DeadLetter]:
    return [DeadLetter.for_raw(stage, reason, f"{tag}{stage}-{reason}-{i}".encode()) for i in range(n)]


def counts(tallies: list[Tally]) -> dict[tuple[str, str], int]:
    return {(t.stage, t.reason): t.count for t in tallies}


def test_a_window_gathers_every_batch_and_closes_after_the_interval() -> None:
    now = [100.0]
    summary = Summary(interval_s=10, clock=lambda: now[0])
    assert summary.due_in() is None and summary.take_all() == []
    json_errors = bad("enrich", "BadEvent/json: not valid JSON", 40)
    assert summary.add(json_errors[:20]) is True, "the first dead letter opens a window"
    for second in range(1, 10):
        now[0] = 100.0 + second
        assert summary.add(json_errors[20 + second:21 + second]) is False
        assert summary.take_due() == [], "not before the interval is over"
    summary.add(bad("enrich", "BadEvent/nul: a NUL byte", 3) + bad("graph", "SinkDataError: too long", 2))
    now[0] = 110.0
    assert summary.due_in() == 0.0
    tallies = summary.take_due()
    assert counts(tallies) == {("enrich", "BadEvent/json"): 29, ("enrich", "BadEvent/nul"): 3,
                               ("graph", "SinkDataError"): 2}
    first = tallies[0]
    assert first.first_ids == [letter.id for letter in json_errors[:SUMMARY_FIRST_IDS]]
    assert (first.example, first.span_s) == ("BadEvent/json: not valid JSON", 10.0)
    assert summary.due_in() is None and summary.take_due() == [] and summary.take_all() == []


def test_after_a_quiet_spell_the_next_dead_letter_opens_a_new_window() -> None:
    now = [0.0]
    summary = Summary(interval_s=10, clock=lambda: now[0])
    summary.add(bad("publish", "SinkDataError: x", 1))
    now[0] = 500.0
    assert counts(summary.take_due()) == {("publish", "SinkDataError"): 1}
    now[0] = 503.0
    assert summary.add(bad("publish", "SinkDataError: x", 2, tag="later")) is True
    assert summary.due_in() == 10.0
    now[0] = 504.5
    [tally] = summary.take_all()
    assert (tally.count, tally.span_s) == (2, 1.5), "at shutdown, the window so far"


def test_a_full_queue_not_yet_reported_is_reported_at_shutdown() -> None:
    said: list[tuple[int, float]] = []
    now = [0.0]
    notice = FullNotice(lambda n, s: said.append((n, s)), interval_s=60, clock=lambda: now[0])
    notice.note(5)
    now[0] = 30.0
    notice.note(7)
    notice.flush()
    assert said == [(5, 0.0), (7, 0.0)]
    now[0] = 45.0
    notice.flush()
    assert said == [(5, 0.0), (7, 0.0)], "nothing pending, nothing said"


def summary_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("dead-lettered")]


class Timers:
    """Timers that fire when the test says so, against a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def start(self, delay_s: float, function: Callable[[], None]) -> Timers:
        self.pending.append((self.now + delay_s, function))
        return self

    def cancel(self) -> None:
        self.cancelled += 1
        self.pending.clear()

    def fire(self) -> None:
        """Move the clock to the first pending timer and call it."""
        due, function = self.pending.pop(0)
        self.now = max(self.now, due)
        function()


def test_the_log_says_each_window_once_by_its_timer_and_the_rest_at_shutdown(
        caplog: pytest.LogCaptureFixture) -> None:
    timers = Timers()
    dlq_log = DeadLetterLog(max_bytes=1000, max_entries=10, interval_s=10, clock=lambda: timers.now,
                            start_timer=timers.start)
    caplog.set_level(logging.WARNING, logger="etl.pipeline.dlq")
    for batch in range(3):  # three batches, one window, one timer
        timers.now = float(batch)
        letters = bad("enrich", "BadEvent/json: not valid JSON", 50, tag=str(batch))
        dlq_log.record(letters, [0] * len(letters))
    assert summary_lines(caplog) == [], "nothing per batch"
    assert [due for due, _ in timers.pending] == [10.0]
    timers.fire()
    [line] = summary_lines(caplog)
    assert line.events == 150 and line.stage == "enrich" and line.reason == "BadEvent/json"
    assert len(line.dead_letter_ids) == SUMMARY_FIRST_IDS
    assert "dead-lettered 150 event(s) at enrich for BadEvent/json in 10 s" in line.getMessage()
    assert timers.pending == [], "no window open, no timer"

    caplog.clear()
    timers.now = 50.0
    letters = bad("graph", "SinkDataError: too long", 4)
    dlq_log.record(letters, [0, 0, DROPPED, 0])
    timers.now = 52.0
    dlq_log.flush()
    assert timers.cancelled == 1, "the window's timer is cancelled: it would say the window again"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "dead-lettered 3 event(s) at graph for SinkDataError in 2 s" in messages[1], messages
    assert "the DLQ is full, 1 dead letters not kept" in messages[0]
    dlq_log.flush()
    assert len(caplog.records) == 2, "a flush says each dead letter once"


def test_a_timer_woken_early_waits_for_the_rest_of_the_window(caplog: pytest.LogCaptureFixture) -> None:
    timers = Timers()
    dlq_log = DeadLetterLog(max_bytes=1000, max_entries=10, interval_s=10, clock=lambda: timers.now,
                            start_timer=timers.start)
    caplog.set_level(logging.WARNING, logger="etl.pipeline.dlq")
    letters = bad("timescale", "SinkDataError: NUL", 2)
    dlq_log.record(letters, [0, 0])
    _, close = timers.pending.pop()
    timers.now = 9.5
    close()
    assert summary_lines(caplog) == [] and [due for due, _ in timers.pending] == [10.0]
    timers.fire()
    assert [line.events for line in summary_lines(caplog)] == [2]


def test_the_real_timer_closes_the_window(caplog: pytest.LogCaptureFixture) -> None:
    dlq_log = DeadLetterLog(max_bytes=1000, max_entries=10, interval_s=0.2)
    caplog.set_level(logging.WARNING, logger="etl.pipeline.dlq")
    letters = bad("enrich", "BadEvent/json: not valid JSON", 50)
    dlq_log.record(letters, [0] * len(letters))  # one call, so one window however slow the machine
    [line] = wait_for(lambda: summary_lines(caplog), timeout_s=30)
    assert line.events == 50

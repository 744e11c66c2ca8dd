"""A dead letter's encoding: raw bytes kept as bytes, large events cut to their head, older entries still read;
and the once-a-minute notice of a full queue."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from etl.ops.replay import plan
from etl.pipeline.deadletter import TRUNCATED_HEAD_BYTES, DeadLetter, DeadLetterTruncated, decode
from etl.pipeline.dlqlog import FullNotice

MIB = 1024 * 1024


def test_control_bytes_cost_their_own_size_not_six_times_it() -> None:
    raw = b"\x01" * MIB
    letter = DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", raw)
    value = letter.encode()
    assert len(value) < MIB + 1024, len(value)
    assert decode(value).raw_bytes() == raw


def test_an_event_over_the_entry_limit_keeps_its_head_length_and_digest() -> None:
    raw = b"\x01" * MIB
    letter = DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", raw).bounded(64 * 1024)
    value = letter.encode()
    assert len(value) < 2 * TRUNCATED_HEAD_BYTES, len(value)
    back = decode(value)
    assert back.truncated and back.size == MIB and back.sha256 == hashlib.sha256(raw).hexdigest()
    assert back.event == raw[:TRUNCATED_HEAD_BYTES] and back.id == letter.id
    with pytest.raises(DeadLetterTruncated, match=f"first {TRUNCATED_HEAD_BYTES} of its {MIB} bytes"):
        back.raw_bytes()
    with pytest.raises(DeadLetterTruncated, match="cannot be replayed"):
        plan([back], batch_size=10)


def test_a_json_event_is_cut_the_same_way_and_small_ones_are_kept_whole() -> None:
    event = {"id": "e1", "args": {"x": "a" * 100_000}}
    small = DeadLetter("graph", "SinkDataError: too long", {"id": "e2"}).bounded(64 * 1024)
    assert decode(small.encode()).event == {"id": "e2"} and not small.truncated
    cut = decode(DeadLetter("graph", "SinkDataError: too long", event).bounded(64 * 1024).encode())
    assert cut.truncated and cut.event == orjson.dumps(event, option=orjson.OPT_SORT_KEYS)[:TRUNCATED_HEAD_BYTES]
    assert cut.describe()["event"].startswith('{"args":{"x":"aaa')


def test_entries_in_the_old_json_form_still_read() -> None:
    old = {"stage": "enrich", "reason": "BadEvent: x", "event": base64.b64encode(b"\xff\xfe").decode(),
           "attempts": 1, "first_failure": 10.0, "last_failure": 10.0, "event_encoding": "base64",
           "occurrences": 2, "id": "abc"}
    letter = decode(orjson.dumps(old))
    assert (letter.id, letter.raw_bytes(), letter.occurrences, letter.size) == ("abc", b"\xff\xfe", 2, 2)
    text = decode(orjson.dumps({**old, "event": "caf\u00e9", "event_encoding": "text"}))
    assert text.raw_bytes() == "caf\u00e9".encode()
    sink = decode(orjson.dumps({**old, "stage": "graph", "event": {"id": "e"}, "event_encoding": "json"}))
    assert sink.event == {"id": "e"} and plan([sink], batch_size=1)[0].payloads == [{"id": "e"}]


def test_the_full_queue_is_reported_at_most_once_a_minute_with_the_count_and_its_span() -> None:
    said: list[tuple[int, float]] = []
    now = [1000.0]
    notice = FullNotice(lambda n, s: said.append((n, round(s, 2))), interval_s=60, clock=lambda: now[0])
    notice.note(0)
    assert said == []
    notice.note(3)
    for _ in range(500):
        now[0] += 0.05
        notice.note(2)
    assert said == [(3, 0.0)]
    now[0] += 60
    notice.note(1)
    assert said == [(3, 0.0), (1001, 84.95)], "from the first not yet reported, 85 s ago: not 'the last minute'"
    now[0] += 600
    notice.note(4)
    assert said[-1] == (4, 0.0), "after a quiet spell, the span starts with the first new one"


def test_an_entry_limit_below_the_head_cuts_the_head_to_it() -> None:
    letter = DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", b"\x01" * 5000).bounded(100)
    assert letter.truncated and letter.event == b"\x01" * 100 and letter.size == 5000


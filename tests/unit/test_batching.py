"""The bridge's pure arithmetic: how much more a batch takes, and how long it backs off after failures."""

from __future__ import annotations

import pytest

from etl.pipeline.collect import room
from etl.pipeline.commit import DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_MIN_S, backoff_s


@pytest.mark.parametrize(("count", "size", "expected"), [
    (1, 10, 9),        # bounded by count: 10 messages
    (5, 900, 0),       # bytes: 100 left at 180 per message
    (2, 200, 8),       # bytes: 800 left at 100 each, count says 8 too
    (4, 400, 6),       # count: 6 left; bytes would take 6
    (3, 3, 7),         # tiny messages: count bounds it
])
def test_room_is_the_tighter_of_count_and_bytes(count: int, size: int, expected: int) -> None:
    assert room(10, 1000, count, size) == expected


def test_room_counts_empty_messages_as_one_byte() -> None:
    assert room(1000, 100, 4, 0) == 100  # the average size is 0: each counted as 1 byte


def test_room_is_negative_past_the_byte_bound() -> None:
    assert room(10, 1000, 2, 1200) < 1


def test_backoff_doubles_from_the_minimum_to_the_maximum() -> None:
    delays = [backoff_s(streak) for streak in range(0, 12)]
    assert delays[0] == delays[1] == DEFAULT_BACKOFF_MIN_S
    assert delays[2] == 2 * DEFAULT_BACKOFF_MIN_S
    assert delays == sorted(delays) and delays[-1] == DEFAULT_BACKOFF_MAX_S

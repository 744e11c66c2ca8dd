"""Which limits of an existing stream change to match the settings, and which are held back."""

from __future__ import annotations

from nats.js.api import DiscardPolicy, StreamConfig

from etl.natsio.stream_limits import NO_LIMIT_BYTES, StreamLimits, limit_changes

RAW = StreamLimits(max_bytes=1000, max_age_s=0, discard=DiscardPolicy.NEW)
ENRICHED = StreamLimits(max_bytes=1000, max_age_s=60, discard=DiscardPolicy.OLD)


def config(**fields: object) -> StreamConfig:
    return StreamConfig(name="S", subjects=["s"], **fields)  # type: ignore[arg-type]


def test_a_stream_with_the_limits_is_left_alone() -> None:
    have = config(max_bytes=1000, max_age=0.0, discard=DiscardPolicy.NEW)
    assert limit_changes(have, held_bytes=500, want=RAW) == ({}, None)


def test_an_unlimited_stream_gets_every_limit() -> None:
    have = config(max_bytes=NO_LIMIT_BYTES, max_age=0.0, discard=DiscardPolicy.OLD)
    assert limit_changes(have, held_bytes=0, want=ENRICHED) == (
        {"max_bytes": 1000, "max_age": 60.0, "duplicate_window": 60.0}, None)
    assert limit_changes(have, held_bytes=0, want=RAW) == ({"max_bytes": 1000, "discard": DiscardPolicy.NEW}, None)


def test_zero_means_no_limit() -> None:
    have = config(max_bytes=1000, max_age=60.0, discard=DiscardPolicy.NEW)
    unlimited = StreamLimits(max_bytes=0, max_age_s=0, discard=DiscardPolicy.NEW)
    assert limit_changes(have, held_bytes=0, want=unlimited) == ({"max_bytes": NO_LIMIT_BYTES, "max_age": 0.0}, None)
    assert limit_changes(config(), held_bytes=0, want=unlimited) == ({"discard": DiscardPolicy.NEW}, None)


def test_shrinking_below_the_content_waits_only_where_it_would_delete() -> None:
    have = config(max_bytes=NO_LIMIT_BYTES, max_age=60.0, discard=DiscardPolicy.OLD, duplicate_window=60.0)
    changes, held_back = limit_changes(have, held_bytes=5000, want=ENRICHED)
    assert changes == {} and held_back is not None and "5000 bytes" in held_back
    # Under discard "new" the server deletes nothing: it refuses new messages until the stream is below the limit.
    assert limit_changes(have, held_bytes=5000, want=RAW) == (
        {"max_bytes": 1000, "max_age": 0.0, "discard": DiscardPolicy.NEW}, None)


def test_a_max_age_under_the_duplicate_window_brings_the_window_down() -> None:
    # JetStream refuses a duplicate window (two minutes unless set) longer than max_age.
    assert ENRICHED.config_fields()["duplicate_window"] == 60.0
    assert "duplicate_window" not in StreamLimits(1000, 3600, DiscardPolicy.OLD).config_fields()
    have = config(max_bytes=1000, max_age=60.0, discard=DiscardPolicy.OLD, duplicate_window=60.0)
    assert limit_changes(have, held_bytes=0, want=ENRICHED) == ({}, None)

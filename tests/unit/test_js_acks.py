"""Counting a batch's JetStream publish answers: stored, duplicates, refusals, no stream. Pure."""

from __future__ import annotations

import nats.js.errors
import pytest

from etl.natsio.conn import NO_RESPONDERS_STATUS
from etl.natsio.js_acks import BatchAcks

STORED = b'{"stream":"EVENTS_ENRICHED","seq":7}'
DUPLICATE = b'{"stream":"EVENTS_ENRICHED","seq":7,"duplicate":true}'
TOO_LARGE = b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}'


def test_counts_stored_and_duplicates_until_complete() -> None:
    acks = BatchAcks(3)
    acks.add(STORED)
    acks.add(DUPLICATE)
    assert not acks.complete
    acks.add(STORED)
    assert acks.complete and (acks.stored, acks.duplicates, acks.error) == (2, 1, None)


def test_the_word_duplicate_elsewhere_is_not_a_duplicate() -> None:
    acks = BatchAcks(2)
    acks.add(b'{"stream":"duplicate","seq":1}')
    acks.add(b'{"stream":"S","seq":2,"duplicate":false}')
    assert (acks.stored, acks.duplicates) == (2, 0)


def test_a_refusal_keeps_the_first_error_and_still_counts_toward_completion() -> None:
    acks = BatchAcks(3)
    acks.add(TOO_LARGE)
    acks.add(b'{"error":{"code":503,"description":"JetStream system temporarily unavailable"}}')
    acks.add(STORED)
    assert acks.complete and (acks.stored, acks.failures) == (1, 2)
    assert isinstance(acks.error, nats.js.errors.BadRequestError)
    assert (acks.error.err_code, acks.error.description) == (10054, "message size exceeds maximum allowed")


def test_no_responders_means_no_stream_captures_the_subject() -> None:
    acks = BatchAcks(1)
    acks.add(b"", NO_RESPONDERS_STATUS)
    assert acks.complete and isinstance(acks.error, nats.js.errors.NoStreamResponseError)


@pytest.mark.parametrize("garbage", [b'{"error":', b'{"error":"flat"}', b'{"error":{"what":1}}'])
def test_an_unreadable_error_is_still_an_error(garbage: bytes) -> None:
    acks = BatchAcks(1)
    acks.add(garbage)
    assert isinstance(acks.error, nats.js.errors.APIError) and "unreadable" in str(acks.error)


def test_an_empty_batch_is_complete_at_once() -> None:
    assert BatchAcks(0).complete

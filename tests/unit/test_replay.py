"""Planning a dead-letter replay: by stage, in batches, with the right payloads."""

from __future__ import annotations

import pytest

from etl.ops.replay import plan
from etl.pipeline.dlq import DeadLetter


def test_entries_are_grouped_by_stage_in_batches() -> None:
    raws = [DeadLetter.for_raw("enrich", "r", b"%d" % i) for i in range(5)]
    sinks = [DeadLetter("graph", "r", {"id": str(i)}) for i in range(2)]
    batches = plan([*raws, *sinks], batch_size=2)
    assert [(b.stage, len(b.payloads)) for b in batches] == [("enrich", 2), ("enrich", 2), ("enrich", 1),
                                                             ("graph", 2)]
    assert batches[0].payloads == [b"0", b"1"] and batches[0].entry_ids == [raws[0].id, raws[1].id]
    assert batches[-1].payloads == [{"id": "0"}, {"id": "1"}]


def test_invalid_utf8_comes_back_byte_for_byte() -> None:
    [batch] = plan([DeadLetter.for_raw("enrich", "r", b"\xff\xfe")], batch_size=10)
    assert batch.payloads == [b"\xff\xfe"]


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        plan([DeadLetter("nowhere", "r", {})], batch_size=1)

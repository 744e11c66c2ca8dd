"""Replaying dead letters once their cause is fixed: each goes back to the queue of the stage it failed in.

Entries of stage ``enrich`` are raw events and go back through validation; entries of a sink stage are enriched
events and go straight back to that sink. An entry leaves the dead-letter queue only after its batch was
enqueued. If it fails again, it comes back as a new dead letter. A truncated entry (one that kept only the head
of its event) is never replayed: ``plan`` refuses it rather than send a fragment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from etl.pipeline.dlq import DeadLetter, DeadLetterStore
from etl.stages import NAMES


@dataclass(frozen=True)
class ReplayBatch:
    stage: str
    entry_ids: list[str]
    payloads: list[Any]  # raw bytes for ``enrich``, enriched event dicts for the sinks


def replayable(letters: Iterable[DeadLetter]) -> tuple[list[DeadLetter], list[DeadLetter]]:
    """``letters`` split into those that can be replayed and the truncated ones, which cannot."""
    whole: list[DeadLetter] = []
    truncated: list[DeadLetter] = []
    for letter in letters:
        (truncated if letter.truncated else whole).append(letter)
    return whole, truncated


def plan(letters: Iterable[DeadLetter], batch_size: int) -> list[ReplayBatch]:
    """Group entries by stage into batches of at most ``batch_size``. Unknown stages raise ``ValueError``, a
    truncated entry ``DeadLetterTruncated``: nothing is planned then."""
    by_stage: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        if letter.stage not in NAMES:
            raise ValueError(f"dead letter {letter.id} has unknown stage {letter.stage!r}")
        letter.check_replayable()
        by_stage.setdefault(letter.stage, []).append(letter)
    batches = []
    for stage, group in by_stage.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            payloads = [e.replay_payload() for e in chunk]
            batches.append(ReplayBatch(stage, [e.id for e in chunk], payloads))
    return batches


def replay(store: DeadLetterStore, letters: Sequence[DeadLetter], batch_size: int,
           send: Callable[[str, list[Any]], None]) -> int:
    """Re-enqueue ``letters`` through ``send(stage, payloads)``; remove each batch once sent. Returns the count."""
    done = 0
    for batch in plan(letters, batch_size):
        send(batch.stage, batch.payloads)
        store.remove(batch.entry_ids)
        done += len(batch.entry_ids)
    return done

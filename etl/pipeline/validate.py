"""Splitting a raw batch into valid events and dead letters. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etl.errors import BadEvent
from etl.pipeline.dlq import DeadLetter
from etl.pipeline.events import parse_event
from etl.stages import ENRICH

STAGE = ENRICH.name


def validate_batch(raws: Sequence[str | bytes], *, max_bytes: int) -> tuple[list[dict[str, Any]], list[DeadLetter]]:
    """Parse each raw event; return the valid ones and a dead letter (with the precise reason) for each bad one."""
    good: list[dict[str, Any]] = []
    bad: list[DeadLetter] = []
    for raw in raws:
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        try:
            good.append(parse_event(data, max_bytes=max_bytes))
        except BadEvent as e:
            bad.append(DeadLetter.for_raw(STAGE, f"BadEvent: {e.reason}", data))
    return good, bad

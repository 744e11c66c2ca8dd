"""What reached each sink: counts read from the servers themselves, for the local default and the tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from etl.broker import redis_client
from etl.config import Settings
from etl.pipeline.backlog import queue_depths
from etl.pipeline.dlq import DeadLetterStore, by_stage
from etl.stages import SINK_STAGES


@dataclass
class Counts:
    totals: dict[str, int] = field(default_factory=dict)  # by sink total (``SinkStage.total``): published, stored...
    dead_lettered: dict[str, int] = field(default_factory=dict)  # by stage: every one counted, kept or not
    dead_letters_not_kept: dict[str, int] = field(default_factory=dict)  # by stage: of those, dropped (DLQ full)
    queued: dict[str, int] = field(default_factory=dict)  # by queue

    def as_dict(self) -> dict[str, Any]:
        """Each total at the top level, beside the dead letters and the queues."""
        data = asdict(self)
        return {**data.pop("totals"), **data}


def sink_totals(settings: Settings) -> dict[str, int]:
    """What each sink holds, by ``SinkStage.total``, in stage order. Raises whatever a sink's counter raises."""
    return {stage.total: stage.count(settings) for stage in SINK_STAGES}


def queued_counts(settings: Settings) -> dict[str, int]:
    """Messages not yet acked in each Dramatiq queue: waiting, in flight and delayed retries."""
    with redis_client(settings) as client:
        return queue_depths(client)


def dead_letter_totals(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """Dead letters by stage, every one counted whether the queue kept it or not, and by stage those it did not
    keep (``etl.pipeline.dlq.by_stage``). Entries kept would undercount once the queue is full."""
    with redis_client(settings) as client:
        return by_stage(DeadLetterStore.from_settings(client, settings).summary())


def dead_letter_counts(settings: Settings) -> dict[str, int]:
    """Dead letters by stage, kept or not."""
    return dead_letter_totals(settings)[0]


def collect(settings: Settings) -> Counts:
    dead, not_kept = dead_letter_totals(settings)
    return Counts(totals=sink_totals(settings), dead_lettered=dead, dead_letters_not_kept=not_kept,
                  queued=queued_counts(settings))

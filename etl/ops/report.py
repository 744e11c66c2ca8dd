"""What reached each sink: counts read from the servers themselves, for the local default and the tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from etl.broker import redis_client
from etl.config import Settings
from etl.pipeline.backlog import queue_depths
from etl.pipeline.dlq import DeadLetterStore
from etl.stages import SINK_STAGES


@dataclass
class Counts:
    totals: dict[str, int] = field(default_factory=dict)  # by sink total (``SinkStage.total``): published, stored...
    dead_lettered: dict[str, int] = field(default_factory=dict)  # by stage
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


def dead_letter_counts(settings: Settings) -> dict[str, int]:
    """Dead letters by stage."""
    with redis_client(settings) as client:
        return DeadLetterStore.from_settings(client, settings).counts_by_stage()


def collect(settings: Settings) -> Counts:
    return Counts(totals=sink_totals(settings), dead_lettered=dead_letter_counts(settings),
                  queued=queued_counts(settings))

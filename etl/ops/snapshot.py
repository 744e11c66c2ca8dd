"""One reading of the whole pipeline, as ``etl status`` and ``etl dev`` take it, and the rates between two. Pure.

Durations are seconds, times Unix seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from etl.ops import lookup_status
from etl.ops.lookup_status import Lookups, MatchRates
from etl.stages import SINK_STAGES

# Stage totals, in pipeline order; the keys of ``Snapshot.totals`` and of the rates.
STAGES = ("received", *(s.total for s in SINK_STAGES), "dead_lettered")


@dataclass(frozen=True)
class Snapshot:
    """One reading of the whole pipeline. ``None`` (``null`` in JSON, ``?`` on screen) means unknown."""

    taken_at: float
    totals: dict[str, int | None]
    delivered: int | None = None  # raw consumer: stream sequence of the last message delivered to a bridge
    lag: int | None = None  # raw consumer: messages in the stream not yet delivered (num_pending)
    ack_pending: int | None = None  # delivered to a bridge, not yet acked (num_ack_pending)
    dead_letters: dict[str, int] | None = None  # by stage, kept or not
    dead_letters_not_kept: dict[str, int] | None = None  # by stage: of those, not kept (the queue was full)
    queues: dict[str, int] | None = None  # Dramatiq messages (batches) not yet acked, by queue
    breakers: dict[str, str | None] = field(default_factory=dict)  # sink -> closed / half-open / open
    bridge_paused: bool | None = None  # from etl_bridge_paused
    paused_estimate: bool | None = None  # from the deepest queue and MAX_QUEUE_DEPTH
    high_water: int = 0
    low_water: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # server that could not be read -> why
    metrics_unreachable: list[str] = field(default_factory=list)
    lookups: Lookups | None = None  # None: no metrics page answered; empty: none of them had lookup metrics

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rates(previous: Snapshot, current: Snapshot) -> dict[str, float | None]:
    """Per-second change of each stage total between two snapshots; ``None`` where a total is unknown or no time
    passed. A total that went down (dead-letter counters reset, a stream purged) gives a negative rate."""
    elapsed = current.taken_at - previous.taken_at
    out: dict[str, float | None] = {}
    for stage in STAGES:
        before, after = previous.totals.get(stage), current.totals.get(stage)
        out[stage] = None if before is None or after is None or elapsed <= 0 else (after - before) / elapsed
    return out


def match_rates(previous: Snapshot | None, current: Snapshot) -> MatchRates:
    """Indicator matches per second, by source and type, between two snapshots (``lookup_status.match_rates``)."""
    if previous is None:
        return lookup_status.match_rates(None, current.lookups, 0.0)
    return lookup_status.match_rates(previous.lookups, current.lookups, current.taken_at - previous.taken_at)

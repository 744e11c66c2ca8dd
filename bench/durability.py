"""Redis durability as a dimension of the benchmark: the pipeline end to end with the queues' Redis on
``appendfsync everysec`` (Redis's usual production setting) and on ``always`` (the local default's and the tests'),
in the same run, on the same servers.

The two alternate within each round and swap order from one round to the next (everysec, always; always,
everysec; ...), so a drift of this shared machine's speed hits both alike; each side's figure is the median of
its rounds. The first round of each also measures latency at fixed fractions of its rate.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import _servers, e2e
from bench.report import Row, target
from etl.dev.servers import DEFAULT_APPENDFSYNC

EVERYSEC, ALWAYS = "everysec", "always"
POLICIES = (EVERYSEC, ALWAYS)
MAIN_LABEL = {ALWAYS: "e2e", EVERYSEC: "e2e everysec"}  # the first round's runs; "e2e" is the table's main run
TARGET_RATIO = 0.9  # everysec within this of always
TARGET_EVERYSEC_EVENTS_S = 12_000

One = Callable[..., e2e.RunResult]


@dataclass
class Durability:
    """Every round's run of each policy, in the order measured."""

    runs: dict[str, list[e2e.RunResult]] = field(default_factory=lambda: {p: [] for p in POLICIES})

    def median(self, policy: str) -> float:
        rates = [r.rate for r in self.runs[policy] if r.complete]
        return statistics.median(rates) if rates else 0.0

    def as_json(self) -> dict[str, Any]:
        return {p: {"rates": [round(r.rate) for r in runs], "complete": [r.complete for r in runs],
                    "median": round(self.median(p))} for p, runs in self.runs.items()}


def label(policy: str, round_no: int) -> str:
    return MAIN_LABEL[policy] if round_no == 1 else f"e2e {policy}, round {round_no}"


def measure(stack: _servers.Stack, rounds: int, one: One, latency_s: float) -> Durability:
    """``rounds`` rounds of one run per policy; ``one(label, latency_s=...)`` runs the pipeline end to end. The
    queues' Redis is left on its default policy afterwards."""
    out = Durability()
    try:
        for round_no in range(1, rounds + 1):
            for policy in POLICIES if round_no % 2 else POLICIES[::-1]:
                _servers.set_appendfsync(stack, policy)
                out.runs[policy].append(one(label(policy, round_no), latency_s=latency_s if round_no == 1 else 0.0))
    finally:
        _servers.set_appendfsync(stack, DEFAULT_APPENDFSYNC)
    return out


def rows(durability: Durability) -> list[Row]:
    """The medians, everysec against always, and the issue's targets (printed, never asserted)."""
    everysec, always = durability.median(EVERYSEC), durability.median(ALWAYS)
    n = len(durability.runs[EVERYSEC])
    return [
        target(Row(f"end to end, all sinks, everysec (median of {n})", everysec, "ev/s"),
               at_least=TARGET_EVERYSEC_EVENTS_S,
               label=f">={TARGET_EVERYSEC_EVENTS_S // 1000}k"),
        target(Row("end to end, everysec vs always", everysec, "ev/s", f"always (median of {n})", always),
               TARGET_RATIO, label=f">={TARGET_RATIO}"),
    ]

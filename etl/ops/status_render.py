"""``etl status``'s screen and JSON: a snapshot and its rates as text. Pure."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping

from etl.config import Settings
from etl.ops import lookup_status
from etl.ops.lookup_status import UNKNOWN, MatchRates
from etl.ops.snapshot import STAGES, Snapshot
from etl.pipeline.backlog import deepest
from etl.stages import NAMES, SINK_STAGES


def to_json(snapshot: Snapshot, stage_rates: Mapping[str, float | None], indent: int | None = None,
            matches: MatchRates | None = None) -> str:
    """The snapshot and its rates (events per second; ``match_rates``: matches per second by source and type) as one
    JSON object; on one line unless ``indent``."""
    return json.dumps({**snapshot.as_dict(), "rates": dict(stage_rates), "match_rates": matches or {}},
                      indent=indent, sort_keys=True)


def _show(value: object) -> str:
    return UNKNOWN if value is None else str(value)


def _rate(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.1f}"


def _yes_no(value: bool | None) -> str:
    return UNKNOWN if value is None else "yes" if value else "no"


def _not_kept(by_stage: Mapping[str, int] | None) -> str:
    dropped = sum(by_stage.values()) if by_stage else 0
    return f"  ({dropped} not kept: the DLQ was full)" if dropped else ""


def _pairs(values: Mapping[str, object] | None, names: Iterable[str] = ()) -> str:
    if values is None:
        return UNKNOWN
    shown = {**{n: 0 for n in names}, **values}
    return "  ".join(f"{k} {_show(v)}" for k, v in shown.items()) or "none"


def render(snapshot: Snapshot, stage_rates: Mapping[str, float | None], settings: Settings,
           interval_s: float | None = None, matches: MatchRates | None = None, *, brief: bool = False) -> str:
    """The snapshot as a compact table for a terminal; ``interval_s`` is named in the heading when refreshing,
    ``matches`` are the match rates; ``brief`` puts the lookup section on one line."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.taken_at))
    every = f"  every {interval_s:g}s, Ctrl-C to quit" if interval_s else ""
    sources = {"received": f"acked by the bridge on {settings.nats_stream}/{settings.nats_consumer}",
               **{s.total: s.counted_as(settings) for s in SINK_STAGES},
               "dead_lettered": "every dead letter, kept or not (`etl dlq list`)"}
    lines = [f"etl status  {when}{every}", "", f"{'stage':<14}{'total':>10}{'rate/s':>10}  counted as"]
    for stage in STAGES:
        name = stage.replace("_", "-")
        lines.append(f"{name:<14}{_show(snapshot.totals.get(stage)):>10}{_rate(stage_rates.get(stage)):>10}"
                     f"  {sources[stage]}")
    depth = None if snapshot.queues is None else deepest(snapshot.queues)
    lines += [
        "",
        f"{'JetStream lag':<16}{_show(snapshot.lag)} waiting, {_show(snapshot.ack_pending)} awaiting ack",
        f"{'queues':<16}{_pairs(snapshot.queues)}  (deepest {_show(depth)}, pauses at {snapshot.high_water})",
        f"{'dead letters':<16}{_pairs(snapshot.dead_letters, NAMES)}{_not_kept(snapshot.dead_letters_not_kept)}",
        f"{'breakers':<16}{_pairs(snapshot.breakers)}",
        f"{'bridge paused':<16}{_yes_no(snapshot.bridge_paused)} (metrics)  "
        f"{_yes_no(snapshot.paused_estimate)} (estimated from queue depth)",
        "",
        *(lookup_status.render_brief if brief else lookup_status.render_lookups)(
            snapshot.lookups, matches or {}, snapshot.taken_at),
    ]
    lines += [f"! {source}: {why}" for source, why in sorted(snapshot.errors.items())]
    lines += [f"! metrics not answering: {url}" for url in snapshot.metrics_unreachable]
    return "\n".join(lines)

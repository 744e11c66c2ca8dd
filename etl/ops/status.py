"""``etl status``: what each stage holds and how fast it grows, read from the servers and the processes' metrics.

Totals come from the servers themselves (each sink stage's counter, ``etl.stages``), plus the raw stream's
durable consumer: ``received`` is what the bridge took from JetStream and acked, ``lag`` what waits in the stream
for a bridge; ``dead_lettered`` every dead letter counted, kept by the dead-letter queue or not (once full, it
keeps only samples). Breaker states, "bridge paused", and the lookup tables with their matches
(``etl.ops.lookup_status``) live only in process memory, so they come from the ``/metrics`` pages the caller
names; when none answers they are unknown, and "paused" is also estimated from the queue depths as the bridge
itself decides it. A server that cannot be read blanks its totals, its failure named after it.

``collect`` is the only I/O here (plus the ``watch`` loop); rates, parsing and rendering are pure. Durations are
seconds, times Unix seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from etl.breaker import State
from etl.broker import redis_client
from etl.config import Settings
from etl.envvalues import is_http_url, redact_url
from etl.ops import lookup_status
from etl.ops.lookup_status import Lookups, MatchRates
from etl.pipeline.backlog import Backpressure, deepest, queue_depths
from etl.pipeline.dlq import DeadLetterStore, by_stage
from etl.stages import NAMES, SINK_NAMES, SINK_STAGES

T = TypeVar("T")

# Stage totals, in pipeline order; the keys of ``Snapshot.totals`` and of the rates.
STAGES = ("received", *(s.total for s in SINK_STAGES), "dead_lettered")
METRICS_TIMEOUT_S = 1.0
BREAKER_METRIC = "etl_circuit_breaker_state"
PAUSED_METRIC = "etl_bridge_paused"
DEPTH_METRIC = "etl_queue_depth"
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, then erase the screen
MAX_ERROR_CHARS = 200
UNKNOWN = "?"


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


@dataclass(frozen=True)
class ProcessMetrics:
    """The metrics ``status`` needs from ``/metrics`` pages: breaker state by sink, the paused gauge, and the lookup
    tables with their matches."""

    breakers: dict[str, int] = field(default_factory=dict)
    paused: bool | None = None
    lookups: Lookups | None = None

    def merge(self, other: ProcessMetrics) -> ProcessMetrics:
        """Both pages together: the worst state of each breaker; paused when any bridge is; lookups as
        ``lookup_status`` merges them."""
        breakers = dict(self.breakers)
        for sink, state in other.breakers.items():
            breakers[sink] = max(state, breakers.get(sink, state))
        known = [p for p in (self.paused, other.paused) if p is not None]
        return ProcessMetrics(breakers, any(known) if known else None,
                              lookup_status.merge(self.lookups, other.lookups))


def parse_metrics(text: str) -> ProcessMetrics:
    """Read the breaker and paused gauges from Prometheus text; other labels (``pid``...) fold into the highest
    value. Raises ``ValueError`` when the text is not the Prometheus format.

    Every process that imports ``etl.runtime.metrics`` exports ``etl_bridge_paused`` (an unlabelled gauge starts at
    0), so it is believed only from a page that also has ``etl_queue_depth`` samples: only the bridge exports those
    (its ``RedisGauges`` thread, ``etl.pipeline.redisgauges``).
    """
    breakers: dict[str, int] = {}
    paused: bool | None = None
    is_bridge = False
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    for sample in samples:
        if sample.name == BREAKER_METRIC and "sink" in sample.labels:
            sink = sample.labels["sink"]
            breakers[sink] = max(int(sample.value), breakers.get(sink, 0))
        elif sample.name == PAUSED_METRIC:
            paused = bool(paused) or sample.value >= 1
        is_bridge = is_bridge or sample.name == DEPTH_METRIC
    return ProcessMetrics(breakers, paused if is_bridge else None, lookup_status.parse_lookups(samples))


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host (nothing else may be fetched, e.g. ``file://``); raises
    ``ValueError`` otherwise."""
    if not is_http_url(url):
        raise ValueError(f"a metrics URL must be http:// or https:// with a host, got {redact_url(url)!r}")
    return url


def paused_estimate(depths: Mapping[str, int], pressure: Backpressure) -> bool | None:
    """What the bridge decides from these depths: paused at or above high water, running at or below low water,
    and unknown in between, where it depends on which mark was crossed last."""
    depth = deepest(depths)
    if depth >= pressure.high_water:
        return True
    if depth <= pressure.low_water:
        return False
    return None


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


# --- collection (I/O) ---


@dataclass(frozen=True)
class _NatsReading:
    """The enriched stream's size and the raw consumer's counters (see ``Snapshot``); ``None``: not read."""

    received: int | None = None
    delivered: int | None = None
    lag: int | None = None
    ack_pending: int | None = None


async def _read_nats(settings: Settings) -> _NatsReading:
    """Read both over one connection. Raises ``NatsUnavailable`` (and other driver errors)."""
    from nats.js.errors import NotFoundError

    from etl.natsio.conn import close, connect

    async def messages(stream: str) -> int:
        try:
            return int((await js.stream_info(stream)).state.messages) if stream else 0
        except NotFoundError:
            return 0

    nc = await connect(settings, name="etl-status")
    try:
        js = nc.jetstream()
        try:
            info = await js.consumer_info(settings.nats_stream, settings.nats_consumer)
        except NotFoundError:  # no bridge ever ran: everything in the raw stream waits
            return _NatsReading(0, 0, await messages(settings.nats_stream), 0)
        delivered = info.delivered.stream_seq if info.delivered else 0
        ack_pending = info.num_ack_pending or 0
        # The raw stream captures only the raw subject, and the consumer delivers all of it in sequence order.
        return _NatsReading(delivered - ack_pending, delivered, info.num_pending or 0, ack_pending)
    finally:
        await close(nc)


def _read_redis(settings: Settings) -> tuple[dict[str, int], tuple[dict[str, int], dict[str, int]]]:
    """Queue depths, and dead letters by stage (counted, and not kept: ``by_stage``), over one client."""
    client = redis_client(settings)
    try:
        store = DeadLetterStore.from_settings(client, settings)
        return queue_depths(client), by_stage(store.summary())
    finally:
        client.close()


def fetch_metrics(urls: Iterable[str], timeout_s: float = METRICS_TIMEOUT_S) -> tuple[ProcessMetrics | None,
                                                                                        list[str]]:
    """Every page merged (``None`` when none answered) and the URLs that did not answer, redacted. Never raises."""
    merged: ProcessMetrics | None = None
    failed: list[str] = []
    for url in urls:
        try:
            with urllib.request.urlopen(check_url(url), timeout=timeout_s) as reply:  # noqa: S310 - http(s) only
                page = parse_metrics(reply.read().decode("utf-8", "replace"))
        except (OSError, ValueError):  # URLError and timeouts are OSErrors
            failed.append(redact_url(url))
            continue
        merged = page if merged is None else merged.merge(page)
    return merged, failed


def _guarded(errors: dict[str, str], source: str, read: Callable[[], T]) -> T | None:
    """``read()``, or ``None`` with the reason kept in ``errors[source]``: one server down blanks its fields only."""
    try:
        return read()
    except Exception as e:  # noqa: BLE001 - any failure of a source means "unknown", shown with its reason
        errors[source] = f"{type(e).__name__}: {e}".splitlines()[0][:MAX_ERROR_CHARS]
        return None


def collect(settings: Settings, metrics_urls: Sequence[str] = (), *,
            clock: Callable[[], float] = time.time) -> Snapshot:
    """Read every source once. Never raises for a source that cannot be read: see ``Snapshot.errors``."""
    errors: dict[str, str] = {}
    sinks = {stage.total: _guarded(errors, stage.server, partial(stage.count, settings)) for stage in SINK_STAGES}
    nats = _guarded(errors, "nats", lambda: asyncio.run(_read_nats(settings))) or _NatsReading()
    depths, (dead, not_kept) = _guarded(errors, "redis", lambda: _read_redis(settings)) or (None, (None, None))
    metrics, unreachable = fetch_metrics(metrics_urls)
    pressure = Backpressure.from_settings(settings)
    return Snapshot(
        taken_at=clock(),
        totals={"received": nats.received, **sinks, "dead_lettered": None if dead is None else sum(dead.values())},
        delivered=nats.delivered, lag=nats.lag, ack_pending=nats.ack_pending, dead_letters=dead,
        dead_letters_not_kept=not_kept, queues=depths,
        breakers={s: _state_name(metrics.breakers.get(s)) if metrics else None for s in SINK_NAMES},
        bridge_paused=metrics.paused if metrics else None,
        paused_estimate=None if depths is None else paused_estimate(depths, pressure),
        high_water=pressure.high_water, low_water=pressure.low_water, errors=errors,
        metrics_unreachable=unreachable, lookups=(metrics.lookups or Lookups()) if metrics else None)


def _state_name(value: int | None) -> str | None:
    """``closed``, ``half-open`` or ``open`` for a value of the breaker metric; ``None`` for anything else."""
    try:
        return None if value is None else State(value).name.lower().replace("_", "-")
    except ValueError:
        return None


# --- rendering (pure) ---


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
           interval_s: float | None = None, matches: MatchRates | None = None) -> str:
    """The snapshot as a compact table for a terminal; ``interval_s`` is named in the heading when refreshing,
    ``matches`` are the match rates."""
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
        *lookup_status.render_lookups(snapshot.lookups, matches or {}, snapshot.taken_at),
    ]
    lines += [f"! {source}: {why}" for source, why in sorted(snapshot.errors.items())]
    lines += [f"! metrics not answering: {url}" for url in snapshot.metrics_unreachable]
    return "\n".join(lines)


# --- the loop (I/O) ---


def measure(settings: Settings, metrics_urls: Sequence[str], interval_s: float,
            sleep: Callable[[float], None] = time.sleep) -> tuple[Snapshot, dict[str, float | None], MatchRates]:
    """Two snapshots ``interval_s`` seconds apart: the second, and the stage and match rates between them."""
    first = collect(settings, metrics_urls)
    sleep(interval_s)
    second = collect(settings, metrics_urls)
    return second, rates(first, second), match_rates(first, second)


def watch(settings: Settings, metrics_urls: Sequence[str], interval_s: float, out: Callable[[str], None], *,
          as_json: bool = False, clear: bool = True, sleep: Callable[[float], None] = time.sleep) -> None:
    """Redraw the status every ``interval_s`` seconds until interrupted (``KeyboardInterrupt`` propagates).

    ``clear`` erases the screen before each frame (ANSI); ``as_json`` writes one JSON line per reading instead.
    """
    previous: Snapshot | None = None
    while True:
        current = collect(settings, metrics_urls)
        stage_rates = rates(previous, current) if previous else dict.fromkeys(STAGES)
        matches = match_rates(previous, current)
        if as_json:
            out(to_json(current, stage_rates, matches=matches))
        else:
            out((CLEAR_SCREEN if clear else "") + render(current, stage_rates, settings, interval_s, matches))
        previous = current
        sleep(interval_s)

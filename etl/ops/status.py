"""``etl status``: what each stage holds and how fast it grows, read from the servers and the processes' metrics.

Totals come from the servers themselves (each sink stage's counter, ``etl.stages``), plus the raw stream's
durable consumer: ``received`` is what the bridge took from JetStream and acked, ``lag`` what waits in the stream
for a bridge; ``dead_lettered`` every dead letter counted, kept by the dead-letter queue or not (once full, it
keeps only samples). Breaker states, "bridge paused", and the lookup tables with their matches
(``etl.ops.lookup_status``) live only in process memory, so they come from the ``/metrics`` pages the caller
names; when none answers they are unknown, and "paused" is also estimated from the queue depths as the bridge
itself decides it. A server that cannot be read blanks its totals, its failure named after it.

``collect`` is the only I/O here (plus the ``watch`` loop); parsing is pure, and so are the snapshot and its rates
(``etl.ops.snapshot``) and the screen and JSON (``etl.ops.status_render``). Durations are seconds, times Unix
seconds.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from etl.breaker import State
from etl.broker import redis_client
from etl.config import Settings
from etl.envvalues import is_http_url, redact_url
from etl.ops import lookup_status
from etl.ops.lookup_status import Lookups, MatchRates
from etl.ops.snapshot import STAGES, Snapshot, match_rates, rates
from etl.ops.status_render import render, to_json
from etl.pipeline.backlog import Backpressure, deepest, queue_depths
from etl.pipeline.dlq import DeadLetterStore, by_stage
from etl.stages import SINK_NAMES, SINK_STAGES

# What the callers of ``etl status`` use, wherever it is defined.
__all__ = ["STAGES", "ProcessMetrics", "Snapshot", "check_url", "collect", "fetch_metrics", "match_rates",
           "measure", "parse_metrics", "paused_estimate", "rates", "render", "to_json", "watch"]

T = TypeVar("T")

METRICS_TIMEOUT_S = 1.0
BREAKER_METRIC = "etl_circuit_breaker_state"
PAUSED_METRIC = "etl_bridge_paused"
DEPTH_METRIC = "etl_queue_depth"
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, then erase the screen
MAX_ERROR_CHARS = 200


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

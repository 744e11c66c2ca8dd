"""Circuit breakers against real servers: a sink's server goes down for longer than the retries would last.

First in process (a real Redis, the real middleware stack of ``build_app``, a Dramatiq worker, a fake sink we can
switch off), with a control run whose breaker never opens; then the whole pipeline in real processes, with a
private PostgreSQL that the test stops and restarts.
"""

from __future__ import annotations

import asyncio
import math
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest
from prometheus_client import REGISTRY

from etl.app import build_app
from etl.breaker import DEFAULT_MAX_COOLDOWN_GROWTH, State
from etl.broker import redis_client
from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.errors import SinkUnavailable
from etl.natsio.conn import connect
from etl.ops import report
from etl.pipeline.rawstream import ensure_raw_stream
from etl.stages import TIMESCALE
from tests.waiting import wait_for

# A short retry budget: RETRY_MAX retries of at most RETRY_MAX_BACKOFF_MS each.
RETRY_MAX = 4
RETRY_MIN_BACKOFF_MS = 50
RETRY_MAX_BACKOFF_MS = 100
RETRY_BUDGET_S = RETRY_MAX * RETRY_MAX_BACKOFF_MS / 1000
BREAKER_FAILURES = 3
WAIT_S = 30.0


def probes_bound(outage_s: float, cooldown_s: float) -> int:
    """Most probes one breaker sends during ``outage_s``: cool-downs double up to the cap, then repeat."""
    probes, elapsed, cooldown = 0, 0.0, cooldown_s
    while elapsed < outage_s:
        elapsed += cooldown
        probes += 1
        cooldown = min(cooldown * 2, cooldown_s * DEFAULT_MAX_COOLDOWN_GROWTH)
    return probes


def breaker_state(sink: str) -> float | None:
    return REGISTRY.get_sample_value("etl_circuit_breaker_state", {"sink": sink})


class SwitchableSink:
    """Stands in for a sink whose server we can switch off; counts attempts while it is off."""

    def __init__(self) -> None:
        self.down = True
        self.attempts_while_down = 0
        self.written: list[str] = []
        self._lock = threading.Lock()

    def write(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            if self.down:
                self.attempts_while_down += 1
                raise SinkUnavailable("connection refused")
            self.written += [e["id"] for e in events]


IN_PROCESS_MESSAGES = 30
IN_PROCESS_THREADS = 2
IN_PROCESS_COOLDOWN_MS = 200
IN_PROCESS_OUTAGE_S = 2.0


@dataclass
class Outcome:
    sink: SwitchableSink
    state_during_outage: float | None
    dead_letters: dict[str, int]


def switchable_store(app: Any, actor_name: str) -> tuple[SwitchableSink, dramatiq.Actor[..., None]]:
    """A sink that can be switched off, behind an actor on the timescale queue of ``app``'s broker (so its
    breaker and retries apply)."""
    sink = SwitchableSink()

    @dramatiq.actor(broker=app.broker, queue_name=TIMESCALE.queue, actor_name=actor_name)
    def store(events: list[dict[str, Any]]) -> None:
        sink.write(events)

    return sink, store


def run_outage(settings: Settings) -> Outcome:
    """Send messages to a switched-off sink through the real middleware, hold the outage, switch it on, drain."""
    app = build_app(settings)
    sink, store = switchable_store(app, "switchable_store")
    for i in range(IN_PROCESS_MESSAGES):
        store.send([{"id": f"event-{i}"}])
    worker = dramatiq.Worker(app.broker, worker_threads=IN_PROCESS_THREADS, worker_timeout=50)
    worker.start()
    try:
        time.sleep(IN_PROCESS_OUTAGE_S)  # the outage itself
        state = breaker_state(TIMESCALE.queue)
        sink.down = False
        app.broker.join(TIMESCALE.queue, timeout=int(WAIT_S * 1000))
    finally:
        worker.stop()
        app.broker.close()
    return Outcome(sink, state, app.dead_letters().counts_by_stage())


def test_an_open_circuit_delays_messages_without_spending_their_retries(make_settings: Callable[..., Settings],
                                                                        ) -> None:
    settings = make_settings(BREAKER_FAILURES=BREAKER_FAILURES, BREAKER_COOLDOWN_MS=IN_PROCESS_COOLDOWN_MS,
                             RETRY_MAX=RETRY_MAX, RETRY_MIN_BACKOFF_MS=RETRY_MIN_BACKOFF_MS,
                             RETRY_MAX_BACKOFF_MS=RETRY_MAX_BACKOFF_MS)
    assert IN_PROCESS_OUTAGE_S > 4 * RETRY_BUDGET_S, "the outage outlasts the retries by far"

    outcome = run_outage(settings)

    sink = outcome.sink
    bound = (BREAKER_FAILURES + IN_PROCESS_THREADS - 1
             + probes_bound(IN_PROCESS_OUTAGE_S, IN_PROCESS_COOLDOWN_MS / 1000))
    print(f"\n{IN_PROCESS_MESSAGES} messages, outage {IN_PROCESS_OUTAGE_S}s (retry budget {RETRY_BUDGET_S}s): "
          f"{sink.attempts_while_down} attempts while down (bound {bound})")
    assert outcome.state_during_outage in (State.OPEN, State.HALF_OPEN)
    assert sorted(sink.written) == sorted(f"event-{i}" for i in range(IN_PROCESS_MESSAGES)), "each once"
    assert outcome.dead_letters == {}, "nothing dead-lettered"
    assert sink.attempts_while_down <= bound < IN_PROCESS_MESSAGES
    assert breaker_state(TIMESCALE.queue) == State.CLOSED


def test_without_the_breaker_opening_the_same_outage_dead_letters_everything(
        make_settings: Callable[..., Settings]) -> None:
    """The control: the scenario above is one that retries alone do not survive."""
    settings = make_settings(BREAKER_FAILURES=10**6, BREAKER_COOLDOWN_MS=IN_PROCESS_COOLDOWN_MS,
                             RETRY_MAX=RETRY_MAX, RETRY_MIN_BACKOFF_MS=RETRY_MIN_BACKOFF_MS,
                             RETRY_MAX_BACKOFF_MS=RETRY_MAX_BACKOFF_MS)

    outcome = run_outage(settings)

    assert outcome.state_during_outage == State.CLOSED
    assert outcome.sink.written == [] and outcome.dead_letters == {TIMESCALE.queue: IN_PROCESS_MESSAGES}
    assert outcome.sink.attempts_while_down == IN_PROCESS_MESSAGES * (RETRY_MAX + 1)


# --- the whole pipeline, in real processes, with a private PostgreSQL that goes down ---------------------------

BEFORE_OUTAGE = 100
DURING_OUTAGE = 300
BATCH = 10
PIPELINE_COOLDOWN_MS = 500
OUTAGE_S = 6.0
TIMESCALE_THREADS = TIMESCALE.pool.processes * TIMESCALE.pool.threads  # the pool's default, all its processes
OPENED = re.compile(r"circuit breaker timescale opened after (\d+ connection failures in a row|its probe failed)")
PG_STOP_TIMEOUT_S = 15.0


@pytest.fixture
def settings(make_settings: Callable[..., Settings], private_postgres: devservers.Server) -> Settings:
    return make_settings(PG_PORT=private_postgres.port, MAX_BATCH_SIZE=BATCH, BATCH_LINGER_MS=20,
                         BREAKER_FAILURES=BREAKER_FAILURES, BREAKER_COOLDOWN_MS=PIPELINE_COOLDOWN_MS,
                         RETRY_MAX=RETRY_MAX, RETRY_MIN_BACKOFF_MS=RETRY_MIN_BACKOFF_MS,
                         RETRY_MAX_BACKOFF_MS=RETRY_MAX_BACKOFF_MS,
                         LOG_LEVEL="DEBUG")  # each delayed message is logged at DEBUG ("was skipped")


@pytest.fixture
def pipeline(settings: Settings, start_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return start_pipeline(settings)


async def publish(settings: Settings, events: list[bytes]) -> None:
    nc = await connect(settings, name="test-publisher")
    try:
        js = nc.jetstream()
        await ensure_raw_stream(js, settings)
        await asyncio.gather(*(js.publish(settings.nats_subject_raw, e) for e in events))
    finally:
        await nc.close()


def waiting_in_redis(settings: Settings, queue: str) -> int:
    """Messages of ``queue`` not yet acked: waiting, in flight, or delayed (Dramatiq's Redis layout)."""
    with redis_client(settings) as client:
        return int(client.hlen(f"dramatiq:{queue}.msgs")) + int(client.hlen(f"dramatiq:{queue}.DQ.msgs"))


def stop_fast(server: devservers.Server) -> None:
    """PostgreSQL's fast shutdown (SIGINT): it ends open sessions instead of waiting for them, as SIGTERM does."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    server.proc.wait(PG_STOP_TIMEOUT_S)


def test_a_postgres_outage_longer_than_the_retries_ends_with_everything_stored_once(
        settings: Settings, pipeline: Pipeline, private_postgres: devservers.Server) -> None:
    events = list(generate(BEFORE_OUTAGE + DURING_OUTAGE, hosts=10, seed=5))
    log_path = pipeline.log_dir / "worker-timescale.log"

    def log() -> str:
        return log_path.read_text(errors="replace")

    asyncio.run(publish(settings, events[:BEFORE_OUTAGE]))
    wait_for(lambda: TIMESCALE.count(settings) == BEFORE_OUTAGE, timeout_s=WAIT_S,
             describe=lambda: pipeline.log_tail("worker-timescale"))
    failures_before = log().count("SinkUnavailable: timescale table")

    stop_fast(private_postgres)
    down_at = time.monotonic()
    asyncio.run(publish(settings, events[BEFORE_OUTAGE:]))
    wait_for(lambda: OPENED.search(log()), timeout_s=WAIT_S, describe=lambda: pipeline.log_tail("worker-timescale"))
    time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))  # hold the outage: that is the scenario
    assert report.dead_letter_counts(settings) == {}, "delayed, not dead-lettered, during the outage"
    assert waiting_in_redis(settings, TIMESCALE.queue) > 0, "the batches wait in Redis"
    private_postgres.start()
    outage_s = time.monotonic() - down_at

    def settled() -> report.Counts | None:
        counts = report.collect(settings)
        total = BEFORE_OUTAGE + DURING_OUTAGE
        done = (counts.totals["stored"], counts.totals["merged"], counts.totals["published"]) == (total, total, total)
        return counts if done and counts.dead_lettered == {} and not any(counts.queued.values()) else None

    wait_for(settled, timeout_s=WAIT_S, describe=lambda: f"{report.collect(settings)}\n"
             f"{pipeline.log_tail('worker-timescale')}")
    text = log()
    failures = text.count("SinkUnavailable: timescale table") - failures_before
    openings = OPENED.findall(text)
    from_closed = sum(1 for why in openings if why != "its probe failed")
    bound = (from_closed * (BREAKER_FAILURES + TIMESCALE_THREADS - 1)
             + probes_bound(outage_s, PIPELINE_COOLDOWN_MS / 1000))
    batches = math.ceil(DURING_OUTAGE / BATCH)
    print(f"\noutage {outage_s:.1f}s (retry budget {RETRY_BUDGET_S:.1f}s): {failures} attempts hit the dead server "
          f"(bound {bound}), {len(openings)} openings, {text.count('was skipped')} delays of >= {batches} batches")
    assert outage_s > 10 * RETRY_BUDGET_S
    assert "circuit breaker timescale closed" in text
    assert 1 <= from_closed and failures <= bound < batches, "most batches never met the dead server"
    assert text.count("was skipped") >= batches - failures, "the others were delayed"
    assert "Retries exceeded" not in text

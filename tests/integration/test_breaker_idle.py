"""A breaker that opened and then gets no message: once its cool-down has passed it reports half-open, not open.

Found live: a worker process whose breaker opened and that got no further batch of that queue kept exporting
``etl_circuit_breaker_state`` 2 after the server recovered, so the breaker alert fired on a healthy sink. First in
process (a real Redis, the real middleware stack of ``build_app``, a Dramatiq worker, a sink we can switch off),
then through the whole pipeline in real processes, with a private PostgreSQL that the test stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import dramatiq

from etl.app import build_app
from etl.breaker import DEFAULT_MAX_COOLDOWN_GROWTH, State
from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.stages import TIMESCALE
from tests.integration.test_circuit_breaker import (
    BREAKER_FAILURES,
    WAIT_S,
    breaker_state,
    publish,
    stop_fast,
    switchable_store,
    waiting_in_redis,
)
from tests.integration.test_health_metrics import value
from tests.waiting import wait_for

IDLE_COOLDOWN_MS = 1500


def test_a_breaker_that_gets_no_further_message_reports_half_open_once_its_cooldown_has_passed(
        make_settings: Callable[..., Settings]) -> None:
    """The worker takes exactly the failures that open the breaker, then nothing: it must not report open for ever."""
    # No retries: nothing comes back to the worker after the failures that open the breaker.
    app = build_app(make_settings(BREAKER_FAILURES=BREAKER_FAILURES, BREAKER_COOLDOWN_MS=IDLE_COOLDOWN_MS,
                                  RETRY_MAX=0))
    sink, store = switchable_store(app, "idle_store")
    for i in range(BREAKER_FAILURES):
        store.send([{"id": f"event-{i}"}])
    worker = dramatiq.Worker(app.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: sink.attempts_while_down == BREAKER_FAILURES and breaker_state(TIMESCALE.queue) == State.OPEN,
                 timeout_s=WAIT_S, interval_s=0.05)
        opened_at = time.monotonic()
        wait_for(lambda: breaker_state(TIMESCALE.queue) == State.HALF_OPEN, timeout_s=WAIT_S,
                 describe=lambda: f"the breaker still reports {breaker_state(TIMESCALE.queue)}")
        assert time.monotonic() - opened_at > IDLE_COOLDOWN_MS / 1000 / 2, "not long before the cool-down"
        assert sink.attempts_while_down == BREAKER_FAILURES, "no probe was sent"
        sink.down = False
        store.send([{"id": "after"}])  # the probe slot is free: this message goes through and closes the breaker
        app.broker.join(TIMESCALE.queue, timeout=int(WAIT_S * 1000))
        assert sink.written == ["after"] and breaker_state(TIMESCALE.queue) == State.CLOSED
    finally:
        worker.stop()
        app.broker.close()


PIPELINE_COOLDOWN_MS = 500
EVENTS = 100
BATCH = 10


def test_a_pool_whose_batches_are_all_dead_lettered_reports_half_open_not_open(
        make_settings: Callable[..., Settings], private_postgres: devservers.Server,
        start_pipeline: Callable[..., Pipeline]) -> None:
    """Without retries every batch fails once and is dead-lettered, so after the last one no message comes."""
    # One process per pool: the pool's gauge is that process's breaker, not the highest of several.
    settings = make_settings(PG_PORT=private_postgres.port, MAX_BATCH_SIZE=BATCH, BATCH_LINGER_MS=20,
                             BREAKER_FAILURES=BREAKER_FAILURES, BREAKER_COOLDOWN_MS=PIPELINE_COOLDOWN_MS,
                             RETRY_MAX=0, WORKER_PROCESSES=1)
    pipeline = start_pipeline(settings)
    port = pipeline.ports[f"worker-{TIMESCALE.name}"]

    def state() -> float | None:
        return value(port, "etl_circuit_breaker_state", sink=TIMESCALE.queue)

    stop_fast(private_postgres)
    asyncio.run(publish(settings, list(generate(EVENTS, hosts=10, seed=7))))

    def all_dead_lettered() -> bool:
        dead = report.dead_letter_counts(settings).get(TIMESCALE.queue, 0)
        return dead == EVENTS and waiting_in_redis(settings, TIMESCALE.queue) == 0

    wait_for(all_dead_lettered, timeout_s=WAIT_S, describe=lambda: f"{report.collect(settings)}\n"
             f"{pipeline.log_tail('worker-timescale')}")
    log = (pipeline.log_dir / "worker-timescale.log").read_text(errors="replace")
    assert "circuit breaker timescale opened" in log
    longest_cooldown_s = PIPELINE_COOLDOWN_MS / 1000 * DEFAULT_MAX_COOLDOWN_GROWTH
    wait_for(lambda: state() == State.HALF_OPEN, timeout_s=longest_cooldown_s + WAIT_S,
             describe=lambda: f"the pool still reports {state()}\n{pipeline.log_tail('worker-timescale')}")

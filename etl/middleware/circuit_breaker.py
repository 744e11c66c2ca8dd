"""One circuit breaker per sink queue, so a pool whose server is down fails fast instead of hammering it.

While a sink's breaker refuses, a message of that queue is not run: a copy is enqueued on the queue's delay queue
for the wait the breaker names (plus a little jitter), and the message is skipped (``SkipMessage``), which acks
the current copy. Dramatiq emits ``after_skip_message`` instead of ``after_process_message`` for it, so
``Retries`` never sees it (its ``retries`` option travels unchanged) and ``DeadLetterOnFailure`` ignores it (it
is not failed). The copy is enqueued *before* the original is acked, exactly as ``Retries`` does it: a crash in
between delivers the batch twice, which the idempotent sinks absorb; nothing is lost.

Only attempts count: success closes, ``SinkUnavailable`` is a connection failure, anything else releases a probe
slot without a verdict (see ``etl.breaker``). Transitions are logged and exported as ``etl_circuit_breaker_state``.
Each worker process has its own breakers, so a dead server sees at most one probe per process per cool-down.

An opening arms a daemon timer for its cool-down, which calls ``expire``: a process that gets no further message
of that queue reports half-open once the cool-down has passed, rather than open for ever. Timers are armed by
transitions, so always in the worker process that owns the breaker, and cancelled at worker shutdown.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, SkipMessage

from etl.breaker import CircuitBreaker, State
from etl.errors import SinkUnavailable
from etl.runtime.metrics import BREAKER_STATE
from etl.stages import SINK_STAGES

log = logging.getLogger(__name__)

SINK_QUEUES = tuple(stage.queue for stage in SINK_STAGES)
DELAY_JITTER_SHARE = 0.1  # spread delayed messages over 10% more than the wait, so they do not return at once
MS_PER_S = 1000


class CircuitBreakers(Middleware):
    """A breaker per sink queue: ``failures`` connection failures in a row open it for ``cooldown_s`` seconds."""

    def __init__(self, *, failures: int, cooldown_s: float, queues: Iterable[str] = SINK_QUEUES) -> None:
        self._failures = failures
        self._breakers = {queue: CircuitBreaker(queue, failures=failures, cooldown_s=cooldown_s,
                                                on_change=self._on_change) for queue in queues}
        self._announced: set[str] = set()
        self._lock = threading.Lock()
        self._attempt = threading.local()  # the breaker the current thread's message went through, if any
        # One cool-down timer per open breaker. Lock order: a breaker's lock, then this one (_on_change runs with
        # the breaker's held); a timer calls the breaker without holding this one.
        self._timers: dict[str, threading.Timer] = {}
        self._timers_lock = threading.Lock()
        self._stopped = False

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        """Let the message through, or delay it without spending a retry and raise ``SkipMessage``."""
        self._attempt.breaker = None
        breaker = self._breaker_for(message.queue_name)
        if breaker is None:
            return
        wait_s = breaker.allow()
        if wait_s is None:
            self._attempt.breaker = breaker
            return
        delay_ms = math.ceil(wait_s * MS_PER_S * (1 + random.uniform(0, DELAY_JITTER_SHARE)))
        try:
            # The stubs want a Message; the proxy stands for it, and dramatiq's own Retries enqueues it the same way.
            broker.enqueue(message, delay=delay_ms)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - without the copy, skipping would lose the message: run it instead
            log.exception("could not delay message %s on %s; running it despite the open circuit",
                          message.message_id, message.queue_name)
            self._attempt.breaker = breaker
            return
        log.debug("circuit %s is %s: message %s delayed by %d ms", breaker.name, breaker.state.name,
                  message.message_id, delay_ms)
        raise SkipMessage(f"circuit {breaker.name} is {breaker.state.name.lower()}; delayed by {delay_ms} ms")

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        breaker: CircuitBreaker | None = getattr(self._attempt, "breaker", None)
        self._attempt.breaker = None
        if breaker is None:
            return
        if exception is None:
            breaker.record_success()
        elif isinstance(exception, SinkUnavailable):
            breaker.record_failure()
        else:
            breaker.release()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        # Another middleware skipped a message this one let through: it may hold the probe slot.
        breaker: CircuitBreaker | None = getattr(self._attempt, "breaker", None)
        self._attempt.breaker = None
        if breaker is not None:
            breaker.release()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Cancel the cool-down timers: the worker threads are done, so no transition arms a new one."""
        with self._timers_lock:
            self._stopped = True
            timers, self._timers = list(self._timers.values()), {}
        for timer in timers:
            timer.cancel()

    def _arm(self, name: str, delay_s: float | None) -> None:
        """Replace the cool-down timer of breaker ``name`` with one firing in ``delay_s`` seconds (None: none)."""
        with self._timers_lock:
            old = self._timers.pop(name, None)
            if old is not None:
                old.cancel()
            if delay_s is None or self._stopped:
                return
            timer = threading.Timer(delay_s, self._expire, args=(self._breakers[name],))
            timer.daemon = True  # never holds up the process's exit
            timer.name = f"breaker-{name}"
            self._timers[name] = timer
            timer.start()

    def _expire(self, breaker: CircuitBreaker) -> None:
        left_s = breaker.expire()
        if left_s is not None:  # the timer woke early, or is a stale one after a newer opening
            self._arm(breaker.name, left_s)

    def _breaker_for(self, queue_name: str) -> CircuitBreaker | None:
        """The breaker of a sink queue (None for other queues); its metric is published on first use."""
        queue = q_name(queue_name)
        breaker = self._breakers.get(queue)
        if breaker is not None and queue not in self._announced:
            with self._lock:
                if queue not in self._announced:
                    BREAKER_STATE.labels(sink=queue).set(int(breaker.state))
                    self._announced.add(queue)
        return breaker

    def _on_change(self, name: str, old: State, new: State) -> None:
        """Log a transition (a warning when opening) and export it. Runs with the breaker's lock held."""
        BREAKER_STATE.labels(sink=name).set(int(new))
        self._arm(name, self._breakers[name].cooldown_s if new is State.OPEN else None)
        extra = {"sink": name, "breaker": new.name}
        if new is State.OPEN:
            why = "its probe failed" if old is State.HALF_OPEN else f"{self._failures} connection failures in a row"
            log.warning("circuit breaker %s opened after %s: failing fast for %.1fs", name, why,
                        self._breakers[name].cooldown_s, extra=extra)
        elif new is State.HALF_OPEN:
            log.info("circuit breaker %s half-open: the next message probes the server", name, extra=extra)
        else:
            log.info("circuit breaker %s closed: the server answered again", name, extra=extra)

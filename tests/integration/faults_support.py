"""Fault injection around the real pipeline: a private stack of servers a test may stop, kill and restart, a
steady publisher, probes of what is in flight where, and the wait for the pipeline to come to rest.

Nothing here sleeps to wait for an outcome: waits poll a condition until a deadline. The only fixed durations
are the faults themselves (an outage held for so many seconds) and the publisher's pacing.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from etl.broker import redis_client
from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.supervisor import Pipeline
from etl.natsio.conn import UNAVAILABLE_ERRORS, connect
from etl.ops import report
from etl.pipeline.rawstream import consumer_config, ensure_raw_stream
from etl.stages import QUEUES, TIMESCALE
from tests.graphs import FALKORDB, graph_env, neo4j_server_or_skip
from tests.waiting import wait_for

MAX_EVENT_BYTES = 64 * 1024
# Retries: 0.2 s doubling to 3 s, 30 of them. ``retry_budget_s`` makes that at least 41 s of failure ridden out:
# a 20 s outage plus a JVM's restart (Neo4j takes 8-15 s on two busy cores) with room to spare.
RETRY_MIN_BACKOFF_MS = 200
RETRY_MAX_BACKOFF_MS = 3_000
RETRY_MAX = 30
BREAKER_COOLDOWN_MS = 500
PROCESSING_TIMEOUT_S = 10
# The tests' raw consumer, created before the bridge binds it: a killed bridge's batch comes back after this
# rather than after the production default of a minute. Everything else about the consumer is the bridge's.
RAW_ACK_WAIT_S = 5.0
SETTLE_POLL_S = 0.5
WORKER_IDS_KEY = "dramatiq:__heartbeats__"
ACKS_PATTERN = "dramatiq:__acks__.*"
WORKER_LOG_LINES = 8
PROBLEM_WORDS = ("WARNING", "ERROR", "CRITICAL", "Traceback")
# Dramatiq's Retries draws each delay from [base, 2 * base], and, when that exceeds the maximum, from
# [max / 2, max]: the shortest delay of retry k is therefore min(min_backoff * 2**k, max_backoff / 2).
CAPPED_JITTER_FLOOR = 0.5
# A retrying publisher (an agent) waits this long for an ack before sending again, and this long between tries.
AGENT_ACK_TIMEOUT_S = 2.0
AGENT_RETRY_S = 0.2


@dataclass
class Stack:
    """NATS, Redis (the broker), a graph server (FalkorDB or Neo4j) and PostgreSQL, private to one test."""

    nats: devservers.Server
    redis: devservers.Server
    graph: devservers.Server
    postgres: devservers.Server
    graph_backend: str = FALKORDB

    def servers(self) -> dict[str, devservers.Server]:
        return {"nats": self.nats, "redis": self.redis, "graph": self.graph, "postgres": self.postgres}

    def env(self) -> dict[str, str]:
        return {
            "NATS_URL": f"nats://127.0.0.1:{self.nats.port}",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis.port}/0",
            "PG_HOST": "127.0.0.1",
            "PG_PORT": str(self.postgres.port),
            "PG_DB": "aegisflux",
            **graph_env(self.graph_backend, self.graph),
            "AF_ENV": "test",
            "AF_FAKE_RDNS": "true",
            "MAX_EVENT_BYTES": str(MAX_EVENT_BYTES),
            "MAX_BATCH_SIZE": "50",
            "BATCH_LINGER_MS": "20",
            "PROCESSING_TIMEOUT": str(PROCESSING_TIMEOUT_S),
            "RETRY_MIN_BACKOFF_MS": str(RETRY_MIN_BACKOFF_MS),
            "RETRY_MAX_BACKOFF_MS": str(RETRY_MAX_BACKOFF_MS),
            "RETRY_MAX": str(RETRY_MAX),
            "BREAKER_COOLDOWN_MS": str(BREAKER_COOLDOWN_MS),
        }

    def settings(self, **overrides: object) -> Settings:
        return Settings.from_env({**self.env(), **{k: str(v) for k, v in overrides.items()}})

    def stop(self) -> None:
        for server in self.servers().values():
            server.stop()


def start_stack(root: Path, graph_backend: str = FALKORDB, appendfsync: str = "always") -> Stack:
    """Start the four servers on free ports with their data under ``root``, the graph server of
    ``graph_backend``, the broker's Redis fsyncing its AOF as ``appendfsync`` says. Raises ``ServerError`` (a test on
    Neo4j skips or fails without Java, see ``neo4j_server_or_skip``)."""
    graph = (devservers.redis_server(root / "falkordb", falkordb=True) if graph_backend == FALKORDB
             else neo4j_server_or_skip(root / "neo4j"))
    broker = devservers.redis_server(root / "redis", extra_args=["--appendfsync", appendfsync])
    stack = Stack(nats=devservers.nats_server(root / "nats"), redis=broker,
                  graph=graph, postgres=devservers.postgres_server(root / "postgres", durable=False),
                  graph_backend=graph_backend)
    try:
        for server in stack.servers().values():
            server.start()
        devservers.ensure_database(stack.postgres.port, "aegisflux")
    except BaseException:
        stack.stop()
        raise
    return stack


def retry_budget_s(settings: Settings) -> float:
    """The least time, in seconds, from a batch's first failed attempt to its last retry: a failure that ends
    sooner is survived. It is only longer in practice (attempts take time, the circuit breaker adds delays)."""
    floor_ms = settings.retry_max_backoff_ms * CAPPED_JITTER_FLOOR
    delays_ms = (min(settings.retry_min_backoff_ms * 2**k, floor_ms) for k in range(settings.retry_max))
    return sum(delays_ms) / 1000


# --- the publisher -------------------------------------------------------------------------------------------


@dataclass
class SteadyPublisher:
    """Publishes ``events`` to the raw subject at ``rate_per_s`` from a thread of its own, as agents would,
    waiting for JetStream's ack of each. ``join`` re-raises what made it stop early.

    With ``retry_for_s``, each event carries a ``Nats-Msg-Id`` (so the stream drops a resend it already stored)
    and a publish that fails on a NATS error is sent again until acked, for up to that many seconds, as an agent
    riding out a failover would. ``retries`` counts the resends, ``longest_wait_s`` is the longest one tick's
    events waited for their acks."""

    settings: Settings
    events: list[bytes]
    rate_per_s: float
    tick_s: float = 0.05
    retry_for_s: float = 0.0
    sent: int = 0
    retries: int = 0
    longest_wait_s: float = 0.0
    _error: BaseException | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> SteadyPublisher:
        self._thread = threading.Thread(target=self._run, name="steady-publisher", daemon=True)
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"publisher still running after {timeout_s}s: {self.sent}/{len(self.events)} sent")
        if self._error is not None:
            raise AssertionError(f"publisher failed after {self.sent} events: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as e:  # noqa: BLE001 - handed to the test thread by join()
            self._error = e

    async def _publish(self) -> None:
        nc = await connect(self.settings, name="test-steady-publisher")
        try:
            js = nc.jetstream()
            await ensure_raw_stream(js, self.settings)
            per_tick = max(1, int(self.rate_per_s * self.tick_s))
            start = time.monotonic()
            for i in range(0, len(self.events), per_tick):
                chunk = self.events[i:i + per_tick]
                began = time.monotonic()
                await asyncio.gather(*(self._send(js, e) for e in chunk))
                self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - began)
                self.sent += len(chunk)
                ahead_s = start + self.sent / self.rate_per_s - time.monotonic()
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s)  # pacing the load, not waiting for an outcome
        finally:
            await nc.close()

    async def _send(self, js: JetStreamContext, event: bytes) -> None:
        if not self.retry_for_s:
            await js.publish(self.settings.nats_subject_raw, event)
            return
        headers = {"Nats-Msg-Id": hashlib.sha256(event).hexdigest()}
        deadline = time.monotonic() + self.retry_for_s
        while True:
            try:
                await js.publish(self.settings.nats_subject_raw, event, timeout=AGENT_ACK_TIMEOUT_S, headers=headers)
                return
            except UNAVAILABLE_ERRORS:
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(AGENT_RETRY_S)  # the agent's back-off, not a wait for an outcome


# --- probes --------------------------------------------------------------------------------------------------


def create_raw_consumer(settings: Settings, ack_wait_s: float = RAW_ACK_WAIT_S) -> None:
    """Create the raw stream and the bridge's durable consumer, as the bridge would but with ``ack_wait_s``."""

    async def create() -> None:
        nc = await connect(settings, name="test-setup")
        try:
            js = nc.jetstream()
            await ensure_raw_stream(js, settings)
            await js.add_consumer(settings.nats_stream, config=consumer_config(settings, ack_wait_s))
        finally:
            await nc.close()

    asyncio.run(create())


def raw_consumer(settings: Settings) -> ConsumerInfo:
    """The bridge's consumer as the server sees it: ``num_pending`` not yet delivered, ``num_ack_pending``
    delivered to a bridge and not acked yet."""

    async def info() -> ConsumerInfo:
        nc = await connect(settings, name="test-probe")
        try:
            return await nc.jetstream().consumer_info(settings.nats_stream, settings.nats_consumer)
        finally:
            await nc.close()

    return asyncio.run(info())


def unacked_by_worker(client: redis.Redis, queue: str) -> dict[str, int]:
    """Messages of ``queue`` that a Dramatiq worker process fetched and has not acked, by worker id."""
    out: dict[str, int] = {}
    for key in client.scan_iter(match=ACKS_PATTERN, count=1000):
        name = key.decode()
        worker, _, acked_queue = name.removeprefix("dramatiq:__acks__.").partition(".")
        if acked_queue == queue:
            out[worker] = int(client.scard(key))
    return {worker: n for worker, n in out.items() if n}


def broker_state(client: redis.Redis) -> dict[str, dict[str, object]]:
    """Per queue with anything in it: messages waiting in its list, un-acked messages by worker id (with how
    long that worker has been silent: a dead process stops heartbeating), and the total not yet acked."""
    now_ms = time.time() * 1000
    beats = {w.decode(): score for w, score in client.zrange(WORKER_IDS_KEY, 0, -1, withscores=True)}
    out: dict[str, dict[str, object]] = {}
    for queue in (*QUEUES, *(f"{q}.DQ" for q in QUEUES)):
        holders = {f"{worker[:8]} silent {(now_ms - beats.get(worker, 0)) / 1000:.0f}s": n
                   for worker, n in unacked_by_worker(client, queue).items()}
        waiting = int(client.llen(f"dramatiq:{queue}"))
        total = int(client.hlen(f"dramatiq:{queue}.msgs"))
        if holders or waiting or total:
            out[queue] = {"waiting": waiting, "held": holders, "not acked": total}
    return out


def pipeline_log_problems(pipeline: Pipeline, lines: int = WORKER_LOG_LINES) -> dict[str, list[str]]:
    """The last warnings and errors of each pipeline process."""
    out: dict[str, list[str]] = {}
    for name in pipeline.procs:
        tail = pipeline.log_tail(name, 400).splitlines()
        problems = [line for line in tail if any(word in line for word in PROBLEM_WORDS)]
        if problems:
            out[name] = problems[-lines:]
    return out


def diagnose(settings: Settings, pipeline: Pipeline) -> str:
    """Where things stand, for a failed wait: counts, the raw consumer, stranded messages, processes, logs."""
    parts = []
    for label, probe in (("counts", lambda: report.collect(settings).as_dict()),
                         ("raw consumer", lambda: _consumer_summary(settings)),
                         ("broker", lambda: _with_redis(settings, broker_state))):
        try:
            parts.append(f"{label}: {probe()}")
        except Exception as e:  # noqa: BLE001 - a diagnosis must not fail on a server that is down
            parts.append(f"{label}: unavailable ({e!r})")
    parts.append(f"alive: {pipeline.alive()}")
    for name, problems in pipeline_log_problems(pipeline).items():
        parts.append(f"--- {name}:\n  " + "\n  ".join(problems))
    return "\n".join(parts)


def _consumer_summary(settings: Settings) -> dict[str, int]:
    info = raw_consumer(settings)
    return {"pending": int(info.num_pending or 0), "ack_pending": int(info.num_ack_pending or 0),
            "redelivered": int(info.num_redelivered or 0)}


def _with_redis(settings: Settings, use: Callable[[redis.Redis], object]) -> object:
    client = redis_client(settings)
    try:
        return use(client)
    finally:
        client.close()


def sink_dead_letters(settings: Settings) -> dict[str, int]:
    """Dead letters by stage, except enrichment's (bad input): these mean a batch was given up on."""
    return {stage: n for stage, n in report.dead_letter_counts(settings).items() if stage != "enrich"}


def wait_settled(settings: Settings, pipeline: Pipeline, *, timeout_s: float) -> report.Counts:
    """Wait until the pipeline is at rest: every raw event acked by the bridge, every Dramatiq queue empty
    (waiting, in flight and delayed), and the sinks' counts unchanged over two probes. Returns the counts."""
    previous: list[tuple[object, ...]] = []

    def probe() -> report.Counts | None:
        consumer = _consumer_summary(settings)
        counts = report.collect(settings)
        idle = consumer["pending"] == 0 and consumer["ack_pending"] == 0 and not any(counts.queued.values())
        snapshot = (sorted(counts.totals.items()), sorted(counts.dead_lettered.items()))
        at_rest = idle and previous == [snapshot]
        previous[:] = [snapshot] if idle else []
        return counts if at_rest else None

    return wait_for(probe, timeout_s=timeout_s, interval_s=SETTLE_POLL_S,
                    describe=lambda: diagnose(settings, pipeline))


def hold(seconds: float, check: Callable[[], None], interval_s: float = 0.5) -> None:
    """Keep a fault in place for ``seconds``, running ``check`` every ``interval_s`` meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
    check()


def wait_stored(settings: Settings, pipeline: Pipeline, *, at_least: int = 1, timeout_s: float = 30) -> None:
    """Wait until the pipeline stored ``at_least`` events: it is running, and events are mid-way."""
    wait_for(lambda: TIMESCALE.count(settings) >= at_least, timeout_s=timeout_s, interval_s=0.05,
             describe=lambda: diagnose(settings, pipeline))


"""Each stage alone against its real server: the bridge process draining a pre-filled JetStream stream into
Redis, and each worker pool draining a pre-filled Dramatiq queue into its sink.

A stage's rate is timed from the first message it finishes to the last one (process start-up and sink opening
are not part of it); its cost is the CPU of its process and of the servers it uses over that time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bench import _servers, load
from bench.sampling import Costs, Sampler
from etl.dev.supervisor import Pipeline
from etl.pipeline.backlog import queue_depths

POLL_S = 0.02
STAGE_TIMEOUT_S = 600.0
NO_BACKPRESSURE = str(10**9)  # the bridge alone must not pause on the queue it fills and nobody drains


@dataclass
class StageResult:
    name: str
    events: int
    seconds: float
    costs: Costs

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def bridge(stack: _servers.Stack, payloads: Sequence[bytes], batch: int, log_dir: Any) -> StageResult:
    """The bridge process alone: the raw stream pre-filled with ``payloads``, enqueueing into Redis."""
    _servers.reset(stack)
    settings = stack.settings

    async def fill() -> None:
        nc, js = await load.open_js(settings)
        await load.publish(js, settings.nats_subject_raw, payloads)
        await nc.close()

    asyncio.run(fill())
    env = {**stack.env, "MAX_BATCH_SIZE": str(batch), "MAX_QUEUE_DEPTH": NO_BACKPRESSURE}
    pipeline = Pipeline(env, log_dir, pools=(), bridges=1)
    client = redis.Redis(host="127.0.0.1", port=stack.servers.redis.port)

    def enqueued() -> int:  # full batches, since the stream was filled before the bridge started
        return min(len(payloads), queue_depths(client, ["enrich"])["enrich"] * batch)

    pipeline.start()
    try:
        return _timed("bridge", len(payloads), enqueued, stack, pipeline)
    finally:
        pipeline.stop()
        client.close()


def pool(stack: _servers.Stack, name: str, fill: Any, events: int, batch: int, log_dir: Any,
         env: dict[str, str] | None = None) -> StageResult:
    """Pool ``name`` alone, draining its queue after ``fill()`` put ``events`` events in it; ``env`` adds to the
    stack's (e.g. ``WORKER_THREADS``)."""
    _servers.reset(stack)
    fill()
    client = redis.Redis(host="127.0.0.1", port=stack.servers.redis.port)
    total = queue_depths(client, [name])[name]

    def done() -> int:
        return (total - queue_depths(client, [name])[name]) * batch

    pipeline = Pipeline({**stack.env, "MAX_BATCH_SIZE": str(batch), **(env or {})}, log_dir, pools=(name,),
                        bridges=0)
    pipeline.start()
    try:
        return _timed(name, events, done, stack, pipeline)
    finally:
        pipeline.stop()
        client.close()


def _timed(name: str, events: int, progress: Any, stack: _servers.Stack, pipeline: Pipeline) -> StageResult:
    """Wait for the first finished message, then time (and sample) until ``progress()`` reaches ``events``."""
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while (first := progress()) == 0:
        if time.monotonic() > deadline or not all(pipeline.alive().values()):
            raise RuntimeError(f"stage {name} did not start: {pipeline.log_tail(next(iter(pipeline.procs)))}")
        time.sleep(POLL_S)
    start = time.monotonic()

    def processes() -> dict[str, Any]:
        import psutil

        return {**{n: psutil.Process(p.pid) for n, p in pipeline.procs.items()}, **stack.server_processes()}

    with Sampler(processes, stack.servers.redis.port) as sampler:
        while (done := progress()) < events:
            if time.monotonic() > deadline:
                raise RuntimeError(f"stage {name}: {done} of {events} events in {STAGE_TIMEOUT_S:.0f}s")
            time.sleep(POLL_S)
    assert sampler.costs is not None
    return StageResult(name, events - first, time.monotonic() - start, sampler.costs)


def best(measure: Callable[[], Any], repeats: int, rate: Callable[[Any], float] = float) -> tuple[Any, list[float]]:
    """The best of ``repeats`` calls of ``measure`` (by ``rate``), and every call's rate."""
    results = [measure() for _ in range(repeats)]
    return max(results, key=rate), [rate(r) for r in results]

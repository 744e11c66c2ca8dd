"""End to end: the real bridge and worker pools (``etl.dev.supervisor.Pipeline``), events published to
``events.raw``, done when every event is in PostgreSQL, in the graph and on ``events.enriched``.

Each run starts from empty servers and fresh processes, publishes a warm-up burst (processes started, sinks
open), then times from the first publish of the measured events until the last is in all three sinks. Its rate
counts every event published, duplicates included (each sink holds a duplicate once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import _servers, load
from bench.sampling import Costs, Sampler
from etl.dev import corpus
from etl.dev.supervisor import Pipeline

WARMUP_EVENTS = 200
WARMUP_TIMEOUT_S = 120.0
MIN_TIMEOUT_S = 120.0
LATENCY_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass
class RunResult:
    label: str
    events: int
    seconds: float
    publish_seconds: float
    costs: Costs
    complete: bool
    latencies: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Shape:
    """How the pipeline runs: events per batch, processes per pool (``None``: each pool's default, from
    ``etl/pools.py``), and which actors (per event or batched); or, ``seed_style``, the one-event-at-a-time
    service instead (``bench.seed_style``)."""

    batch: int
    processes: int | None = None
    per_event: bool = False
    seed_style: bool = False

    def pipeline(self, stack: _servers.Stack, log_dir: Path) -> Pipeline:
        env = {**stack.env, "MAX_BATCH_SIZE": str(self.batch)}
        if self.processes is not None:
            env["WORKER_PROCESSES"] = str(self.processes)
        if self.seed_style:
            from bench.seed_style import SeedStylePipeline

            return SeedStylePipeline(env, log_dir)
        if self.per_event:
            from bench.per_event import PerEventPipeline

            return PerEventPipeline(env, log_dir)
        return Pipeline(env, log_dir)


def processes_of(stack: _servers.Stack, pipeline: Pipeline) -> dict[str, psutil.Process]:
    out = {name: psutil.Process(p.pid) for name, p in pipeline.procs.items()}
    out["bench (publisher)"] = psutil.Process()
    return {**out, **stack.server_processes()}


def run(stack: _servers.Stack, payloads: Sequence[bytes], shape: Shape, label: str, log_dir: Path,
        *, latency_s: float = 0.0, corpus_shape: str = corpus.PRODUCERS) -> RunResult:
    """One end-to-end run at full speed; with ``latency_s``, then the fixed-rate latency runs (fractions of the
    rate just measured, events of ``corpus_shape``) on the same processes. Raises ``RuntimeError`` when the
    warm-up does not get through."""
    _servers.reset(stack)
    pipeline = shape.pipeline(stack, log_dir / label).start()
    try:
        return asyncio.run(_measure(stack, pipeline, payloads, label, latency_s, corpus_shape))
    finally:
        pipeline.stop()


async def _measure(stack: _servers.Stack, pipeline: Pipeline, payloads: Sequence[bytes], label: str,
                   latency_s: float, corpus_shape: str) -> RunResult:
    settings = stack.settings
    nc, js = await load.open_js(settings)
    counts = load.SinkCounts(settings, js)
    try:
        warm = load.events(WARMUP_EVENTS, seed=7, shape=corpus_shape)
        await load.publish(js, settings.nats_subject_raw, warm)
        if await counts.wait(load.distinct(warm), WARMUP_TIMEOUT_S) is None:
            first = "bridge-0" if "bridge-0" in pipeline.procs else next(iter(pipeline.procs))
            raise RuntimeError(f"{label}: warm-up not through: {await counts.all()}; {first} log:\n"
                               f"{pipeline.log_tail(first)}")
        total = load.distinct(warm) + load.distinct(payloads)
        with Sampler(lambda: processes_of(stack, pipeline), stack.servers.redis.port) as sampler:
            start = time.monotonic()
            await load.blast(nc, js, settings.nats_stream, settings.nats_subject_raw, payloads)
            published = time.monotonic() - start
            done = await counts.wait(total, max(MIN_TIMEOUT_S, len(payloads) / 200))
        end = done if done is not None else time.monotonic()
        assert sampler.costs is not None
        result = RunResult(label, len(payloads), end - start, published, sampler.costs, done is not None)
        if done is not None and latency_s:
            result.latencies = await _latencies(settings, js, counts, total, result.rate, latency_s, corpus_shape)
        return result
    finally:
        counts.close()
        await nc.close()


async def _latencies(settings: object, js: object, counts: load.SinkCounts, total: int, max_rate: float,
                     seconds: float, corpus_shape: str) -> dict[str, dict[str, float]]:
    """Publish at each of ``LATENCY_FRACTIONS`` of ``max_rate`` for ``seconds``; publish-to-row percentiles."""
    out = {}
    for fraction in LATENCY_FRACTIONS:
        prefix = f"lat{int(fraction * 100)}"
        sent = await load.publish_at(js, settings.nats_subject_raw, fraction * max_rate, seconds,  # type: ignore[attr-defined]
                                     seed=int(fraction * 100), prefix=prefix, shape=corpus_shape)
        total += sent
        complete = await counts.wait(total, MIN_TIMEOUT_S) is not None
        ms = counts.latencies_ms(prefix)
        out[f"{int(fraction * 100)}%"] = {
            "rate": round(fraction * max_rate), "events": sent, "complete": complete,
            "p50_ms": round(load.percentile(ms, 50), 1), "p95_ms": round(load.percentile(ms, 95), 1),
            "p99_ms": round(load.percentile(ms, 99), 1), "max_ms": round(max(ms, default=float("nan")), 1)}
    return out

"""The Neo4j rows of ``bench/run``: FalkorDB's graph measurements repeated on a local Neo4j (``etl.dev.neo4jserver``).

On the benchmark's own NATS, Redis and PostgreSQL, with a Neo4j server beside them (``_servers.with_graph``):

- the raw ceiling: the graph sink's merge statement through the official driver (``ceilings.bare_merge``);
- the graph pool alone, at each size of ``POOL_SIZES`` (processes x threads), on the benchmark's events and on a
  hot workload where every event comes from 3 hosts, 2 users and 5 containers (``generator.generate_hot``);
- end to end, all three sinks, with ``NEO4J_URI=bolt://...`` and every pool at its default.

Neo4j is warmed up first (``WARMUP_EVENTS`` written through the sink, then deleted), as a long-running server is.

Skipped, with the reason printed, when Java or Maven is missing or the server does not start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _servers, ceilings, e2e, load, stages
from bench.report import Row, target
from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.generator import generate_hot
from etl.dev.services import NEO4J
from etl.stages import GRAPH

POOL_SIZES = ((1, 1), (1, 2), (2, 1), (1, 4))
# A JVM runs Neo4j's Cypher several times slower until its JIT has compiled the hot paths: about 60,000 events
# written one batch after another here. Warmed up first, the figures are those of a server that has been running.
WARMUP_EVENTS = 80_000
WORKLOADS = ("generated", "hot")
STAGE_TARGET = 0.7

Say = Callable[[str], None]


@dataclass
class Neo4jResult:
    ceiling: float
    stages: dict[str, stages.StageResult]
    e2e: e2e.RunResult
    default_size: str
    runs: dict[str, list[float]] = field(default_factory=dict)


def size_label(processes: int, threads: int) -> str:
    return f"{processes}x{threads}"


def measure(stack: _servers.Stack, payloads: list[bytes], enriched: list[dict[str, Any]], batch: int,
            logs: Path, repeats: int, say: Say) -> Neo4jResult | None:
    """Every Neo4j measurement, or None (said why) without Java or Maven."""
    try:
        neo = _servers.with_graph(stack, NEO4J)
    except devservers.ServerError as e:  # JavaMissing among them; FalkorDB's figures are reported all the same
        say(f"Neo4j rows skipped: {e}")
        return None
    try:
        return _measure(neo, payloads, enriched, batch, logs, repeats, say)
    finally:
        _servers.stop_graph(neo)


def _measure(neo: _servers.Stack, payloads: list[bytes], enriched: list[dict[str, Any]], batch: int,
             logs: Path, repeats: int, say: Say) -> Neo4jResult:
    from etl import actors  # the broker of the benchmark's stack, which neo shares

    runs: dict[str, list[float]] = {}
    warm_up(neo, batch, say)

    def ceiling() -> float:
        _servers.reset(neo)
        return ceilings.bare_merge(neo.settings, enriched, batch)

    best_ceiling, runs["ceiling merge"] = stages.best(ceiling, repeats, float)
    say(f"neo4j ceiling merge: {best_ceiling:,.0f} events/s (runs: {_fmt(runs['ceiling merge'])})")
    hot = ceilings.enriched(list(generate_hot(len(payloads), seed=5)))
    results: dict[str, stages.StageResult] = {}
    for workload, events in (("generated", enriched), ("hot", hot)):
        chunks = [list(c) for c in ceilings.batches(events, batch)]
        for processes, threads in POOL_SIZES:
            label = f"{workload} {size_label(processes, threads)}"
            env = {"WORKER_PROCESSES": str(processes), "WORKER_THREADS": str(threads)}

            def graph_pool(chunks: list[list[Any]] = chunks, env: dict[str, str] = env,
                           label: str = label) -> stages.StageResult:
                def fill() -> None:
                    for chunk in chunks:
                        actors.SINK_ACTORS[GRAPH.name].send(chunk)

                return stages.pool(neo, "graph", fill, sum(map(len, chunks)), batch,
                                   logs / f"neo4j-{label.replace(' ', '-')}", env)

            results[label], runs[label] = stages.best(graph_pool, repeats, lambda r: r.rate)
            say(f"neo4j graph pool {label}: {results[label].rate:,.0f} events/s (runs: {_fmt(runs[label])})")
    run = e2e.run(neo, payloads, e2e.Shape(batch), "neo4j e2e", logs)
    say(f"neo4j e2e: {run.events:,} events in {run.seconds:.1f}s = {run.rate:,.0f} events/s"
        f"{'' if run.complete else ' (INCOMPLETE)'}")
    pool = GRAPH.pool_size(Settings.from_env(neo.env))
    default = size_label(pool.processes, pool.threads)
    return Neo4jResult(best_ceiling, results, run, default, runs)


def warm_up(neo: _servers.Stack, batch: int, say: Say) -> None:
    """Write ``WARMUP_EVENTS`` (generated, then hot) through the graph sink, one batch after another."""
    from etl.sinks.graph.sink import GraphSink

    started = time.monotonic()
    events = ceilings.enriched(load.events(WARMUP_EVENTS // 2, seed=9))
    events += ceilings.enriched(list(generate_hot(WARMUP_EVENTS // 2, seed=9)))
    sink = GraphSink(neo.settings)
    try:
        for chunk in ceilings.batches(events, batch):
            sink.write(chunk)
    finally:
        sink.close()
    say(f"neo4j warmed up: {len(events):,} events in {time.monotonic() - started:.0f}s")


def rows(result: Neo4jResult | None, falkordb_e2e: e2e.RunResult) -> list[Row]:
    """The Neo4j rows of the table: the graph stage at the pool's default against the ceiling (the target), each
    pool size against 1x1 on the same workload, and end to end against FalkorDB's."""
    if result is None:
        return []
    default = result.stages[f"generated {result.default_size}"]
    out = [
        target(Row(f"neo4j: stage: graph pool ({result.default_size}, the default)", default.rate, "ev/s",
                   "bare UNWIND merge, driver", result.ceiling), STAGE_TARGET, label=f">={STAGE_TARGET}"),
        Row("neo4j: end to end, all three sinks", result.e2e.rate, "ev/s", "FalkorDB end to end",
            falkordb_e2e.rate),
        Row("neo4j: raw ceiling: merge", result.ceiling, "ev/s"),
    ]
    for workload in WORKLOADS:
        base = result.stages[f"{workload} 1x1"]
        for processes, threads in POOL_SIZES:
            run = result.stages[f"{workload} {size_label(processes, threads)}"]
            cpu_us = sum(run.costs.per_1000(run.events).values()) * 1000  # pool and servers, per event
            out.append(Row(f"neo4j: graph pool {size_label(processes, threads)}, {workload} events "
                           f"({cpu_us:,.0f} µs CPU/event)", run.rate, "ev/s", "1x1", base.rate))
    return out


def as_json(result: Neo4jResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"ceiling_merge": result.ceiling, "default_size": result.default_size, "runs": result.runs,
            "stages": {k: {"rate": v.rate, "events": v.events, "seconds": v.seconds,
                           "cpu_s_per_1000": v.costs.per_1000(v.events)} for k, v in result.stages.items()},
            "e2e": {"rate": result.e2e.rate, "events": result.e2e.events, "seconds": result.e2e.seconds,
                    "complete": result.e2e.complete, "cpu_s_per_1000": result.e2e.costs.per_1000(result.e2e.events)}}


def _fmt(rates: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in rates)

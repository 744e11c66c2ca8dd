"""The pipeline's stages, declared once.

A stage is one Dramatiq queue, named after the stage, served by one worker pool (``dramatiq etl.actors --queues
<name>``). ``enrich`` validates and enriches the bridge's raw batches and fans each out to every sink stage; a
sink stage writes its batches to one sink. Everything that names stages derives from ``STAGES``: the broker's
queues, the actors and their fan-out, the circuit breakers (one per sink stage), dead-letter replay, ``etl status``
and ``etl report``, the CLI's choices, the pools' defaults and ``etl migrate``.

Sink modules are imported only when a stage's factory or counter is called, so a pool loads only its own driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from etl.config import Settings
from etl.sinks.base import Sink


@dataclass(frozen=True)
class PoolSize:
    """A pool's default Dramatiq processes and threads (``WORKER_PROCESSES``/``WORKER_THREADS`` override them)."""

    processes: int
    threads: int


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One stage of the pipeline: its name (also its Dramatiq queue and its pool), its actor and its pool.

    ``pool_for`` may change the pool's default size with the settings; ``worker_env`` gives a pool's processes
    extra environment from their thread count (a variable already set wins).
    """

    name: str
    actor: str
    pool: PoolSize
    pool_for: Callable[[Settings, PoolSize], PoolSize] | None = None
    worker_env: Callable[[int], dict[str, str]] | None = None

    @property
    def queue(self) -> str:
        """The Dramatiq queue: named after the stage, so dead letters, breakers and metrics label by it."""
        return self.name

    def pool_size(self, settings: Settings) -> PoolSize:
        return self.pool_for(settings, self.pool) if self.pool_for else self.pool


@dataclass(frozen=True, kw_only=True)
class SinkStage(Stage):
    """A stage that writes each batch to one sink, which ``sink`` builds.

    ``total`` names what the sink holds in ``etl status`` and ``etl report``; ``count`` reads it from ``server``
    without writing anything; ``counted_as`` and ``summary`` say what it counts, for ``etl status`` and ``etl dev``.
    ``migrates``: the sink applies a schema, which ``etl migrate`` applies before the workers start.
    """

    sink: Callable[[Settings], Sink]
    total: str
    count: Callable[[Settings], int]
    server: str
    counted_as: Callable[[Settings], str]
    summary: str
    migrates: bool = False


def _publisher(settings: Settings) -> Sink:
    from etl.sinks.nats_publish import NatsPublisher

    return NatsPublisher(settings)


def _published(settings: Settings) -> int:
    from etl.sinks.nats_publish import count_published

    return count_published(settings)


def _timescale(settings: Settings) -> Sink:
    from etl.sinks.timescale import TimescaleSink

    return TimescaleSink(settings)


def _stored(settings: Settings) -> int:
    from etl.sinks.timescale import count_stored

    return count_stored(settings)


def _one_connection_per_thread(threads: int) -> dict[str, str]:
    # The sink opens its whole pool at start: one connection per thread, and one for health checks.
    return {"PG_POOL_SIZE": str(threads + 1)}


def _graph(settings: Settings) -> Sink:
    from etl.sinks.graph.sink import GraphSink

    return GraphSink(settings)


def _merged(settings: Settings) -> int:
    from etl.sinks.graph.sink import count_merged

    return count_merged(settings)


# FalkorDB runs one write query at a time per graph, so a second process adds little there: one process, where a
# second thread builds the next batch's query while the server runs one. See docs/neo4j.md for both backends.
FALKOR_GRAPH_POOL = PoolSize(processes=1, threads=2)


def _graph_pool(settings: Settings, default: PoolSize) -> PoolSize:
    from etl.sinks.graph.backend import FALKOR_SCHEME

    return FALKOR_GRAPH_POOL if urlsplit(settings.neo4j_uri).scheme == FALKOR_SCHEME else default


ENRICH = Stage(name="enrich", actor="enrich_batch", pool=PoolSize(processes=1, threads=2))
# Publishing and storing are Python CPU under one GIL per process beside their server's work: two processes of two
# threads. On Neo4j, two processes of one thread: the driver packs rows under one GIL per process, and more
# writers meet deadlocks on hub nodes. Measurements behind each default: docs/performance.md, docs/neo4j.md.
PUBLISH = SinkStage(name="publish", actor="publish_batch", pool=PoolSize(processes=2, threads=2),
                    sink=_publisher, total="published", count=_published, server="nats",
                    counted_as=lambda s: f"messages in {s.nats_enriched_stream or '(core NATS: not counted)'}",
                    summary="events.enriched messages")
TIMESCALE = SinkStage(name="timescale", actor="store_batch", pool=PoolSize(processes=2, threads=2),
                      worker_env=_one_connection_per_thread,
                      sink=_timescale, total="stored", count=_stored, server="postgresql",
                      counted_as=lambda s: f"rows in PostgreSQL table {s.pg_table}", summary="TimescaleDB rows",
                      migrates=True)
GRAPH = SinkStage(name="graph", actor="merge_batch", pool=PoolSize(processes=2, threads=1), pool_for=_graph_pool,
                  sink=_graph, total="merged", count=_merged, server="graph",
                  counted_as=lambda s: "Event nodes in the graph", summary="graph Event nodes", migrates=True)

SINK_STAGES: tuple[SinkStage, ...] = (PUBLISH, TIMESCALE, GRAPH)
STAGES: tuple[Stage, ...] = (ENRICH, *SINK_STAGES)
BY_NAME: Mapping[str, Stage] = {s.name: s for s in STAGES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
QUEUES: tuple[str, ...] = tuple(s.queue for s in STAGES)
SINK_NAMES: tuple[str, ...] = tuple(s.name for s in SINK_STAGES)


def stage(name: str) -> Stage:
    """The stage called ``name``. Raises ``ValueError`` for an unknown name."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}: one of {', '.join(NAMES)}") from None

"""The four servers of the local stack as one set: NATS with JetStream, Redis with AOF, PostgreSQL, and a graph
server: FalkorDB with AOF (the default) or Neo4j (``etl.dev.neo4jserver``, which needs Java).

Each comes from ``etl.dev.servers`` or ``etl.dev.neo4jserver``, with its data under its own directory of the stack's
data directory, so a restart resumes where the last run stopped. Two things the single servers do not do, and a restart
needs: ``start`` waits until Redis and FalkorDB have loaded their AOF (they accept connections while still
loading), and ``stop`` first rewrites FalkorDB's AOF as a snapshot, since replaying its Cypher writes is slow
(docs/local.md), against next to nothing to load the snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from etl.dev import neo4jserver
from etl.dev import servers as devservers
from etl.dev.ports import HOST, PortFlags

DATABASE = "aegisflux"
POLL_S = 0.1
LOADING_REPORT_EVERY_S = 5.0
COMPACT_TIMEOUT_S = 30.0
HURRIED_STOP_TIMEOUT_S = 5.0
FALKORDB, NEO4J = "falkordb", "neo4j"
GRAPH_BACKENDS = (FALKORDB, NEO4J)  # the first is the default
# JetStream storage of the local NATS. Each stream reserves its max_bytes from it when created; the server's own
# default (75% of the disk's free space) would refuse the streams' default limits (etl.config) on a nearly full
# disk. Here the disk itself is the limit, as before the streams had any.
DEV_NATS_MAX_STORE_BYTES = 1024**4

Say = Callable[[str], None]


@dataclass
class Servers:
    nats: devservers.Server
    redis: devservers.Server
    graph: devservers.Server
    postgres: devservers.Server
    graph_backend: str = FALKORDB

    @classmethod
    def create(cls, data_dir: Path, ports: PortFlags, graph_backend: str = FALKORDB,
               appendfsync: str = devservers.DEFAULT_APPENDFSYNC) -> Servers:
        """The four servers, not started yet, on the ports asked for (free ones for 0); the graph server is
        ``graph_backend``'s; the queues' Redis fsyncs its AOF as ``appendfsync`` says. Raises
        ``neo4jserver.JavaMissing`` for Neo4j without Java or Maven."""
        if graph_backend == NEO4J:
            graph = neo4jserver.neo4j_server(data_dir / "neo4j", ports.neo4j or None)
        else:
            graph = devservers.redis_server(data_dir / "falkordb", ports.falkordb or None, falkordb=True,
                                            wait_loaded=False)
        return cls(nats=devservers.nats_server(data_dir / "nats", ports.nats or None,
                                               max_store_bytes=DEV_NATS_MAX_STORE_BYTES),
                   redis=devservers.redis_server(data_dir / "redis", ports.redis or None, appendfsync=appendfsync,
                                                 wait_loaded=False),
                   graph=graph,
                   postgres=devservers.postgres_server(data_dir / "postgres", ports.postgres or None),
                   graph_backend=graph_backend)

    @property
    def falkordb(self) -> devservers.Server | None:
        """The FalkorDB server, if the graph is on FalkorDB."""
        return self.graph if self.graph_backend == FALKORDB else None

    def all(self) -> list[devservers.Server]:
        """In start order; they stop in the reverse one."""
        return [self.nats, self.redis, self.graph, self.postgres]

    def start(self, say: Say) -> None:
        """Start each, wait until Redis and FalkorDB have loaded their data, create the database. Raises
        ``devservers.ServerError``."""
        for server in self.all():
            server.start()
        for store in (self.redis, self.falkordb):
            if store is not None:
                wait_loaded(store, say)
        devservers.ensure_database(self.postgres.port, DATABASE)

    def running(self) -> bool:
        return all(server.running for server in self.all())

    def stop(self, say: Say, *, hurried: bool = False) -> None:
        """Compact FalkorDB's AOF (unless ``hurried``), then stop each, in reverse order; a server that does not
        stop in time (``HURRIED_STOP_TIMEOUT_S`` when hurried) is killed."""
        if self.falkordb is not None and self.falkordb.running and not hurried:
            try:
                if not compact_aof(self.falkordb):
                    say("falkordb: its AOF was not rewritten in time; the next start replays it")
            except redis.RedisError as e:
                say(f"falkordb: cannot rewrite its AOF ({type(e).__name__}: {e}); the next start replays it")
        for server in reversed(self.all()):
            server.stop(HURRIED_STOP_TIMEOUT_S if hurried else devservers.DEFAULT_STOP_TIMEOUT_S)

    def env(self) -> dict[str, str]:
        """The environment that points the pipeline at these servers."""
        return {"NATS_URL": f"nats://{HOST}:{self.nats.port}", "REDIS_URL": f"redis://{HOST}:{self.redis.port}/0",
                "PG_HOST": HOST, "PG_PORT": str(self.postgres.port), "PG_DB": DATABASE, "PG_USER": "postgres",
                **self.graph_env(), "AF_FAKE_RDNS": "true"}

    def graph_env(self) -> dict[str, str]:
        """The settings that point the graph sink at the graph server."""
        return graph_env(self.graph_backend, self.graph)


def graph_env(backend: str, server: devservers.Server) -> dict[str, str]:
    """The settings that point the graph sink at ``server``, a graph server of ``backend`` made here."""
    if backend == FALKORDB:
        return {"NEO4J_URI": f"falkor://{HOST}:{server.port}"}
    return {"NEO4J_URI": f"bolt://{HOST}:{server.port}", "NEO4J_USER": neo4jserver.USER,
            "NEO4J_PASSWORD": server.password}  # type: ignore[attr-defined]


def wait_loaded(server: devservers.Server, say: Say) -> None:
    """Wait until a Redis server has loaded its AOF: it accepts connections before, but answers ``LOADING`` to
    every command meanwhile (FalkorDB replays every graph write, which is slow). Loading always
    progresses, so it has no deadline. Raises ``devservers.ServerError`` if the server exits, or does not answer at
    all for ``devservers.DEFAULT_START_TIMEOUT_S``."""
    start = reported = time.monotonic()
    with redis.Redis(host=HOST, port=server.port, socket_timeout=5.0) as client:
        while True:
            try:
                client.ping()
                return
            except redis.BusyLoadingError:
                pass
            except redis.ConnectionError as e:  # not loading: no answer at all
                if time.monotonic() - start > devservers.DEFAULT_START_TIMEOUT_S:
                    raise devservers.ServerError(f"{server.name} does not answer: {e}") from None
            if not server.running:
                raise devservers.ServerError(f"{server.name} exited while loading:\n{server.log_tail()}")
            if time.monotonic() - reported >= LOADING_REPORT_EVERY_S:
                info = client.info("persistence")
                say(f"{server.name} is loading its data: {info.get('loading_loaded_perc', '?')}%")
                reported = time.monotonic()
            time.sleep(POLL_S)


def compact_aof(server: devservers.Server, timeout_s: float = COMPACT_TIMEOUT_S) -> bool:
    """Rewrite a Redis server's AOF as a snapshot plus an empty tail, so the next start loads it at once instead of
    replaying every write. Returns whether it finished within ``timeout_s``; an unfinished rewrite is harmless (the
    old AOF stays in use). Raises ``redis.RedisError``."""
    with redis.Redis(host=HOST, port=server.port, socket_timeout=timeout_s) as client:
        client.bgrewriteaof()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                return info.get("aof_last_bgrewrite_status") == "ok"
            time.sleep(POLL_S)
    return False

"""The local default's real servers for a benchmark, and a clean slate between two measurements.

One ``Stack`` per graph backend measured: NATS with JetStream, Redis with AOF (``appendfsync always`` unless
asked otherwise), PostgreSQL with fsync on and the graph server (FalkorDB with AOF, or Neo4j), exactly as
``etl dev`` runs them (``etl.dev.services.Servers``), with data in a temporary directory. ``reset`` empties every
server, so each measurement starts from the same empty state; ``set_appendfsync`` changes the queues' Redis's
fsync policy between two measurements, so both policies are measured on one server, interleaved.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2
import redis
from falkordb import FalkorDB
from nats.js.errors import NotFoundError

from etl.config import Settings
from etl.dev import neo4jserver
from etl.dev.ports import PortFlags
from etl.dev.servers import APPENDFSYNC_POLICIES, DEFAULT_APPENDFSYNC
from etl.dev.services import FALKORDB, Servers
from etl.natsio.conn import connect

BENCH_ENV = {"AF_ENV": "bench", "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json", "HEALTH_HOST": "127.0.0.1"}


@dataclass
class Stack:
    root: Path
    servers: Servers
    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def server_processes(self) -> dict[str, psutil.Process]:
        """Each server's main process, labelled (their children, e.g. PostgreSQL backends, are counted with it)."""
        out = {}
        for server in self.servers.all():
            assert server.proc is not None
            out[f"{server.name}-server"] = psutil.Process(server.proc.pid)
        return out


def start(root: Path, say: object = print, graph_backend: str = FALKORDB,
          appendfsync: str = DEFAULT_APPENDFSYNC) -> Stack:
    """Start the four servers under ``root``, the graph on ``graph_backend``, the queues' Redis fsyncing as
    ``appendfsync`` says; raises ``etl.dev.servers.ServerError`` (``etl.dev.neo4jserver.JavaMissing`` for Neo4j
    without Java)."""
    servers = Servers.create(root / "data", PortFlags(), graph_backend, appendfsync)
    servers.start(say)  # type: ignore[arg-type]
    env = {**servers.env(), **BENCH_ENV}
    return Stack(root, servers, env)


def with_graph(stack: Stack, graph_backend: str) -> Stack:
    """``stack`` with a new graph server of ``graph_backend``, started, in place of its own (which keeps running,
    idle): the same NATS, Redis and PostgreSQL, so a broker already set up for ``stack`` serves it too. Stop the
    new server with ``stop_graph``. Raises ``etl.dev.servers.ServerError`` (``JavaMissing`` among them)."""
    fresh = Servers.create(stack.root / f"data-{graph_backend}", PortFlags(), graph_backend)
    servers = Servers(stack.servers.nats, stack.servers.redis, fresh.graph, stack.servers.postgres, graph_backend)
    servers.graph.start()
    return Stack(stack.root, servers, {**stack.env, **servers.graph_env()})


def stop_graph(stack: Stack) -> None:
    stack.servers.graph.stop()


def stop(stack: Stack | None) -> None:
    if stack is not None:
        stack.servers.stop(lambda _: None, hurried=True)


def stop_and_clean(stack: Stack | None, root: Path, *, keep: bool, say: Callable[[str], object]) -> None:
    """Stop ``stack``'s servers, then delete ``root`` (their data and the logs), or say where it is with ``keep``."""
    stop(stack)
    if keep:
        say(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def set_appendfsync(stack: Stack, policy: str) -> None:
    """Make the queues' Redis fsync its AOF as ``policy`` says (``CONFIG SET``, which Redis applies at once, as
    if started with it); raises ``ValueError`` for a policy that is not one of ``APPENDFSYNC_POLICIES``."""
    if policy not in APPENDFSYNC_POLICIES:
        raise ValueError(f"appendfsync {policy!r}: one of {', '.join(APPENDFSYNC_POLICIES)}")
    with redis.Redis(host="127.0.0.1", port=stack.servers.redis.port) as client:
        client.config_set("appendfsync", policy)
        assert client.config_get("appendfsync") == {"appendfsync": policy}


def reset(stack: Stack) -> None:
    """Empty every server: Redis, the table, the graph (schema re-applied) and both JetStream streams."""
    s = stack.settings
    with redis.Redis(host="127.0.0.1", port=stack.servers.redis.port) as client:
        client.flushall()
    conn = psycopg2.connect(host="127.0.0.1", port=s.pg_port, dbname=s.pg_db, user="postgres")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (s.pg_table,))
        if cur.fetchone()[0] is not None:  # type: ignore[index]
            cur.execute(f'TRUNCATE "{s.pg_table}"')
    conn.close()
    _empty_graph(stack)
    asyncio.run(_delete_streams(s))
    _migrate(s)


def _empty_graph(stack: Stack) -> None:
    s = stack.settings
    if stack.servers.falkordb is not None:
        graph = FalkorDB(host="127.0.0.1", port=stack.servers.falkordb.port).select_graph(s.graph_name)
        try:
            graph.delete()
        except redis.ResponseError:
            pass  # no graph yet
        return
    neo4jserver.empty_database(s.neo4j_uri, s.neo4j_user, s.graph_password)


async def _delete_streams(settings: Settings) -> None:
    nc = await connect(settings, "etl-bench-reset")
    try:
        js = nc.jetstream()
        for stream in (settings.nats_stream, settings.nats_enriched_stream):
            try:
                await js.delete_stream(stream)
            except NotFoundError:
                pass
    finally:
        await nc.close()


def _migrate(settings: Settings) -> None:
    from etl.sinks.graph.sink import GraphSink
    from etl.sinks.timescale import TimescaleSink

    for sink in (TimescaleSink(settings), GraphSink(settings)):
        sink.open()
        sink.close()


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()]}

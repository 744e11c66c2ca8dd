"""The local default: the whole pipeline on one machine, from pip packages, with a sample-event generator.

Servers (NATS with JetStream, Redis with AOF, PostgreSQL, FalkorDB) keep their data under one directory, so a
restart resumes where it left off. The bridge and one worker per pool run as child processes, exactly as in
production. Stopping (Ctrl-C) goes in order: generator, bridge, workers, then the servers.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from etl import devservers, report
from etl.config import Settings
from etl.generator import generate
from etl.supervisor import Pipeline

PROGRESS_INTERVAL_S = 1.0
MALFORMED_EVERY = 200


@dataclass(frozen=True)
class DevOptions:
    data_dir: Path
    clean: bool = False
    count: int = 2000
    rate: float = 0.0
    hosts: int = 10
    generate: bool = True
    once: bool = False


@dataclass
class Servers:
    nats: devservers.Server
    redis: devservers.Server
    falkordb: devservers.Server
    postgres: devservers.Server

    def all(self) -> list[devservers.Server]:
        return [self.nats, self.redis, self.falkordb, self.postgres]


def start_servers(data_dir: Path) -> Servers:
    servers = Servers(
        nats=devservers.nats_server(data_dir / "nats"),
        redis=devservers.redis_server(data_dir / "redis"),
        falkordb=devservers.redis_server(data_dir / "falkordb", falkordb=True),
        postgres=devservers.postgres_server(data_dir / "postgres"),
    )
    for server in servers.all():
        server.start()
    devservers.ensure_database(servers.postgres.port, "aegisflux")
    return servers


def settings_env(servers: Servers) -> dict[str, str]:
    """The environment that points the pipeline at the local servers."""
    return {
        "NATS_URL": f"nats://127.0.0.1:{servers.nats.port}",
        "REDIS_URL": f"redis://127.0.0.1:{servers.redis.port}/0",
        "PG_HOST": "127.0.0.1",
        "PG_PORT": str(servers.postgres.port),
        "PG_DB": "aegisflux",
        "PG_USER": "postgres",
        "NEO4J_URI": f"falkor://127.0.0.1:{servers.falkordb.port}",
        "AF_FAKE_RDNS": "true",
    }


def describe(servers: Servers, env: dict[str, str]) -> str:
    lines = ["services:"]
    lines += [f"  {s.name:<9} 127.0.0.1:{s.port}   data: {s.data_dir}" for s in servers.all()]
    lines += [
        f"  psql:     psql -h 127.0.0.1 -p {servers.postgres.port} -U postgres aegisflux",
        f"  graph:    redis-cli -p {servers.falkordb.port} GRAPH.QUERY events 'MATCH (e:Event) RETURN count(e)'",
        "  env:      " + " ".join(f"{k}={v}" for k, v in env.items()),
    ]
    return "\n".join(lines)


def migrate(settings: Settings) -> None:
    """Apply the PostgreSQL schema and the graph constraints before the workers start."""
    from etl.sinks.graph import GraphSink
    from etl.sinks.timescale import TimescaleSink

    for sink in (TimescaleSink(settings), GraphSink(settings)):
        sink.open()
        sink.close()


async def publish(settings: Settings, events: Iterable[bytes], rate: float) -> int:
    """Publish raw events to the raw subject through JetStream; ``rate`` is events/s (0: as fast as acked)."""
    from etl.bridge import ensure_raw_stream
    from etl.nats_conn import connect

    nc = await connect(settings, name="etl-generator")
    js = nc.jetstream()
    await ensure_raw_stream(js, settings)
    sent = 0
    start = time.monotonic()
    pending = []
    try:
        for data in events:
            pending.append(js.publish(settings.nats_subject_raw, data))
            sent += 1
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
            if rate > 0 and sent / rate > time.monotonic() - start:
                await asyncio.gather(*pending)
                pending.clear()
                await asyncio.sleep(sent / rate - (time.monotonic() - start))
        await asyncio.gather(*pending)
    finally:
        await nc.close()
    return sent


def progress_line(counts: report.Counts, elapsed_s: float) -> str:
    dead = sum(counts.dead_lettered.values())
    queued = sum(counts.queued.values())
    return (f"[{elapsed_s:6.1f}s] stored={counts.stored} merged={counts.merged} published={counts.published} "
            f"dead-lettered={dead} queued={queued}")


def summary(counts: report.Counts) -> str:
    dead = ", ".join(f"{stage}={n}" for stage, n in sorted(counts.dead_lettered.items())) or "none"
    return (f"TimescaleDB rows: {counts.stored}\nGraph Event nodes: {counts.merged}\n"
            f"events.enriched messages: {counts.published}\ndead letters: {dead}")


def wait_until_settled(settings: Settings, expected_valid: int, say: Callable[[str], None],
                       should_stop: Callable[[], bool]) -> report.Counts:
    """Print progress until every sink holds ``expected_valid`` events and the queues are empty, or until
    ``should_stop`` says so."""
    start = time.monotonic()
    while True:
        counts = report.collect(settings)
        say(progress_line(counts, time.monotonic() - start))
        done = min(counts.stored, counts.merged, counts.published) >= expected_valid
        if (done and not any(counts.queued.values())) or should_stop():
            return counts
        time.sleep(PROGRESS_INTERVAL_S)


def prepare_data_dir(options: DevOptions) -> None:
    if options.clean and options.data_dir.exists():
        shutil.rmtree(options.data_dir)
    options.data_dir.mkdir(parents=True, exist_ok=True)


def sample(options: DevOptions) -> list[bytes]:
    seed = int(time.time())  # a new run adds new events rather than replaying the same ids
    return list(generate(options.count, hosts=options.hosts, seed=seed, base_ms=int(time.time() * 1000),
                         malformed_every=MALFORMED_EVERY))


def stop_all(pipeline: Pipeline | None, servers: Servers | None) -> None:
    if pipeline is not None:
        pipeline.stop()
    if servers is not None:
        for server in reversed(servers.all()):
            server.stop()


def run_dev(options: DevOptions, say: Callable[[str], None]) -> int:
    """Run the local default until Ctrl-C (or, with ``once``, until the generated events are all accounted for)."""
    prepare_data_dir(options)
    servers: Servers | None = None
    pipeline: Pipeline | None = None
    settings: Settings | None = None
    try:
        servers = start_servers(options.data_dir)
        env = settings_env(servers)
        settings = Settings.from_env(env)
        say(describe(servers, env))
        migrate(settings)
        pipeline = Pipeline(env, options.data_dir / "logs").start()
        say(f"bridge and pools started; logs in {options.data_dir / 'logs'}")
        expected = report.collect(settings).stored
        if options.generate:
            sent = asyncio.run(publish(settings, sample(options), options.rate))
            expected += sent - sent // MALFORMED_EVERY
            say(f"published {sent} sample events ({sent // MALFORMED_EVERY} malformed) to {settings.nats_subject_raw}")
        else:
            say(f"waiting for events on {settings.nats_subject_raw}; Ctrl-C to stop")
        wait_until_settled(settings, expected, say, should_stop=lambda: False) if options.once else _forever(
            settings, say)
    except KeyboardInterrupt:
        say("stopping: bridge first, then the workers, then the servers")
    finally:
        if pipeline is not None:
            pipeline.stop()
        if settings is not None and servers is not None and all(s.running for s in servers.all()):
            say(summary(report.collect(settings)))
        stop_all(None, servers)
    return 0


def _forever(settings: Settings, say: Callable[[str], None]) -> None:
    start = time.monotonic()
    while True:
        say(progress_line(report.collect(settings), time.monotonic() - start))
        time.sleep(PROGRESS_INTERVAL_S)

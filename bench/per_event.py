"""The per-event shape: the baseline the batched design must beat.

The same servers, code and durability, but one Dramatiq message per event and one statement per row: the bridge
enqueues each event on its own, ``pe_enrich`` validates and enriches one event and sends it to three queues,
``pe_publish`` publishes it alone, ``pe_timescale`` runs one ``INSERT ... ON CONFLICT DO NOTHING`` for it, and
``pe_graph`` one merge statement for it. Run as::

    dramatiq bench.per_event --queues pe_enrich      # and pe_publish, pe_timescale, pe_graph
    python -m bench.per_event                        # the bridge
"""

# ruff: noqa: E402 - etl.actors must set up the metrics directory before anything imports prometheus_client.
from __future__ import annotations

import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
import orjson
import psycopg2

from etl import actors
from etl.broker import AofSync
from etl.dev.supervisor import Pipeline
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import payload_bytes
from etl.pipeline.validate import validate_batch
from etl.pools import dramatiq_command
from etl.sinks.postgres import connection_params
from etl.stages import NAMES

app = actors.app
PE_QUEUES = {"enrich": "pe_enrich", "publish": "pe_publish", "timescale": "pe_timescale", "graph": "pe_graph"}
_INSERT = """INSERT INTO {table} (id, "time", "timestamp", type, source, host_id, env, rdns, metadata, payload)
VALUES (%s, to_timestamp(%s::float8 / 1000), %s, %s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING"""
_local = threading.local()


@dramatiq.actor(queue_name="pe_enrich")
def pe_enrich(raw: str) -> None:
    valid, bad = validate_batch([raw], max_bytes=app.settings.max_event_bytes)
    good = [v.event for v in valid]
    app.dead_letters().add(bad)
    for event in enrich_batch(good, env=app.settings.af_env, resolver=app.resolver, now=datetime.now(UTC)):
        for actor in (pe_publish, pe_store, pe_merge):
            actor.send(event)


@dramatiq.actor(queue_name="pe_publish")
def pe_publish(event: dict[str, Any]) -> None:
    app.sinks.get("publish").write([event])


@dramatiq.actor(queue_name="pe_timescale")
def pe_store(event: dict[str, Any]) -> None:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg2.connect(**connection_params(app.settings))
        conn.autocommit = True
    meta = event["metadata"]
    with conn.cursor() as cur:
        cur.execute(_INSERT.format(table=app.settings.pg_table),
                    (event["id"], event["timestamp"], event["timestamp"], event["type"], event["source"],
                     meta.get("host_id"), event.get("env"), event.get("rdns"), orjson.dumps(meta).decode(),
                     payload_bytes(event)))


@dramatiq.actor(queue_name="pe_graph")
def pe_merge(event: dict[str, Any]) -> None:
    app.sinks.get("graph").write([event])


def _aof() -> AofSync:
    aof = getattr(_local, "aof", None)
    if aof is None:
        aof = _local.aof = AofSync(app.broker.client, enabled=app.settings.redis_wait_aof,
                                   replicas=app.settings.redis_wait_replicas)
    return aof


def enqueue_each(batch: list[bytes]) -> None:
    """The per-event hand-off: one message per event, then the same wait for Redis's AOF as the real bridge."""
    for raw in batch:
        pe_enrich.send(raw.decode("utf-8"))
    _aof().wait()  # the same durability as the batched bridge


class PerEventPipeline(Pipeline):
    """``etl.dev.supervisor.Pipeline`` running the per-event actors and bridge of this module instead."""

    def start_one(self, name: str) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        if name.startswith("bridge"):
            argv = [sys.executable, "-m", "bench.per_event"]
        else:
            pool = name.removeprefix("worker-")
            env["METRICS_PORT"] = str(self._port(name))
            argv, extra = dramatiq_command(pool, env)
            env.update(extra)
            argv[argv.index("etl.actors")] = "bench.per_event"
            argv[argv.index("--queues") + 1] = PE_QUEUES[pool]
        self._spawn(name, argv, env)

    def _port(self, name: str) -> int:
        from etl.dev.servers import free_port

        return self.ports.setdefault(name, free_port())

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        import signal
        import subprocess

        from etl.dev.servers import signal_when_parent_dies

        with open(Path(self.log_dir) / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True,
                                                preexec_fn=signal_when_parent_dies(signal.SIGTERM))


def main() -> int:
    from etl.pipeline.bridge import Bridge, run_until_signalled

    bridge = Bridge(app.settings, enqueue_each, ack_wait_s=app.settings.nats_ack_wait_s)
    run_until_signalled(bridge)
    return 0


assert set(PE_QUEUES) == set(NAMES)

if __name__ == "__main__":
    raise SystemExit(main())

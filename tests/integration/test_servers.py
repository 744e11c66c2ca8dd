"""The test servers themselves: each answers over a real connection."""

from __future__ import annotations

import asyncio

import nats
import psycopg2
import redis
from falkordb import FalkorDB

from etl import devservers


def test_nats_has_jetstream(nats_server: devservers.Server) -> None:
    async def main() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{nats_server.port}")
        try:
            info = await nc.jetstream().account_info()
            assert info.limits is not None
        finally:
            await nc.close()

    asyncio.run(main())


def test_redis_answers_with_aof(redis_server: devservers.Server) -> None:
    client = redis.Redis(port=redis_server.port)
    assert client.ping()
    assert client.config_get("appendonly")["appendonly"] == "yes"


def test_falkordb_runs_cypher(falkordb_server: devservers.Server) -> None:
    graph = FalkorDB(host="127.0.0.1", port=falkordb_server.port).select_graph("smoke")
    assert graph.query("RETURN 1 + 1").result_set == [[2]]
    graph.delete()


def test_postgres_has_database(postgres_server: devservers.Server) -> None:
    conn = psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user="postgres", dbname="aegisflux")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()

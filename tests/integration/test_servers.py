"""The test servers themselves: each answers over a real connection."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import nats
import psycopg2
import pytest
import redis
from falkordb import FalkorDB
from neo4j import GraphDatabase

from etl.config import Settings
from etl.dev import neo4jserver
from etl.dev import servers as devservers
from etl.errors import SinkUnavailable
from etl.sinks.graph.sink import GraphSink


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
    assert client.config_get("appendfsync")["appendfsync"] == devservers.DEFAULT_APPENDFSYNC == "always"


@pytest.mark.parametrize("policy", ["everysec", "no"])
def test_redis_fsyncs_its_aof_as_asked(tmp_path: Path, policy: str) -> None:
    server = devservers.redis_server(tmp_path / "redis", appendfsync=policy).start()
    try:
        with redis.Redis(port=server.port) as client:
            assert client.config_get("appendfsync") == {"appendfsync": policy}
    finally:
        server.stop()
    with pytest.raises(ValueError, match="appendfsync 'sometimes'"):
        devservers.redis_server(tmp_path / "other", appendfsync="sometimes")


def test_falkordb_runs_cypher(falkordb_server: devservers.Server) -> None:
    graph = FalkorDB(host="127.0.0.1", port=falkordb_server.port).select_graph("smoke")
    assert graph.query("RETURN 1 + 1").result_set == [[2]]
    graph.delete()


def test_neo4j_is_the_compose_files_community_minor_with_bolt_and_a_password(neo4j_server: devservers.Server) -> None:
    password = neo4j_server.password  # type: ignore[attr-defined]
    with GraphDatabase.driver(f"bolt://127.0.0.1:{neo4j_server.port}", auth=("neo4j", password)) as driver:
        [record] = driver.execute_query("CALL dbms.components() YIELD versions, edition RETURN *").records
    assert record["edition"] == "community" and record["versions"] == [neo4jserver.neo4j_version()]
    compose = (Path(__file__).parents[2] / "docker-compose.yml").read_text()
    assert f"image: neo4j:{neo4jserver.neo4j_version().rsplit('.', 1)[0]}-community" in compose


def test_neo4j_refuses_a_wrong_password_and_the_sink_says_unavailable(neo4j_server: devservers.Server) -> None:
    sink = GraphSink(Settings(neo4j_uri=f"bolt://127.0.0.1:{neo4j_server.port}", neo4j_password="wrong-password"))
    with pytest.raises(SinkUnavailable, match="Unauthorized"):
        sink.open()
    sink.close()


def test_postgres_has_database(postgres_server: devservers.Server) -> None:
    conn = psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user="postgres", dbname="aegisflux")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()


def test_a_restarted_redis_is_ready_only_once_its_aof_is_loaded(tmp_path: Path) -> None:
    server = devservers.redis_server(tmp_path / "redis").start()
    try:
        client = redis.Redis(port=server.port)
        # An AOF big enough that loading it takes a while: Redis accepts connections long before it is done.
        # (one command per key: loading replays commands, so their number is what takes time).
        for start in range(0, 400_000, 20_000):
            with client.pipeline(transaction=False) as pipe:
                for i in range(start, start + 20_000):
                    pipe.set(f"key:{i}", "x" * 16)
                pipe.execute()
        client.close()
        server.stop()
        server.start()
        # Asked over a bare socket: redis-py would hide a LOADING answer by waiting in its connection handshake.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as bare:
            bare.sendall(b"DBSIZE\r\n")
            assert bare.recv(64) == b":400000\r\n"
    finally:
        server.stop()

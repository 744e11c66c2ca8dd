"""Real servers for the whole test session, started from pip-installed packages on free ports.

Every server is started once per session; tests isolate themselves by names (a table, a graph, a stream, a
Redis database) from ``make_settings``, so they never see each other's data.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from etl.config import Settings
from etl.dev import neo4jserver
from etl.dev import servers as devservers
from etl.natsio import internals as natsio_internals
from tests import graphs

_redis_db = itertools.count(1)


@pytest.fixture(params=["internals", "public"])
def nats_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on nats-py's private hooks (``etl.natsio.internals``; they must check out on the pinned
    nats-py), then on its public API: both paths are proven, in this process, against the real server."""
    internals_wanted = request.param == "internals"
    previous = natsio_internals.use_public_api(not internals_wanted)
    try:
        assert natsio_internals.fast_path() == internals_wanted, "the pinned nats-py's hooks did not check out"
        yield str(request.param)
    finally:
        natsio_internals.use_public_api(previous)


@pytest.fixture(scope="session")
def server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def nats_server(server_root: Path) -> Iterator[devservers.Server]:
    server = devservers.nats_server(server_root / "nats").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(server_root: Path) -> Iterator[devservers.Server]:
    server = devservers.redis_server(server_root / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def falkordb_server(server_root: Path) -> Iterator[devservers.Server]:
    server = devservers.redis_server(server_root / "falkordb", falkordb=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def neo4j_server(server_root: Path) -> Iterator[devservers.Server]:
    server = graphs.neo4j_server_or_skip(server_root / "neo4j").start()
    yield server
    server.stop()


@pytest.fixture(params=graphs.GRAPH_BACKENDS)
def graph_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings naming each graph backend's session server in turn (``make_settings(**graph_env)``). The
    Neo4j database is emptied first: Neo4j Community has one, shared by every test."""
    server = request.getfixturevalue(f"{request.param}_server")
    env = graphs.graph_env(request.param, server)
    graphs.reset(Settings.from_env(env))
    return env


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the local Neo4j (cached after the first time) before any test runs, if one needs it: Maven's first
    download would otherwise count against that test's timeout. Without Java the tests say so themselves."""
    if any("neo4j" in item.nodeid or "neo4j_server" in getattr(item, "fixturenames", ())
           for item in session.items):
        try:
            neo4jserver.build()
        except neo4jserver.JavaMissing:
            pass


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for reason in sorted(graphs.skipped_for):
        terminalreporter.write_line(f"Neo4j tests skipped: {reason}", yellow=True)


@pytest.fixture(scope="session")
def postgres_server(server_root: Path) -> Iterator[devservers.Server]:
    server = devservers.postgres_server(server_root / "postgres", durable=False).start()
    devservers.ensure_database(server.port, "aegisflux")
    yield server
    server.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[devservers.Server]:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    server = devservers.postgres_server(tmp_path / "postgres", durable=False).start()
    devservers.ensure_database(server.port, "aegisflux")
    yield server
    server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(
    nats_server: devservers.Server,
    redis_server: devservers.Server,
    falkordb_server: devservers.Server,
    postgres_server: devservers.Server,
) -> Callable[..., Settings]:
    """Settings pointing at the session's servers, with names unique to this test.

    Keyword arguments are environment variables that override the defaults, e.g. ``MAX_BATCH_SIZE="10"``.
    """
    suffix = uuid.uuid4().hex[:8]
    db = next(_redis_db) % 16
    # Queues and dead letters live in the Redis database: a test starts from an empty one.
    with redis.Redis(port=redis_server.port, db=db) as client:
        client.flushdb()
    base = {
        "NATS_URL": f"nats://127.0.0.1:{nats_server.port}",
        "NATS_STREAM": f"EVENTS_{suffix}",
        "NATS_SUBJECT_RAW": f"events.raw.{suffix}",
        "NATS_CONSUMER": f"etl_bridge_{suffix}",
        "NATS_SUBJECT_ENRICHED": f"events.enriched.{suffix}",
        "NATS_ENRICHED_STREAM": f"EVENTS_ENRICHED_{suffix}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{db}",
        "PG_HOST": "127.0.0.1",
        "PG_PORT": str(postgres_server.port),
        "PG_DB": "aegisflux",
        "PG_TABLE": f"events_{suffix}",
        "NEO4J_URI": f"falkor://127.0.0.1:{falkordb_server.port}",
        "GRAPH_NAME": f"events_{suffix}",
        "AF_ENV": "test",
        "AF_FAKE_RDNS": "true",
        # A stream's max_bytes is reserved from the server's JetStream storage, and the suite makes hundreds of
        # streams on one server: unlimited here, tests of the limits set their own.
        "NATS_STREAM_MAX_BYTES": "0",
        "NATS_ENRICHED_STREAM_MAX_BYTES": "0",
    }

    def make(**overrides: Any) -> Settings:
        env = {**base, **{k: str(v) for k, v in overrides.items()}}
        return Settings.from_env(env)

    make.env = base  # type: ignore[attr-defined]
    return make


@pytest.fixture
def start_pipeline(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start the real bridge and worker pools for some settings (schema applied first); at the end of the test,
    stop them and check that every process exited 0."""
    from etl.dev.stack import migrate
    from etl.dev.supervisor import Pipeline

    started: list[Pipeline] = []

    def start(settings: Settings, **options: Any) -> Pipeline:
        migrate(settings)
        pipeline = Pipeline(settings.to_env(), tmp_path / f"logs{len(started) or ''}", **options).start()
        started.append(pipeline)
        return pipeline

    yield start
    for pipeline in started:
        codes = pipeline.stop()
        assert all(code == 0 for code in codes.values()), {n: pipeline.log_tail(n) for n in codes}

"""The graph backends the tests run on, and a probe that reads a graph back through the backend's own client (never
through the sink under test).

``GRAPH_BACKENDS`` is what the graph contract suite, the end-to-end tests, poison isolation and the fault tests are
parametrised over. Neo4j Community has one user database, so a test on Neo4j starts by emptying it (``reset``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import pytest

from etl.config import Settings
from etl.dev import neo4jserver
from etl.dev.servers import Server
from etl.dev.services import FALKORDB, GRAPH_BACKENDS, NEO4J, graph_env
from etl.sinks.graph.backend import FALKOR_SCHEME

__all__ = ["FALKORDB", "GRAPH_BACKENDS", "NEO4J", "graph_env"]  # the local default's names, used by the tests

T = TypeVar("T")
# Why Neo4j tests were skipped, for the one line the session's summary prints.
skipped_for: set[str] = set()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require_neo4j(make: Callable[[], T]) -> T:
    """``make()``, which needs Java and Maven (``etl.dev.neo4jserver``). Without them the test skips, saying what to
    install; on CI (``CI=true``) it fails instead: CI must run every Neo4j test."""
    try:
        return make()
    except neo4jserver.JavaMissing as e:
        if in_ci():
            pytest.fail(f"CI must run the Neo4j tests: {e}", pytrace=False)
        skipped_for.add(str(e))
        pytest.skip(str(e))


def neo4j_server_or_skip(data_dir: Path) -> Server:
    """A Neo4j server under ``data_dir``, not started (see ``require_neo4j``)."""
    return require_neo4j(lambda: neo4jserver.neo4j_server(data_dir))


def backend_of(settings: Settings) -> str:
    return FALKORDB if urlsplit(settings.neo4j_uri).scheme == FALKOR_SCHEME else NEO4J


class Probe(Protocol):
    def run(self, cypher: str, **params: Any) -> None: ...
    def rows(self, cypher: str, **params: Any) -> list[list[Any]]: ...
    def unique_keys(self) -> set[tuple[str, str]]: ...
    def drop(self) -> None: ...
    def close(self) -> None: ...


class FalkorProbe:
    """The graph GRAPH_NAME on FalkorDB."""

    def __init__(self, settings: Settings) -> None:
        from falkordb import FalkorDB

        url = urlsplit(settings.neo4j_uri)
        self._db = FalkorDB(host=url.hostname, port=url.port, username=unquote(url.username or "") or None,
                            password=unquote(url.password or "") or settings.graph_password or None)
        self._graph = self._db.select_graph(settings.graph_name)

    def run(self, cypher: str, **params: Any) -> None:
        self._graph.query(cypher, params or None)

    def rows(self, cypher: str, **params: Any) -> list[list[Any]]:
        return [list(r) for r in self._graph.ro_query(cypher, params or None).result_set]

    def unique_keys(self) -> set[tuple[str, str]]:
        return {(c["label"], c["properties"][0]) for c in self._graph.list_constraints()
                if c["type"] == "UNIQUE" and c["status"] == "OPERATIONAL"}

    def drop(self) -> None:
        """Delete the graph."""
        if self._graph.name in self._db.list_graphs():
            self._graph.delete()

    def close(self) -> None:
        self._db.connection.close()


class Neo4jProbe:
    """The default database of a Neo4j server."""

    def __init__(self, settings: Settings) -> None:
        from neo4j import GraphDatabase

        self._settings = settings
        self._driver = GraphDatabase.driver(settings.neo4j_uri, auth=(settings.neo4j_user, settings.graph_password))

    def run(self, cypher: str, **params: Any) -> None:
        self._driver.execute_query(cypher, params)

    def rows(self, cypher: str, **params: Any) -> list[list[Any]]:
        return [list(r.values()) for r in self._driver.execute_query(cypher, params).records]

    def unique_keys(self) -> set[tuple[str, str]]:
        shown = self.rows("SHOW CONSTRAINTS YIELD labelsOrTypes, properties, type")
        return {(labels[0], props[0]) for labels, props, kind in shown if "UNIQUENESS" in kind}

    def drop(self) -> None:
        """Nothing: Neo4j's one database is emptied before each test (``reset``), not after."""

    def empty(self) -> None:
        """Empty the database: every node, relationship and constraint."""
        neo4jserver.empty_database(self._settings.neo4j_uri, self._settings.neo4j_user, self._settings.graph_password)
        for (name,) in self.rows("SHOW CONSTRAINTS YIELD name"):
            self.run(f"DROP CONSTRAINT `{name}` IF EXISTS")

    def close(self) -> None:
        self._driver.close()


def open_probe(settings: Settings) -> FalkorProbe | Neo4jProbe:
    return FalkorProbe(settings) if backend_of(settings) == FALKORDB else Neo4jProbe(settings)


def reset(settings: Settings) -> None:
    """Start the graph of ``settings`` empty. FalkorDB's graph is already new (GRAPH_NAME is unique per test);
    Neo4j's one database is emptied."""
    if backend_of(settings) == NEO4J:
        probe = Neo4jProbe(settings)
        try:
            probe.empty()
        finally:
            probe.close()

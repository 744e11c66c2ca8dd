"""Concurrent graph writers on hub nodes, on Neo4j: the graph pool run as 1 x 1, 1 x 2, 2 x 1 and 1 x 4
(processes x threads) on events that all come from 3 hosts, 2 users and 5 containers. Whatever deadlocks Neo4j
finds between the writers, every event is merged exactly once (by id), and whatever the driver ran again is a
deadlock or a lock time-out (``etl_graph_write_reruns_total``; that it counts each one is shown on a deadlock made
on purpose, in test_graph_sink.py). The throughput of each size is measured by ``bench/run`` (``bench/neo4j.py``)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl.config import Settings
from etl.dev import servers
from etl.dev.generator import generate_hot
from etl.dev.stack import migrate
from etl.dev.supervisor import Pipeline
from etl.stages import NAMES
from tests.graphs import NEO4J, graph_env, reset
from tests.integration.accounting import by_id, check_graph, check_postgres, publish_all
from tests.integration.faults_support import create_raw_consumer, diagnose, wait_settled

EVENTS = 3000
SETTLE_S = 120.0
OTHER_POOLS = tuple(name for name in NAMES if name != "graph")


def reruns(port: int) -> dict[str, float]:
    """The graph pool's ``etl_graph_write_reruns_total`` by code, read from its metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.labels["code"]: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "etl_graph_write_reruns_total"}


@pytest.mark.timeout(SETTLE_S + 120)
@pytest.mark.parametrize(("processes", "threads"), [(1, 1), (1, 2), (2, 1), (1, 4)],
                         ids=["1x1", "1x2", "2x1", "1x4"])
def test_concurrent_graph_writers_on_hub_nodes_merge_each_event_once(
        processes: int, threads: int, make_settings: Callable[..., Settings], neo4j_server: servers.Server,
        tmp_path: Path) -> None:
    settings = make_settings(**graph_env(NEO4J, neo4j_server), MAX_BATCH_SIZE=100, BATCH_LINGER_MS=20)
    reset(settings)
    migrate(settings)
    create_raw_consumer(settings)
    env = settings.to_env()
    rest = Pipeline(env, tmp_path / "logs", pools=OTHER_POOLS).start()
    graph = Pipeline({**env, "WORKER_PROCESSES": str(processes), "WORKER_THREADS": str(threads)},
                     tmp_path / "logs-graph", pools=("graph",), bridges=0).start()
    try:
        events = list(generate_hot(EVENTS, seed=processes * 10 + threads))
        asyncio.run(publish_all(settings, events))
        wait_settled(settings, rest, timeout_s=SETTLE_S)
        expected = by_id(events)
        check_graph(settings, expected)
        check_postgres(settings, expected)
        retried = reruns(graph.ports["worker-graph"])
        print(f"\n{processes}x{threads}: transient errors run again: {retried or 'none'}")
        assert set(retried) <= {"Neo.TransientError.Transaction.DeadlockDetected",
                                "Neo.TransientError.Transaction.LockAcquisitionTimeout"}, retried
    finally:
        for pipeline in (graph, rest):
            codes = pipeline.stop()
            assert all(code == 0 for code in codes.values()), (codes, diagnose(settings, pipeline))

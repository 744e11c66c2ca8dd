"""Graph retention on every backend (``graph_env``): expired Event nodes leave in bounded batches with their
relationships (MATCHED too), while new events, the context nodes (Indicators too) and each Host's COMMUNICATES
stay; runs are counted in the metrics, take turns through their Redis lease, and never stall the sink's writes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from etl.broker import redis_client
from etl.config import Settings
from etl.retention.runs import expire
from etl.retention.task import RetentionTask
from etl.sinks.graph.cypher import HOSTS_OF_INDICATOR_CYPHER
from etl.sinks.graph.expiry import GraphExpiry
from etl.sinks.graph.sink import GraphSink
from tests.graphs import Probe
from tests.integration import graph_fixtures
from tests.integration.retention_support import expiring_in_background
from tests.waiting import wait_for

DAY_MS = 86_400_000
MAX_WRITES = 500
CONTEXT = ("Host", "User", "Process", "Container", "NetworkEndpoint", "Indicator")
FLOWS = "MATCH (h:Host)-[c:COMMUNICATES]->(ne:NetworkEndpoint) RETURN h.id, ne.endpoint_id, c.count, c.last_seen"


def now_ms() -> int:
    return int(time.time() * 1000)


def event(event_id: str, timestamp: int, host: str, **args: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "connect", "source": "/usr/bin/curl", "timestamp": timestamp, "env": "test",
            "rdns": None, "dst_rdns": None, "args": args or {"dst_ip": "10.0.0.5", "dst_port": 5432},
            "metadata": {"host_id": host, "pid": str(100 + len(event_id) % 7), "uid": "0", "user": "root",
                         "container_id": f"c-{host}"}}


def graph_shape(probe: Probe) -> dict[str, Any]:
    """What retention must keep: the context nodes and the flows."""
    shape: dict[str, Any] = {label: probe.rows(f"MATCH (n:{label}) RETURN count(n)")[0][0] for label in CONTEXT}
    shape["flows"] = sorted(map(tuple, probe.rows(FLOWS)))
    return shape


def event_ids(probe: Probe) -> set[str]:
    return {row[0] for row in probe.rows("MATCH (e:Event) RETURN e.id")}


def linked_event_ids(probe: Probe) -> set[str]:
    return {row[0] for row in probe.rows("MATCH (e:Event)-[]-() RETURN DISTINCT e.id")}


@pytest.fixture
def settings(make_settings: Callable[..., Settings], graph_env: dict[str, str]) -> Settings:
    return make_settings(**graph_env, GRAPH_RETENTION="1d", GRAPH_RETENTION_BATCH="10", RETENTION_INTERVAL="1m")


# The graph suites' fixtures, on this module's settings (pytest finds them by these names).
probe, sink = graph_fixtures.probe, graph_fixtures.sink


@pytest.fixture
def expiry(settings: Settings) -> Iterator[GraphExpiry]:
    e = GraphExpiry(settings)
    yield e
    e.close()


@pytest.fixture
def lease_redis(settings: Settings) -> Iterator[redis.Redis]:
    client = redis_client(settings)
    yield client
    client.close()


def old_and_new(sink: GraphSink, old: int, new: int) -> tuple[set[str], set[str]]:
    """``old`` events two days old and ``new`` ones from now, from two hosts to the same endpoints."""
    old_events = [event(f"old-{i}", now_ms() - 2 * DAY_MS - i, f"h{i % 2}") for i in range(old)]
    new_events = [event(f"new-{i}", now_ms() - i, f"h{i % 2}") for i in range(new)]
    for batch in (old_events, new_events):
        sink.write(batch)
    return {e["id"] for e in old_events}, {e["id"] for e in new_events}


def test_expired_events_leave_in_bounded_batches_and_the_context_stays(
        sink: GraphSink, probe: Probe, expiry: GraphExpiry) -> None:
    _, new = old_and_new(sink, old=35, new=5)
    before = graph_shape(probe)
    assert before["Host"] == 2 and before["NetworkEndpoint"] == 1 and before["flows"][0][2] + \
        before["flows"][1][2] == 40

    run = expire(expiry, time.time() - expiry.retention_s, budget_s=60)

    assert (run.removed, run.statements, run.complete) == (35, 4, True)  # 10 + 10 + 10 + 5
    assert event_ids(probe) == new
    assert linked_event_ids(probe) == new  # no relationship of an expired event is left
    assert graph_shape(probe) == before  # Hosts, Users, Processes, Containers, endpoints and flows stay
    assert expire(expiry, time.time() - expiry.retention_s, budget_s=60).removed == 0


def test_indicators_stay_like_other_context_and_lose_only_expired_events_matches(
        sink: GraphSink, probe: Probe, expiry: GraphExpiry) -> None:
    hit = {"type": "ip", "value": "10.0.0.5", "source": "feed-a", "severity": "high", "field": "destination",
           "observed": "10.0.0.5"}
    once = {**hit, "value": "10.0.0.6", "observed": "10.0.0.6"}
    sink.write([{**event("old-h0", now_ms() - 2 * DAY_MS, "h0"), "intel": [hit]},
                {**event("old-h1", now_ms() - 2 * DAY_MS, "h1", dst_ip="10.0.0.6"), "intel": [once]},
                {**event("new-h2", now_ms(), "h2"), "intel": [hit]}])
    indicators = "MATCH (i:Indicator) RETURN i.key, i.severity ORDER BY i.key"
    before = probe.rows(indicators)

    assert expire(expiry, time.time() - expiry.retention_s, budget_s=60).removed == 2

    # Both Indicators stay, with their properties, as Hosts and endpoints do, the one no Event matches any more
    # too; the query from an indicator now finds only the hosts whose matching events are kept.
    assert probe.rows(indicators) == before == [["ip:10.0.0.5:feed-a", "high"], ["ip:10.0.0.6:feed-a", "high"]]
    assert probe.rows("MATCH (e:Event)-[:MATCHED]->(i:Indicator) RETURN e.id, i.key") == [
        ["new-h2", "ip:10.0.0.5:feed-a"]]
    assert [row[0] for row in probe.rows(HOSTS_OF_INDICATOR_CYPHER, type="ip", value="10.0.0.5")] == ["h2"]
    assert probe.rows(HOSTS_OF_INDICATOR_CYPHER, type="ip", value="10.0.0.6") == []


def test_a_run_stops_at_its_budget_and_the_next_goes_on(sink: GraphSink, probe: Probe, expiry: GraphExpiry) -> None:
    old_and_new(sink, old=30, new=0)

    first = expire(expiry, time.time() - expiry.retention_s, budget_s=0)

    assert (first.removed, first.statements, first.complete) == (10, 1, False)
    assert expire(expiry, time.time() - expiry.retention_s, budget_s=60).removed == 20
    assert event_ids(probe) == set()


def sample(name: str, sink: str) -> float:
    return REGISTRY.get_sample_value(name, {"sink": sink}) or 0.0


def test_a_run_is_counted_and_one_process_runs_at_a_time(
        sink: GraphSink, probe: Probe, expiry: GraphExpiry, settings: Settings, lease_redis: redis.Redis) -> None:
    old_and_new(sink, old=12, new=3)
    removed_before = sample("etl_retention_removed_total", "graph")
    started = time.time()
    task, other = (RetentionTask([expiry], lease_redis, settings.retention_interval_s) for _ in range(2))

    run = task.run_once(expiry)
    assert other.run_once(expiry) is None  # the lease is taken: another process skips this interval

    assert run is not None and run.removed == 12
    assert sample("etl_retention_removed_total", "graph") - removed_before == 12
    assert sample("etl_retention_last_run_timestamp_seconds", "graph") >= started
    assert sample("etl_retention_last_run_seconds", "graph") == pytest.approx(run.seconds)
    assert len(event_ids(probe)) == 3


def jumping_clock(step_s: float = 1000.0) -> Callable[[], float]:
    """A clock that moves ``step_s`` at each reading: every run spends its budget at its first statement."""
    now = [0.0]

    def read() -> float:
        now[0] += step_s
        return now[0]
    return read


def test_a_task_behind_goes_on_at_once_under_its_own_lease(
        sink: GraphSink, probe: Probe, expiry: GraphExpiry, settings: Settings, lease_redis: redis.Redis) -> None:
    _, new = old_and_new(sink, old=35, new=3)
    # One statement per run, runs a minute apart: only going on at once removes the 35 (four runs) in time.
    task = RetentionTask([expiry], lease_redis, settings.retention_interval_s, clock=jumping_clock())
    other = RetentionTask([], lease_redis, settings.retention_interval_s)
    task.start()
    try:
        wait_for(lambda: event_ids(probe) == new, timeout_s=20, describe=lambda: f"{len(event_ids(probe))} left")
        assert other.run_once(expiry) is None  # the lease stays with the task that is running
    finally:
        assert task.stop()
    assert task.run_once(expiry) is not None  # renewed, not waiting for its own lease to expire
    assert other.run_once(expiry) is None


def test_writes_go_on_while_a_large_expiry_runs(settings: Settings, make_settings: Callable[..., Settings],
                                                graph_env: dict[str, str], sink: GraphSink, probe: Probe) -> None:
    old = [event(f"old-{i}", now_ms() - 2 * DAY_MS - i, f"h{i % 20}") for i in range(6000)]
    for start in range(0, len(old), 500):
        sink.write(old[start:start + 500])
    big = GraphExpiry(make_settings(**graph_env, GRAPH_RETENTION="1d", GRAPH_RETENTION_BATCH="200"))
    with expiring_in_background(big) as (running, finished):
        written_at = []
        while not running.done() and len(written_at) < MAX_WRITES:
            sink.write([event(f"new-{len(written_at)}-{j}", now_ms(), f"h{j % 20}") for j in range(20)])
            written_at.append(time.monotonic())
        run = running.result(timeout=120)

    assert run.removed == 6000 and run.statements == 31
    # The writes were not held until the deletion ended: they went on between its statements. (One statement
    # removing everything at once holds every write until it ends, on FalkorDB.)
    assert sum(1 for t in written_at if t < finished[0]) >= 5, (written_at, finished)
    assert len(event_ids(probe)) == 20 * len(written_at)

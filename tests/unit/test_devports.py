"""The ports of ``etl dev``: which process gets which port, the checks made before any server starts, and the block
printed at start (service URLs, process endpoints, clients, ``export`` lines). ``check`` binds sockets on loopback:
a port is made "in use" by a real socket held open."""

from __future__ import annotations

import shlex
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl.devports import BRIDGE, HOST, Endpoints, PortError, PortFlags, describe, export_lines
from etl.errors import ConfigError

POOLS = ("enrich", "publish", "timescale", "graph")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something listens on, for the length of the test."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        yield s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (held together so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_run(n: int) -> int:
    """The first of ``n`` consecutive ports that were all free a moment ago."""
    for base in range(20_000, 60_000, 97):
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                sockets.append(s)
                s.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no run of free ports")


def port_in_time_wait() -> int:
    """A port no one listens on any more, whose server closed a connection first: it stays in TIME_WAIT, as the
    metrics port of a process does after ``etl dev`` read its /metrics and stopped."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection((HOST, port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server's side closes first: TIME_WAIT on its port
            client.recv(1)
    return port


# --- process_ports ---

def test_processes_get_the_ports_asked_for_in_pool_order() -> None:
    ports = PortFlags(bridge_health=9100, metrics_base=9200).process_ports(POOLS)
    assert ports == {BRIDGE: 9100, "worker-enrich": 9200, "worker-publish": 9201, "worker-timescale": 9202,
                     "worker-graph": 9203}
    assert next(iter(ports)) == BRIDGE  # first, so the bridge's /metrics is the first of STATUS_METRICS_URLS


def test_zero_picks_a_distinct_free_port_for_each_process() -> None:
    ports = PortFlags().process_ports(POOLS)
    assert set(ports) == {BRIDGE, *(f"worker-{p}" for p in POOLS)}
    assert all(0 < port <= 65535 for port in ports.values())


def test_only_the_flags_given_are_fixed() -> None:
    ports = PortFlags(metrics_base=9200).process_ports(POOLS)
    assert [ports[f"worker-{p}"] for p in POOLS] == [9200, 9201, 9202, 9203]
    assert ports[BRIDGE] not in (0, 9200, 9201, 9202, 9203)


# --- check ---

def test_free_ports_and_zeros_pass() -> None:
    nats, redis, bridge = free_ports(3)
    PortFlags().check(POOLS)
    PortFlags(nats=nats, redis=redis, bridge_health=bridge, metrics_base=free_run(4)).check(POOLS)


def test_a_port_given_twice_names_both_flags() -> None:
    (port,) = free_ports(1)
    with pytest.raises(PortError, match=rf"port {port} is given twice: --nats-port and --postgres-port"):
        PortFlags(nats=port, postgres=port).check(POOLS)


def test_a_metrics_port_that_clashes_with_another_flag_names_the_pool() -> None:
    base = free_run(4)
    with pytest.raises(PortError, match=r"given twice: --redis-port and --metrics-port-base \(\+2, timescale\)"):
        PortFlags(redis=base + 2, metrics_base=base).check(POOLS)


def test_a_port_in_use_is_reported_by_its_flag(taken_port: int) -> None:
    with pytest.raises(PortError, match=rf"port {taken_port} \(--falkordb-port\) is in use on 127\.0\.0\.1"):
        PortFlags(falkordb=taken_port).check(POOLS)


def test_a_metrics_port_in_use_is_reported_with_its_offset() -> None:
    base = free_run(4)
    with socket.socket() as s:
        s.bind((HOST, base + 3))
        s.listen()
        with pytest.raises(PortError, match=rf"port {base + 3} \(--metrics-port-base \(\+3, graph\)\) is in use"):
            PortFlags(metrics_base=base).check(POOLS)


def test_a_port_only_in_time_wait_is_not_in_use() -> None:
    # A restart with the same ports right after a stop: the servers and processes bind with SO_REUSEADDR and
    # start fine, so the check must not refuse the port either.
    port = port_in_time_wait()
    PortFlags(bridge_health=port).check(POOLS)


def test_a_metrics_port_above_the_range_is_refused() -> None:
    with pytest.raises(PortError, match=r"port 65536 \(--metrics-port-base \(\+1, publish\)\) is above 65535"):
        PortFlags(metrics_base=65535).check(POOLS)


def test_a_port_error_is_a_configuration_error() -> None:
    assert issubclass(PortError, ConfigError)


# --- the block printed at start ---

ENV = {"NATS_URL": "nats://127.0.0.1:4001", "REDIS_URL": "redis://127.0.0.1:4002/0", "PG_HOST": "127.0.0.1",
       "PG_PORT": "4004", "PG_DB": "aegisflux", "PG_USER": "postgres", "NEO4J_URI": "falkor://127.0.0.1:4003",
       "AF_FAKE_RDNS": "true", "ODD": "it's a $value with spaces"}
PROCESSES = {BRIDGE: 5000, "worker-enrich": 5001, "worker-publish": 5002, "worker-timescale": 5003,
             "worker-graph": 5004}


def endpoints(data_dir: Path = Path("/data/etl dev")) -> Endpoints:
    return Endpoints(data_dir=data_dir, env=ENV, nats_port=4001, nats_monitor_port=8222, redis_port=4002,
                     falkordb_port=4003, postgres_port=4004, process_ports=PROCESSES)


def test_the_block_names_every_service() -> None:
    text = describe(endpoints())
    assert "nats://127.0.0.1:4001" in text and "http://127.0.0.1:8222/jsz" in text
    assert "redis://127.0.0.1:4002/0" in text
    assert "redis://127.0.0.1:4003" in text and "graph 'events'" in text
    assert "postgresql://postgres@127.0.0.1:4004/aegisflux" in text and "table events" in text
    assert "data in /data/etl dev" in text


def test_the_block_has_health_readyz_and_metrics_of_each_process() -> None:
    lines = describe(endpoints()).splitlines()
    bridge = next(line for line in lines if line.strip().startswith("bridge"))
    assert all(f"http://127.0.0.1:5000/{page}" in bridge for page in ("healthz", "readyz", "metrics"))
    for pool, port in zip(POOLS, range(5001, 5005), strict=True):
        line = next(line for line in lines if line.strip().startswith(pool))
        assert f"http://127.0.0.1:{port}/metrics" in line


def test_the_psql_line_connects_to_this_stack() -> None:
    psql = next(line for line in describe(endpoints()).splitlines() if line.strip().startswith("psql"))
    command = shlex.split(psql.split(None, 1)[1])
    assert Path(command[0]).name == "psql"
    assert command[1:] == ["postgresql://postgres@127.0.0.1:4004/aegisflux"]


def test_the_block_ends_with_the_export_lines() -> None:
    ends = endpoints()
    assert describe(ends).splitlines()[-len(export_lines(ends)):] == export_lines(ends)


def test_export_lines_round_trip_through_the_shell() -> None:
    got = {}
    for line in export_lines(endpoints()):
        keyword, assignment = shlex.split(line)
        assert keyword == "export"
        name, value = assignment.split("=", 1)
        got[name] = value
    urls = ",".join(f"http://127.0.0.1:{port}/metrics" for port in PROCESSES.values())
    assert got == {**ENV, "STATUS_METRICS_URLS": urls}


def test_the_metrics_urls_start_with_the_bridge() -> None:
    assert endpoints().metrics_urls[0] == "http://127.0.0.1:5000/metrics"
    assert len(endpoints().metrics_urls) == len(PROCESSES)

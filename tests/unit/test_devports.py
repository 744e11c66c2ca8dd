"""The ports of ``etl dev``: which process gets which port, the checks made before any server starts, and the block
printed at start (service URLs, process endpoints, clients, ``export`` lines). ``check`` binds sockets on loopback:
a port is made "in use" by a real socket held open."""

from __future__ import annotations

import shlex
import socket
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from etl.dev.ports import BRIDGE, HOST, Endpoints, PortError, PortFlags, describe, export_lines
from etl.dev.services import FALKORDB, GRAPH_BACKENDS, NEO4J
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


def test_a_neo4j_port_in_use_is_reported_by_its_flag(taken_port: int) -> None:
    with pytest.raises(PortError, match=rf"port {taken_port} \(--neo4j-port\) is in use on 127\.0\.0\.1"):
        PortFlags(neo4j=taken_port).check(POOLS)


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


NEO4J_ENV = {**ENV, "NEO4J_URI": "bolt://127.0.0.1:4003", "NEO4J_USER": "neo4j", "NEO4J_PASSWORD": "dev-pass-1"}


def endpoints(data_dir: Path = Path("/data/etl dev")) -> Endpoints:
    return Endpoints(data_dir=data_dir, env=ENV, nats_port=4001, nats_monitor_port=8222, redis_port=4002,
                     graph_backend=FALKORDB, graph_port=4003, postgres_port=4004, process_ports=PROCESSES)


def neo4j_endpoints() -> Endpoints:
    """The same stack with its graph on Neo4j, as ``etl dev --graph neo4j`` runs it."""
    return replace(endpoints(), env=NEO4J_ENV, graph_backend=NEO4J)


def services(text: str) -> list[str]:
    """The lines under "services" of the block."""
    return text.split("\nservices\n", 1)[1].split("\nprocesses\n", 1)[0].splitlines()


def line_starting(text: str, word: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(word))


def test_the_block_names_every_service() -> None:
    text = describe(endpoints())
    assert "nats://127.0.0.1:4001" in text and "http://127.0.0.1:8222/jsz" in text
    assert "redis://127.0.0.1:4002/0" in text
    assert "redis://127.0.0.1:4003" in text and "graph 'events'" in text
    assert "postgresql://postgres@127.0.0.1:4004/aegisflux" in text and "table events" in text
    assert "data in /data/etl dev" in text


def test_the_block_says_where_the_lookup_files_are_when_the_settings_name_them() -> None:
    assert "lookups" not in describe(endpoints())
    env = {**ENV, "INTEL_PATHS": "/d/lookups/intel", "ASSETS_PATH": "/d/lookups/assets.csv",
           "GEOIP_CITY_PATH": "/d/lookups/city.mmdb", "GEOIP_ASN_PATH": "/d/lookups/asn.mmdb", "LOOKUP_RELOAD_S": "5"}
    text = describe(replace(endpoints(), env=env))
    assert line_starting(text, "lookups") == ("  lookups     feeds /d/lookups/intel, inventory /d/lookups/assets.csv, "
                                              "GeoIP /d/lookups/city.mmdb /d/lookups/asn.mmdb")
    assert "reloads a changed file within 5s" in text
    assert "export INTEL_PATHS=/d/lookups/intel" in text


def test_on_falkordb_the_graph_query_uses_the_falkordb_client() -> None:
    text = describe(endpoints())
    assert "falkordb    redis://127.0.0.1:4003   graph 'events', AOF on" in text
    python, flag, code = shlex.split(line_starting(text, "graph query").split(None, 2)[2])
    assert (python, flag) == (sys.executable, "-c") and "FalkorDB(port=4003)" in code
    assert "redis-cli -p 4003 GRAPH.QUERY events" in text
    assert "bolt://" not in text


def test_on_neo4j_the_block_names_its_bolt_uri_user_and_password_and_nothing_of_falkordb() -> None:
    text = describe(neo4j_endpoints())
    assert "  neo4j       bolt://127.0.0.1:4003   user neo4j, password dev-pass-1, the default database" in \
        services(text)
    assert "falkordb" not in text.lower() and "redis-cli" not in text and "redis://127.0.0.1:4003" not in text


def test_on_neo4j_the_graph_query_reads_this_stack_with_the_neo4j_driver() -> None:
    python, flag, code = shlex.split(line_starting(describe(neo4j_endpoints()), "graph query").split(None, 2)[2])
    assert (python, flag) == (sys.executable, "-c")
    compile(code, "<graph query>", "exec")  # a SyntaxError would fail here, not in the user's terminal
    assert 'GraphDatabase.driver("bolt://127.0.0.1:4003", auth=("neo4j", "dev-pass-1"))' in code
    assert "MATCH (e:Event) RETURN count(e)" in code


def test_on_neo4j_the_export_lines_carry_its_user_and_password() -> None:
    exported = dict(shlex.split(line)[1].split("=", 1) for line in export_lines(neo4j_endpoints()))
    assert {k: exported[k] for k in ("NEO4J_URI", "NEO4J_USER", "NEO4J_PASSWORD")} == \
        {"NEO4J_URI": "bolt://127.0.0.1:4003", "NEO4J_USER": "neo4j", "NEO4J_PASSWORD": "dev-pass-1"}


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_every_graph_backend_etl_dev_offers_is_described_under_its_name(backend: str) -> None:
    lines = services(describe(replace(neo4j_endpoints(), graph_backend=backend)))
    assert [line.split()[0] for line in lines] == ["nats", "redis", backend, "postgresql"]


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

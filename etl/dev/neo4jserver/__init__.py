"""A real Neo4j Community server from Maven Central, for the tests, the benchmarks and ``bin/dev --graph neo4j``.

Neo4j publishes no pip package, so the server is Neo4j embedded with its Bolt connector: ``pom.xml`` beside this
file names the artifacts, Maven resolves them (into its usual ``~/.m2``), and ``Neo4jLauncher.java`` is compiled
against them once. The classpath and the compiled launcher are cached under ``$XDG_CACHE_HOME/aegisflux-etl``
(``~/.cache`` by default), keyed by the pom, the launcher and the Java version, so a second start skips Maven.

Each server listens for Bolt only, on loopback, with its data under a directory of the caller's, a bounded heap and
page cache, and authentication on (user ``neo4j``). Needs Java 17 or 21 (what Neo4j 5 runs on) and Maven:
:class:`JavaMissing` says what to install when they are not there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from etl.dev.servers import Server, ServerError, free_port, port_open

HERE = Path(__file__).parent
POM = HERE / "pom.xml"
LAUNCHER_SOURCE = HERE / "Neo4jLauncher.java"
LAUNCHER_CLASS = "Neo4jLauncher"
READY_FILE = "ready"
SUPPORTED_JAVA = (17, 21)
INSTALL_HINT = "install Java 17 and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)"
# Sized for a 2-core machine shared with NATS, Redis, PostgreSQL and the pipeline: what the tests' graphs and the
# benchmark's need, with room to spare.
DEFAULT_HEAP_MB = 1024
DEFAULT_PAGECACHE_MB = 512
USER = "neo4j"
DEFAULT_PASSWORD = "etl-dev-password"  # Neo4j 5 wants at least 8 characters
# A JVM that loads Neo4j's 200-odd jars and creates two databases: several seconds cold on two busy cores.
START_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 900.0
_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


class JavaMissing(ServerError):
    """Java (17 or 21), javac or Maven is missing; the message says what to install."""


@dataclass(frozen=True)
class Toolchain:
    java: str
    javac: str
    mvn: str
    java_major: int


def toolchain() -> Toolchain:
    """The JDK (``JAVA_HOME``'s, else the one on PATH) and Maven to build and run Neo4j. Raises ``JavaMissing``."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    mvn = shutil.which("mvn")
    if not java or not Path(java).exists() or not mvn:
        raise JavaMissing(f"Neo4j needs Java and Maven, not found: {INSTALL_HINT}")
    javac = Path(java).resolve().parent / "javac"
    if not javac.exists():
        raise JavaMissing(f"Neo4j needs a JDK, {java} has no javac beside it: {INSTALL_HINT}")
    major = java_major(subprocess.run([java, "-version"], capture_output=True, text=True).stderr)
    if major not in SUPPORTED_JAVA:
        raise JavaMissing(f"Neo4j 5 runs on Java {' or '.join(map(str, SUPPORTED_JAVA))}, {java} is Java "
                          f"{major}: {INSTALL_HINT}, or point JAVA_HOME at one")
    return Toolchain(java, str(javac), mvn, major)


def java_major(version_text: str) -> int | None:
    """The major version in ``java -version``'s output ("1.8.0" is 8, "17.0.15" is 17); None if unreadable."""
    found = _JAVA_VERSION.search(version_text)
    if not found:
        return None
    first = int(found.group(1))
    return int(found.group(2) or 0) if first == 1 else first


def neo4j_version() -> str:
    """The Neo4j version ``pom.xml`` names."""
    found = re.search(r"<artifactId>neo4j</artifactId>\s*<version>([^<]+)</version>", POM.read_text())
    assert found, f"{POM} names no org.neo4j:neo4j version"
    return found.group(1)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aegisflux-etl" / "neo4j"


@dataclass(frozen=True)
class Launcher:
    """The built launcher: its compiled class and Neo4j's jars."""

    classes: Path
    classpath: str

    def java_classpath(self) -> str:
        return f"{self.classes}{os.pathsep}{self.classpath}"


def build(tools: Toolchain | None = None) -> Launcher:
    """Resolve Neo4j's jars and compile the launcher, or reuse what an earlier call cached. Safe to call from
    several processes at once (the cache is locked). Raises ``JavaMissing``, or ``ServerError`` when Maven or
    javac fails (the message carries their output)."""
    tools = tools or toolchain()
    digest = hashlib.sha256(POM.read_bytes() + LAUNCHER_SOURCE.read_bytes() + bytes([tools.java_major]))
    cache = cache_root() / digest.hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        launcher = _cached(cache)
        if launcher is None:
            launcher = _build_into(cache, tools)
    return launcher


def _cached(cache: Path) -> Launcher | None:
    """The launcher built into ``cache``, if complete and its jars are still in Maven's repository."""
    stamp, classpath_file = cache / "built", cache / "classpath.txt"
    if not stamp.exists() or not classpath_file.exists():
        return None
    classpath = classpath_file.read_text().strip()
    if not all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
        return None  # Maven's repository was cleaned: resolve again
    return Launcher(cache / "classes", classpath)


def _build_into(cache: Path, tools: Toolchain) -> Launcher:
    shutil.copyfile(POM, cache / "pom.xml")  # Maven runs in the cache, never in the (maybe read-only) package
    _run([tools.mvn, "-q", "-B", "dependency:build-classpath", "-Dmdep.outputFile=classpath.txt"], cache, "Maven")
    classpath = (cache / "classpath.txt").read_text().strip()
    shutil.rmtree(cache / "classes", ignore_errors=True)
    _run([tools.javac, "-d", str(cache / "classes"), "-cp", classpath, str(LAUNCHER_SOURCE)], cache, "javac")
    (cache / "built").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return Launcher(cache / "classes", classpath)


def _run(argv: list[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ServerError(f"{what} did not finish in {BUILD_TIMEOUT_S:.0f}s building the local Neo4j") from e
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise ServerError(f"{what} failed building the local Neo4j ({done.returncode}):\n{tail}")


def config_text(port: int, pagecache_mb: int) -> str:
    """The server's neo4j.conf: Bolt alone on loopback ``port``, a page cache of ``pagecache_mb`` MiB."""
    return "\n".join([
        "server.bolt.enabled=true",
        f"server.bolt.listen_address=127.0.0.1:{port}",
        f"server.bolt.advertised_address=127.0.0.1:{port}",
        "server.http.enabled=false",
        "server.https.enabled=false",
        "dbms.security.auth_enabled=true",
        "dbms.usage_report.enabled=false",  # nothing leaves the machine
        f"server.memory.pagecache.size={pagecache_mb}m",
        "db.tx_log.rotation.retention_policy=2 files",
        # Bolt otherwise waits 5 s for its idle event loops, twice, at every stop; nothing is in flight by then.
        "internal.dbms.bolt.netty_server_shutdown_quiet_period=0",
        "internal.dbms.bolt.netty_server_shutdown_timeout=2",
        "",
    ])


def neo4j_server(data_dir: Path, port: int | None = None, *, password: str = DEFAULT_PASSWORD,
                 heap_mb: int = DEFAULT_HEAP_MB, pagecache_mb: int = DEFAULT_PAGECACHE_MB) -> Server:
    """Neo4j with its databases under ``data_dir``, Bolt on ``127.0.0.1:port`` (a free port unless given), user
    ``USER`` with ``password``. Builds the launcher first if needed (see :func:`build`). Not started yet.

    Raises ``JavaMissing`` or ``ServerError``.
    """
    tools = toolchain()
    launcher = build(tools)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = data_dir / "neo4j.conf"
    conf.write_text(config_text(port, pagecache_mb))
    argv = [tools.java, f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m", "-XX:+ExitOnOutOfMemoryError",
            "-Dfile.encoding=UTF-8", "-cp", launcher.java_classpath(), LAUNCHER_CLASS, str(data_dir), str(conf),
            str(data_dir / READY_FILE)]
    ready_file = data_dir / READY_FILE

    def ready() -> bool:
        # The launcher removes a stale ready file before Bolt opens, and writes it once the password is set.
        return ready_file.exists() and port_open(port)

    server = Server("neo4j", argv, port, data_dir, ready=ready, env={"NEO4J_INITIAL_PASSWORD": password},
                    stop_signal=signal.SIGTERM, start_timeout_s=START_TIMEOUT_S)
    server.password = password  # type: ignore[attr-defined]
    return server


def empty_database(uri: str, user: str, password: str) -> None:
    """Delete every node and relationship of the server's default database, in transactions of bounded size (its
    constraints stay). For the tests and the benchmarks, which share one server's one database."""
    from neo4j import GraphDatabase

    with GraphDatabase.driver(uri, auth=(user, password)) as driver, driver.session() as session:
        # CALL ... IN TRANSACTIONS needs an auto-commit transaction, which session.run is.
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()

"""The local default, driven as a user drives it: ``etl dev`` in a terminal, Ctrl-C, start again.

Each run starts its own servers under a data directory of the test's. The runs use ``--rate 0`` so they are quick;
every wait is on the program's output, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from etl.config import Settings
from etl.dev import neo4jserver
from etl.dev.corpus import DUPLICATE_EVERY, duplicates_in
from etl.dev.ports import PortFlags
from etl.dev.publish import malformed_every
from etl.dev.servers import free_port
from etl.dev.services import DEV_NATS_MAX_STORE_BYTES, Servers
from etl.natsio import conn
from etl.pipeline.rawstream import ensure_raw_stream
from etl.sinks.nats_publish import enriched_stream_limits
from tests import graphs

ETL = str(Path(sys.executable).parent / "etl")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ACCOUNTED = r"all (\d+) generated events accounted for"
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0
# A run on Neo4j also waits for its JVM; reading the graph back afterwards starts one again.
NEO4J_RUN_TIMEOUT_S = neo4jserver.START_TIMEOUT_S + START_TIMEOUT_S + SETTLE_TIMEOUT_S
NEO4J_TEST_TIMEOUT_S = NEO4J_RUN_TIMEOUT_S + neo4jserver.START_TIMEOUT_S + 60.0
CTRL_C = b"\x03"


def _controlling_terminal() -> None:
    # Runs in the child after setsid(): make the pty its controlling terminal, so Ctrl-C becomes SIGINT.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``etl dev ARGS`` in a pseudo-terminal of 50x200; its output is read by a thread and waited on."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # the pty's size rules
        self.proc = subprocess.Popen([ETL, "dev", *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, preexec_fn=_controlling_terminal, close_fds=True)
        os.close(slave)
        self._master, self._chunks, self._lock = master, [], threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the last process holding the terminal is gone
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data.decode(errors="replace"))

    @property
    def text(self) -> str:
        """Everything printed so far, without the escape sequences of the redrawn progress."""
        with self._lock:
            return ANSI.sub("", "".join(self._chunks)).replace("\r", "")

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self.text)
            if match:
                return match
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout_s}s (exit {self.proc.poll()}):\n"
                                     f"{self.text[-4000:]}")
            time.sleep(0.05)

    def ctrl_c(self) -> None:
        os.write(self._master, CTRL_C)

    def wait_exit(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"etl dev still running after {timeout_s}s:\n{self.text[-4000:]}") from None
        self._reader.join(5)
        return code

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def close(self) -> None:
        """After a failed test: kill ``etl dev`` and everything it started (its children run in their own sessions)."""
        if self.proc.poll() is None:
            children = self.descendants()
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        os.close(self._master)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def summary_counts(text: str) -> dict[str, int]:
    """The totals of the summary printed on exit."""
    block = text[text.rindex("summary ("):]
    names = {"TimescaleDB rows": "stored", "graph Event nodes": "merged", "events.enriched messages": "published",
             "dead letters": "dead"}
    counts = {key: int(re.search(rf"{name}\s+(\d+)", block).group(1)) for name, key in names.items()}
    counts["dead_enrich"] = int(re.search(r"dead letters\s+\d+ \(.*enrich (\d+)", block).group(1))
    return counts


def leftovers(pids: list[psutil.Process], data_dir: Path) -> list[str]:
    """Processes that were started for the stack, or that name its data directory, and still run."""
    left = [f"{p.pid} {p.info['cmdline']}" for p in psutil.process_iter(["cmdline"])
            if str(data_dir) in " ".join(p.info["cmdline"] or ())]
    for proc in pids:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {proc.cmdline()}")
        except psutil.NoSuchProcess:
            pass
    return left


def expected(sent: int, count: int) -> dict[str, int]:
    """The summary's counts after ``sent`` of ``count`` events generated (the producers' shape): each sink holds
    every valid event once, duplicates included, and the malformed ones are dead-lettered at enrich."""
    every = malformed_every(count)
    malformed = sent // every if every else 0
    valid = sent - malformed - duplicates_in(sent, DUPLICATE_EVERY, every)
    return {"stored": valid, "merged": valid, "published": valid, "dead": malformed, "dead_enrich": malformed}


def run_until_accounted(terminals: list[Terminal], data_dir: Path, count: int) -> tuple[Terminal, list[psutil.Process]]:
    term = Terminal("--data-dir", str(data_dir), "--count", str(count), "--rate", "0")
    terminals.append(term)
    term.wait_for(ACCOUNTED.replace(r"(\d+)", str(count)), START_TIMEOUT_S + SETTLE_TIMEOUT_S)
    return term, term.descendants()


def stop_with_ctrl_c(term: Terminal) -> dict[str, int]:
    term.ctrl_c()
    assert term.wait_exit() == 0, term.text[-4000:]
    text = term.text
    for step in ("stopped the generator", "stopping the bridge", "the queues are drained", "stopping the workers",
                 "stopped the servers"):
        assert step in text, text[-3000:]
    assert text.index("stopping the bridge") < text.index("stopping the workers") < text.index("stopped the servers")
    return summary_counts(text)


def export_env(text: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of the connection block (none of our values needs unquoting)."""
    return dict(re.findall(r"^\s+export (\w+)=(\S+)$", text, re.MULTILINE))


def test_ctrl_c_stops_everything_and_a_restart_carries_the_counts_on(tmp_path: Path,
                                                                    terminals: list[Terminal]) -> None:
    data_dir = tmp_path / "dev"
    first, pids = run_until_accounted(terminals, data_dir, 500)
    assert len(pids) >= 8, "four servers, the bridge and four pools"
    assert "http://127.0.0.1:" in first.text and "/readyz" in first.text and "psql" in first.text

    # The export lines point `etl status` at this stack, metrics pages included.
    env = {**os.environ, **export_env(first.text)}
    seen = subprocess.run([ETL, "status", "--once", "--json", "--interval", "0.1"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert seen.returncode == 0, seen.stderr
    stored = expected(500, 500)["stored"]
    assert f'"stored": {stored}' in seen.stdout and '"metrics_unreachable": []' in seen.stdout, seen.stdout

    # One stack per data directory.
    second_stack = subprocess.run([ETL, "dev", "--data-dir", str(data_dir), "--once"], capture_output=True,
                                  text=True, timeout=30)
    assert second_stack.returncode == 1 and "another etl dev is running" in second_stack.stdout

    before = stop_with_ctrl_c(first)
    assert before == expected(500, 500)
    assert leftovers(pids, data_dir) == []
    # The graph's AOF was rewritten as a snapshot on the way out, so the next start need not replay every write.
    tails = list((data_dir / "falkordb" / "appendonlydir").glob("*.incr.aof"))
    assert tails and all(tail.stat().st_size < 4096 for tail in tails)

    again, pids = run_until_accounted(terminals, data_dir, 300)
    after = stop_with_ctrl_c(again)
    assert after == {key: n + expected(300, 300)[key] for key, n in before.items()}
    assert leftovers(pids, data_dir) == []


def test_a_second_ctrl_c_hurries_the_shutdown_and_the_next_start_finishes_the_work(
        tmp_path: Path, terminals: list[Terminal]) -> None:
    data_dir = tmp_path / "dev"
    term = Terminal("--data-dir", str(data_dir), "--count", "5000", "--rate", "0", "--drain-timeout", "0")
    terminals.append(term)
    term.wait_for(r"received +[1-9]\d* ", START_TIMEOUT_S)  # events are flowing
    pids = term.descendants()
    term.ctrl_c()
    sent = int(term.wait_for(r"stopped the generator: (\d+) events published", EXIT_TIMEOUT_S).group(1))
    term.ctrl_c()
    term.ctrl_c()
    assert term.wait_exit() == 0, term.text[-4000:]
    assert "stopping faster" in term.text and "summary (" in term.text
    assert leftovers(pids, data_dir) == []

    # Nothing was lost: what waited in Redis and JetStream is processed by the next start.
    done = subprocess.run([ETL, "dev", "--data-dir", str(data_dir), "--once", "--count", "0"], capture_output=True,
                          text=True, timeout=START_TIMEOUT_S + SETTLE_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_counts(done.stdout) == expected(sent, 5000)
    assert leftovers([], data_dir) == []


def test_once_exits_when_the_events_are_accounted_for_on_the_ports_given(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    nats, bridge = free_port(), free_port()
    done = subprocess.run([ETL, "dev", "--data-dir", str(data_dir), "--once", "--count", "200",
                           "--nats-port", str(nats), "--bridge-health-port", str(bridge)],
                          capture_output=True, text=True, timeout=START_TIMEOUT_S + SETTLE_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"nats://127.0.0.1:{nats}" in done.stdout
    assert f"http://127.0.0.1:{bridge}/healthz" in done.stdout
    assert "all 200 generated events accounted for" in done.stdout
    assert summary_counts(done.stdout) == expected(200, 200)
    assert leftovers([], data_dir) == []


async def create_streams(settings: Settings) -> None:
    """The raw and enriched streams, as the bridge and the publish pool create them."""
    nc = await conn.connect(settings, "test-streams")
    try:
        js = nc.jetstream()
        await ensure_raw_stream(js, settings)
        await conn.ensure_stream(js, settings.nats_enriched_stream, [settings.nats_subject_enriched],
                                 kept=enriched_stream_limits(settings))
    finally:
        await conn.close(nc)


def test_the_local_nats_has_room_for_the_streams_default_limits_whatever_the_disk(tmp_path: Path) -> None:
    """Each stream reserves its max_bytes from JetStream's storage, which by default is 75% of the disk's free space:
    on a fuller disk than this one the bridge would stop. The local default's NATS declares its storage instead."""
    nats = Servers.create(tmp_path / "dev", PortFlags()).nats.start()
    try:
        settings = Settings.from_env({"NATS_URL": f"nats://127.0.0.1:{nats.port}"})  # the default limits
        asyncio.run(create_streams(settings))
        url = f"http://127.0.0.1:{nats.monitor_port}/jsz"  # type: ignore[attr-defined]
        with urllib.request.urlopen(url, timeout=5) as reply:
            jsz = json.load(reply)
    finally:
        nats.stop()
    assert jsz["config"]["max_storage"] == DEV_NATS_MAX_STORE_BYTES
    assert jsz["reserved_storage"] == settings.nats_stream_max_bytes + settings.nats_enriched_stream_max_bytes > 0


def test_a_port_in_use_is_named_by_its_flag(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([ETL, "dev", "--data-dir", str(tmp_path / "dev"), "--once", "--redis-port", str(port)],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"port {port} (--redis-port) is in use" in done.stdout


def test_after_a_kill_9_nothing_is_left_running_and_the_next_start_loses_nothing(
        tmp_path: Path, terminals: list[Terminal]) -> None:
    data_dir = tmp_path / "dev"
    term = Terminal("--data-dir", str(data_dir), "--count", "3000", "--rate", "0")
    terminals.append(term)
    term.wait_for(r"generated 3000/3000 \(\d+ malformed, \d+ duplicates\), done", START_TIMEOUT_S + SETTLE_TIMEOUT_S)
    pids = term.descendants()
    assert len(pids) >= 8, "four servers, the bridge and four pools"
    os.kill(term.proc.pid, signal.SIGKILL)  # no chance to stop anything itself
    term.proc.wait()

    # The kernel tells each child its parent died: servers are killed, the bridge and pools stop as on SIGTERM.
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while leftovers(pids, data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(pids, data_dir) == []

    done = subprocess.run([ETL, "dev", "--data-dir", str(data_dir), "--once", "--count", "0"], capture_output=True,
                          text=True, timeout=START_TIMEOUT_S + SETTLE_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_counts(done.stdout) == expected(3000, 3000)


def neo4j_built_or_skip() -> None:
    """Build the local Neo4j now (cached after the first time), so a run is not timed with Maven's downloads.
    Without Java or Maven the test skips, saying what to install; on CI (``CI=true``) it fails, as in
    ``tests.graphs``."""
    graphs.require_neo4j(neo4jserver.build)


@contextlib.contextmanager
def neo4j_again(data_dir: Path, env: dict[str, str]) -> Iterator[None]:
    """Neo4j started again on a stopped stack's data, at the address and with the password the stack printed."""
    server = neo4jserver.neo4j_server(data_dir / "neo4j", urlsplit(env["NEO4J_URI"]).port,
                                   password=env["NEO4J_PASSWORD"]).start()
    try:
        yield
    finally:
        server.stop()


def graph_query_command(text: str) -> list[str]:
    """The command of the block's "graph query" line."""
    line = next(line for line in text.splitlines() if line.strip().startswith("graph query"))
    return shlex.split(line.split(None, 2)[2])


@pytest.mark.timeout(NEO4J_TEST_TIMEOUT_S)
def test_once_on_neo4j_accounts_for_every_event_and_leaves_them_in_neo4j(tmp_path: Path) -> None:
    neo4j_built_or_skip()
    data_dir = tmp_path / "dev"
    # The simple shape, whose ids name their position; the producers' shape is the other tests'.
    done = subprocess.run([ETL, "dev", "--data-dir", str(data_dir), "--graph", "neo4j", "--once", "--count", "200",
                           "--shape", "simple"],
                          capture_output=True, text=True, timeout=NEO4J_RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 200 generated events accounted for" in done.stdout
    assert summary_counts(done.stdout) == {"stored": 199, "merged": 199, "published": 199, "dead": 1,
                                           "dead_enrich": 1}
    assert leftovers([], data_dir) == []  # the JVM too
    assert not (data_dir / "falkordb").exists()
    env = export_env(done.stdout)
    assert urlsplit(env["NEO4J_URI"]).scheme == "bolt"

    # Read back through Neo4j's own driver, not the sink: every valid event (ids event-<start second>-<seq>, the
    # 200th malformed), each tied to its host. Then the query the block printed, as a user would paste it.
    with neo4j_again(data_dir, env):
        probe = graphs.Neo4jProbe(Settings.from_env(env))
        try:
            ids = [row[0] for row in probe.rows("MATCH (e:Event) RETURN e.id")]
            hostless = probe.rows("MATCH (e:Event) WHERE NOT EXISTS { (:Host)-[:GENERATED]->(e) } RETURN count(e)")
        finally:
            probe.close()
        printed = subprocess.run(graph_query_command(done.stdout), capture_output=True, text=True, timeout=60)
    starts = {event_id.rsplit("-", 1)[0] for event_id in ids}
    assert len(starts) == 1 and sorted(int(i.rsplit("-", 1)[1]) for i in ids) == list(range(199)), ids
    assert hostless == [[0]]
    assert (printed.returncode, printed.stdout) == (0, "199\n"), printed.stderr


def test_neo4j_without_java_exits_2_with_one_line_saying_what_to_install(tmp_path: Path) -> None:
    no_java = tmp_path / "jdk"  # JAVA_HOME without bin/java
    no_java.mkdir()
    data_dir = tmp_path / "dev"
    done = subprocess.run([ETL, "dev", "--data-dir", str(data_dir), "--graph", "neo4j", "--once"],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "JAVA_HOME": str(no_java)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "install Java" in done.stderr, done.stderr
    assert not data_dir.exists(), "nothing started"


def test_the_sample_lookup_files_show_matches_in_status_and_in_the_summary(tmp_path: Path,
                                                                          terminals: list[Terminal]) -> None:
    """Issue 19's "done when": with a feed, an inventory and GeoIP files configured, bin/dev shows matches in
    ``etl status`` and the report."""
    data_dir = tmp_path / "dev"
    term, _ = run_until_accounted(terminals, data_dir, 2000)
    assert f"wrote 7 sample lookup files under {data_dir / 'lookups'}" in term.text
    env = {**os.environ, **export_env(term.text)}
    assert env["INTEL_PATHS"] == str(data_dir / "lookups" / "intel")
    seen = subprocess.run([ETL, "status", "--once", "--json", "--interval", "0.1"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert seen.returncode == 0, seen.stderr
    lookups = json.loads(seen.stdout)["lookups"]
    assert set(lookups["tables"]) == {"intel", "assets", "geoip_city", "geoip_asn"}, lookups
    for name, table in lookups["tables"].items():
        assert table["entries"] > 0 and table["reload_failures"] == 0 and table["skipped"] == 0, (name, table)
        assert time.time() - table["loaded_from"] < 3600, (name, table)
    by_source = {source: sum(kinds.values()) for source, kinds in lookups["matches"].items()}
    assert set(by_source) == {"blocklist.txt", "partner-isac", "sandbox", "taxii-bundle.json"}, lookups["matches"]
    assert {kind for kinds in lookups["matches"].values() for kind in kinds} == {"ip", "cidr", "domain", "sha256"}
    total = sum(by_source.values())
    assert 0 < total < 2000 / 5, "a few of the events match, most do not"

    # Nothing moves any more: the summary's matches, read before the workers stop, are the same.
    stop_with_ctrl_c(term)
    listed = ", ".join(f"{source} {n}" for source, n in sorted(by_source.items()))
    assert f"indicator matches         {total} this run ({listed})" in term.text, term.text[-2000:]

"""``etl status`` against the real pipeline (bridge and worker processes, real servers): its ``--once --json``
form for scripts, and its refreshing view in a pseudo-terminal, stopped with Ctrl-C."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from etl.broker import redis_client
from etl.config import Settings
from etl.dev.generator import generate
from etl.dev.servers import free_port
from etl.dev.stack import migrate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.ops.status import CLEAR_SCREEN
from etl.pipeline.dlq import DeadLetterStore
from etl.stages import GRAPH, QUEUES, SINK_NAMES
from tests.integration.accounting import publish_all
from tests.waiting import wait_for

VALID = 300
MALFORMED = [b"not json %d" % i for i in range(3)] + [
    b'{"id": "null-type-%d", "type": null, "source": "s", "timestamp": 1}' % i for i in range(2)]
RECEIVED = VALID + len(MALFORMED)
DLQ_MAX_ENTRIES = 2
STATUS = [sys.executable, "-m", "etl.cli", "status"]
CTRL_C = b"\x03"
EXIT_PROMPTLY_S = 5.0
TERMINAL_ROWS, TERMINAL_COLUMNS = 40, 120


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    # A dead-letter queue too small for the malformed events: status counts them all, kept or not.
    return make_settings(MAX_BATCH_SIZE=50, BATCH_LINGER_MS=20, DLQ_MAX_ENTRIES=DLQ_MAX_ENTRIES)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """The real bridge and pools, with every event published and accounted for before the test runs."""
    migrate(settings)
    running = Pipeline(settings.to_env(), tmp_path / "logs").start()

    def settled() -> bool:
        counts = report.collect(settings)
        return ((counts.totals["stored"], counts.totals["merged"], counts.totals["published"]) == (VALID, VALID, VALID)
                and counts.dead_lettered == {"enrich": len(MALFORMED)} and not any(counts.queued.values()))

    try:
        asyncio.run(publish_all(settings, list(generate(VALID, hosts=5, seed=31)) + MALFORMED))
        wait_for(settled, timeout_s=90, describe=lambda: f"{report.collect(settings)} alive={running.alive()}")
        yield running
    finally:
        codes = running.stop()  # also when setting up failed: no process may outlive its test
    assert all(code == 0 for code in codes.values()), {n: running.log_tail(n) for n in codes}


def status_env(settings: Settings, pipeline: Pipeline) -> dict[str, str]:
    """The settings' environment, with every process's metrics page in STATUS_METRICS_URLS."""
    urls = ",".join(f"http://127.0.0.1:{port}/metrics" for port in pipeline.ports.values())
    return {**os.environ, **settings.to_env(), "STATUS_METRICS_URLS": urls}


def run_once(env: dict[str, str], *extra: str) -> dict[str, object]:
    done = subprocess.run([*STATUS, "--once", "--json", "--interval", "0.3", *extra], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_once_json_reports_totals_lag_dead_letters_and_queues(settings: Settings, pipeline: Pipeline) -> None:
    status = run_once(status_env(settings, pipeline))

    assert status["errors"] == {} and status["metrics_unreachable"] == []
    assert status["totals"] == {"received": RECEIVED, "published": VALID, "stored": VALID, "merged": VALID,
                                "dead_lettered": len(MALFORMED)}
    assert (status["delivered"], status["lag"], status["ack_pending"]) == (RECEIVED, 0, 0)
    assert status["dead_letters"] == {"enrich": len(MALFORMED)}
    with redis_client(settings) as client:
        kept = DeadLetterStore.from_settings(client, settings).count()
    assert kept < len(MALFORMED) and status["dead_letters_not_kept"] == {"enrich": len(MALFORMED) - kept}
    assert status["queues"] == {queue: 0 for queue in QUEUES}
    assert status["rates"] == {stage: 0.0 for stage in status["totals"]}, "an idle pipeline: nothing moves"
    assert status["breakers"] == {sink: "closed" for sink in SINK_NAMES}
    assert (status["bridge_paused"], status["paused_estimate"]) == (False, False)


def test_once_json_shows_metrics_as_unknown_when_no_page_answers(settings: Settings, pipeline: Pipeline) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/metrics"
    status = run_once({**os.environ, **settings.to_env()}, "--metrics-url", nobody)

    assert status["errors"] == {} and status["metrics_unreachable"] == [nobody]
    assert status["breakers"] == {sink: None for sink in SINK_NAMES} and status["bridge_paused"] is None
    assert status["paused_estimate"] is False, "still estimated from the queue depths"
    assert status["totals"]["received"] == RECEIVED  # type: ignore[index]


def open_terminal() -> tuple[int, int]:
    """A pseudo-terminal (master, slave) of a fixed size, so the table never wraps."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0))
    return master, slave


def take_terminal() -> None:
    """In the child, after ``setsid``: make stdin (the pty) the controlling terminal, so Ctrl-C sends SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def read_until(master: int, done: Callable[[str], bool], timeout_s: float) -> str:
    """What the terminal showed (CR LF as LF) once ``done`` accepts it, or at the deadline."""
    screen = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done(screen.decode(errors="replace").replace("\r\n", "\n")):
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                screen += os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    return screen.decode(errors="replace").replace("\r\n", "\n")


def test_refreshing_view_in_a_terminal_exits_0_on_ctrl_c(settings: Settings, pipeline: Pipeline) -> None:
    master, slave = open_terminal()
    try:
        proc = subprocess.Popen([*STATUS, "--interval", "0.5"], stdin=slave, stdout=slave, stderr=slave,
                                env=status_env(settings, pipeline), start_new_session=True,
                                preexec_fn=take_terminal)
    finally:
        os.close(slave)
    try:
        # Three clears: the first two frames are complete on screen.
        screen = read_until(master, lambda s: s.count(CLEAR_SCREEN) >= 3, timeout_s=30)
        frames = screen.split(CLEAR_SCREEN)[1:]
        assert len(frames) >= 3, f"fewer than 2 refreshes in 30 s:\n{screen}"
        second = frames[1]
        for stage, total in (("received", RECEIVED), ("published", VALID), ("stored", VALID), ("merged", VALID),
                             ("dead-lettered", len(MALFORMED))):
            assert re.search(rf"^{stage} +{total} +0\.0 ", second, re.MULTILINE), second
        assert "JetStream lag   0 waiting, 0 awaiting ack" in second
        assert "breakers        publish closed  timescale closed  graph closed" in second
        assert "bridge paused   no (metrics)  no (estimated from queue depth)" in second
        assert "not kept: the DLQ was full" in second

        os.write(master, CTRL_C)
        started = time.monotonic()
        read_until(master, lambda _: proc.poll() is not None, timeout_s=EXIT_PROMPTLY_S)
        assert proc.wait(timeout=1) == 0, "Ctrl-C is the normal way out"
        assert time.monotonic() - started < EXIT_PROMPTLY_S
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)


def test_looking_at_a_graph_writes_nothing_to_it(settings: Settings, falkordb_server: Any) -> None:
    from falkordb import FalkorDB

    assert GRAPH.count(settings) == 0  # nothing there yet
    db = FalkorDB(host="127.0.0.1", port=falkordb_server.port)
    assert settings.graph_name not in db.list_graphs()  # no graph, no constraint or index was created by looking

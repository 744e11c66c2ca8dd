"""Idle, slow and numerous clients against the real bridge's and pool's HTTP endpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from etl.config import Settings
from etl.dev.supervisor import Pipeline
from etl.runtime.httpserve import CLIENT_DEADLINE_S, MAX_CONNECTIONS
from tests.waiting import wait_for

ANSWER_WITHIN_S = 1.0
PARTIAL_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def timed_get(port: int, path: str) -> tuple[int, float]:
    """The status of ``GET path`` and the seconds it took; fails past ``ANSWER_WITHIN_S``."""
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=ANSWER_WITHIN_S) as response:
        response.read()
        return int(response.status), time.monotonic() - started


def answers(port: int, path: str) -> bool:
    try:
        return timed_get(port, path)[0] == 200
    except OSError:
        return False


@contextmanager
def clients(stack: ExitStack, port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    socks = []
    for i in range(count):
        try:
            socks.append(stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5)))
        except TimeoutError:
            raise AssertionError(f"port {port} accepted no connection #{i + 1}: its server is stuck") from None
        if first_bytes:
            socks[-1].sendall(first_bytes)
    yield socks


def closed_by_server(sock: socket.socket, trickle: bool = False) -> bool:
    """True once the server has closed ``sock``; with ``trickle``, first send it one more byte of a header."""
    try:
        if trickle:
            sock.sendall(b"X")
        sock.settimeout(0.05)
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset or broken pipe: closed too
        return True


def start(start_pipeline: Callable[..., Pipeline], settings: Settings) -> tuple[int, int]:
    """The bridge's and the enrich pool's ports, once both answer."""
    pipeline = start_pipeline(settings, pools=("enrich",))
    bridge, pool = pipeline.ports["bridge-0"], pipeline.ports["worker-enrich"]
    wait_for(lambda: answers(bridge, "/healthz") and answers(pool, "/metrics"), timeout_s=30,
             describe=lambda: pipeline.log_tail("worker-enrich") + pipeline.log_tail("bridge-0"))
    return bridge, pool


def test_idle_and_slow_clients_block_no_endpoint(make_settings: Callable[..., Settings],
                                                 start_pipeline: Callable[..., Any]) -> None:
    settings = make_settings()
    bridge, pool = start(start_pipeline, settings)
    with ExitStack() as stack:
        held = {}
        for port in (bridge, pool):
            idle = stack.enter_context(clients(stack, port, 10))
            slow = stack.enter_context(clients(stack, port, 1, PARTIAL_REQUEST))
            held[port] = (idle, slow[0])

        for port, path in ((bridge, "/healthz"), (bridge, "/metrics"), (pool, "/metrics")):
            status, took_s = timed_get(port, path)
            assert status == 200 and took_s < ANSWER_WITHIN_S, (port, path, took_s)
        health = subprocess.run([sys.executable, "-m", "etl.cli", "health", "--pool", "enrich"], capture_output=True,
                                text=True, env={**os.environ, **settings.to_env(), "METRICS_PORT": str(pool)})
        assert (health.returncode, health.stdout) == (0, "enrich: healthy\n"), health.stderr

        # Then each server drops them: the idle ones, and a slow loris however steadily it trickles its header.
        for idle, slow in held.values():
            wait_for(lambda s=slow: closed_by_server(s, trickle=True), timeout_s=CLIENT_DEADLINE_S + 3)
            wait_for(lambda i=idle: all(closed_by_server(s) for s in i), timeout_s=3)


def test_connections_past_the_bound_are_closed_at_once(make_settings: Callable[..., Settings],
                                                       start_pipeline: Callable[..., Any]) -> None:
    bridge, pool = start(start_pipeline, make_settings())
    for port in (bridge, pool):
        with ExitStack() as stack:
            stack.enter_context(clients(stack, port, MAX_CONNECTIONS))
            extra = stack.enter_context(clients(stack, port, 1))[0]
            wait_for(lambda e=extra: closed_by_server(e), timeout_s=CLIENT_DEADLINE_S - 2)
        # Served again once they are gone.
        wait_for(lambda p=port: answers(p, "/metrics"), timeout_s=5)

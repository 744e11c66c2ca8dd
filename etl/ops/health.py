"""The HTTP endpoints of a process: ``/healthz`` (alive), ``/readyz`` (can do its work) and ``/metrics``.

A small threaded stdlib server, so probes and scrapes never wait on the pipeline's own loop, and bounded
(``etl.runtime.httpserve``), so idle or slow clients cannot hold it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from etl.runtime.httpserve import BoundedHandler, BoundedHTTPServer

log = logging.getLogger(__name__)

# Returns None when ready, else the reason it is not.
Readiness = Callable[[], "str | None"]


def _handler(readiness: Readiness) -> type[BoundedHandler]:
    class Handler(BoundedHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/healthz":
                self.reply(200, b"ok\n")
            elif self.path == "/readyz":
                reason = _safe(readiness)
                self.reply(200 if reason is None else 503,
                           b"ready\n" if reason is None else f"not ready: {reason}\n".encode())
            elif self.path == "/metrics":
                self.reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            else:
                self.reply(404, b"not found\n")

    return Handler


def _safe(readiness: Readiness) -> str | None:
    try:
        return readiness()
    except Exception as e:  # noqa: BLE001 - a failing check means not ready, with its reason
        return f"{type(e).__name__}: {e}"


class HealthServer:
    """Serves the endpoints on ``host:port`` (port 0 picks a free one; see ``port``) from a daemon thread."""

    def __init__(self, host: str, port: int, readiness: Readiness) -> None:
        self._server = BoundedHTTPServer((host, port), _handler(readiness))
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health and metrics on port %d", self.port, extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


PROBE_TIMEOUT_S = 3.0


def _http_get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310 - our own endpoint
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")


def probe_process(pool: str, *, health_port: int, metrics_port: int, redis_ping: Callable[[], object]) -> str | None:
    """Why the local process of ``pool`` (``bridge`` or a worker pool) is unhealthy, or ``None``.

    The bridge is asked for ``/readyz``. A worker pool is healthy when its Dramatiq main process serves metrics
    and Redis, where its work waits, answers. Sink outages do not make a pool unhealthy: its circuit breaker
    handles them, and restarting the pool would not help.
    """
    try:
        if pool == "bridge":
            status, body = _http_get(f"http://127.0.0.1:{health_port}/readyz")
            return None if status == 200 else body.strip() or f"HTTP {status}"
        status, _ = _http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        if status != 200:
            return f"metrics endpoint answered HTTP {status}"
        redis_ping()
        return None
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        return f"{type(e).__name__}: {e}"

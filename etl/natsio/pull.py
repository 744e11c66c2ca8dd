"""Batches from a durable JetStream pull consumer: one inbox subscription, one pull request per fetch.

nats-py's ``fetch`` waits for every message with a timer task of its own (``next_msg``): most of the bridge's CPU
went there. Here a subscription callback appends each delivered message to a buffer and wakes the fetcher when
its request is answered in full or ended, so a message costs a list append.

Each request has its own reply subject (``<inbox>.<n>``), so the server's status messages, which go to it, are
told apart (a delivered message keeps its own subject: a fetch is complete once enough messages are ready):

- 404 No Messages, 408 Request Timeout, 409 (e.g. Leadership Change, Exceeded MaxWaiting): that request ended;
  the messages it delivered are the batch;
- 409 Consumer Deleted, and 503 (no consumer, or no JetStream, answered the request): ``ConsumerGone``;
- 100 (heartbeats, flow control): never asked for, ignored.

A message delivered for a request that already ended on this side (it timed out here first) is kept for the next
fetch: it is delivered and counts against ``max_ack_pending`` whatever we do with it. On ``close`` whatever was
delivered and not fetched is nak'ed, so it goes to another bridge at once rather than after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from etl.natsio.conn import CONTROL_STATUS, DESCRIPTION_HEADER, NO_RESPONDERS_STATUS, status_of

CONSUMER_DELETED = "consumer deleted"
# The server's request expires this much before our own wait does, so its 408 normally ends the request.
EXPIRY_MARGIN_S = 0.001
# nats-py rejects a pull request shorter than this.
MIN_EXPIRES_NS = 100_000
# On close, how long past its expiry a request may still bring messages, and how often to look.
CLOSE_SETTLE_S = 0.2
SETTLE_POLL_S = 0.005


class ConsumerGone(Exception):
    """The consumer (or its stream, or JetStream) did not answer the pull request: bind it again."""


class PullFetcher:
    """Fetches batches of one durable consumer for one bridge; use from the connection's event loop only."""

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._prefix = ""
        self._numbers = itertools.count()
        self._sub: Subscription | None = None
        self._ready: list[Msg] = []
        # Requests the server may still answer (token -> when it expires, monotonic), until a status ends them.
        # A request answered in full gets no status: it stays here until it has expired.
        self._pending: dict[str, float] = {}
        self._open: str | None = None  # the token of the request being waited for
        self._wanted = 0  # the batch it was made for: enough once this many messages are ready
        self._ended = asyncio.Event()
        self._gone: str | None = None

    async def start(self) -> None:
        """Subscribe to the replies. Raises what ``Client.subscribe`` raises."""
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_msg)

    async def fetch(self, batch: int, timeout_s: float) -> list[Msg]:
        """Up to ``batch`` messages: those already delivered, else what one pull request brings within
        ``timeout_s``; ``[]`` when none came. Raises ``ConsumerGone``, or what ``Client.publish`` raises."""
        if len(self._ready) < batch:
            await self._request(batch, timeout_s)
        if self._gone is not None:
            reason, self._gone = self._gone, None
            raise ConsumerGone(reason)
        taken, self._ready = self._ready[:batch], self._ready[batch:]
        return taken

    async def _request(self, batch: int, timeout_s: float) -> None:
        token = str(next(self._numbers))
        expires_s = max(MIN_EXPIRES_NS / 1e9, timeout_s - EXPIRY_MARGIN_S)
        now = time.monotonic()
        self._pending = {t: expiry for t, expiry in self._pending.items() if expiry + CLOSE_SETTLE_S > now}
        self._pending[token] = now + expires_s
        self._open, self._wanted = token, batch
        self._ended.clear()
        try:
            await self._nc.publish(self._next_subject,
                                   orjson.dumps({"batch": batch - len(self._ready),
                                                 "expires": int(expires_s * 1e9)}),
                                   reply=self._prefix + token)
            # Not wait_for: on Python 3.11 it can swallow a cancellation that comes as the wait ends.
            async with asyncio.timeout(timeout_s):
                await self._ended.wait()
        except TimeoutError:
            pass
        finally:
            self._open = None

    async def _on_msg(self, msg: Msg) -> None:
        status = status_of(msg)
        if status == CONTROL_STATUS:
            return
        if status is None:
            # A delivered message keeps its own subject, so which request it answers is not known; whichever
            # it is, the batch being waited for is complete once enough messages are ready.
            self._ready.append(msg)
            if self._open is not None and len(self._ready) >= self._wanted:
                self._ended.set()
            return
        token = msg.subject[len(self._prefix):]  # a status goes to the request's reply subject
        if self._pending.pop(token, None) is None:
            return
        description = (msg.headers or {}).get(DESCRIPTION_HEADER, "")
        if status == NO_RESPONDERS_STATUS or CONSUMER_DELETED in description.lower():
            self._gone = f"pull request answered {status} {description}".strip()
        if token == self._open:
            self._ended.set()

    async def close(self, *, settle_s: float = CLOSE_SETTLE_S) -> None:
        """Give back what was delivered and not fetched, then unsubscribe.

        Waits until the requests the server may still answer have expired (plus ``settle_s``) or ended, then
        naks every message not fetched, so another bridge gets them at once rather than after ``ack_wait``.
        """
        sub, self._sub = self._sub, None
        if sub is None:
            return
        while self._pending and time.monotonic() < max(self._pending.values()) + settle_s:
            await asyncio.sleep(SETTLE_POLL_S)
        ready, self._ready = self._ready, []
        for msg in ready:
            await msg.nak()
        await sub.unsubscribe()
        await self._nc.flush()

"""JetStream publish acks counted per batch, on one reply subscription per connection.

Every message of a batch is published with the batch's own reply subject (``<inbox>.<n>``). The stream answers
each one with a PubAck (``{"stream":"S","seq":7}``, plus ``"duplicate":true`` for a replay it dropped), with an
error (``{"error":{"code":...,"err_code":...,"description":...}}``), or, when no stream captures the subject,
with an empty message carrying status 503. ``BatchAcks`` counts a batch's answers (pure); ``AckInbox`` routes
every answer to the counter of its batch.

This replaces nats-py's ``publish_async``, which makes a future, a done-callback, a token and a dataclass per
message and decodes every ack with the standard ``json``: that was most of the publish pool's CPU. The answers
reach ``AckInbox`` straight from nats-py's parser (``internals.route_replies``), without a ``Msg`` each.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from etl.natsio.conn import NO_RESPONDERS_STATUS, status_of
from etl.natsio.internals import route_replies


@dataclass
class BatchAcks:
    """The answers to one batch of ``expected`` publishes. Pure."""

    expected: int
    stored: int = 0
    duplicates: int = 0
    failures: int = 0
    error: BaseException | None = None  # the first failure

    @property
    def complete(self) -> bool:
        return self.stored + self.duplicates + self.failures >= self.expected

    def add(self, data: bytes, status: str | None = None) -> None:
        """Count one answer: its body and its ``Status`` header, if any."""
        if status == NO_RESPONDERS_STATUS:
            self._fail(nats.js.errors.NoStreamResponseError())
        elif b'"error"' in data:
            self._fail(_api_error(data))
        elif b'"duplicate"' in data and _is_duplicate(data):
            self.duplicates += 1
        else:
            self.stored += 1

    def _fail(self, error: BaseException) -> None:
        self.failures += 1
        if self.error is None:
            self.error = error


def _api_error(data: bytes) -> BaseException:
    """The ``APIError`` (subclass by code) an error answer describes."""
    try:
        nats.js.errors.APIError.from_error(orjson.loads(data)["error"])  # raises, never returns
    except nats.js.errors.APIError as e:
        return e
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return nats.js.errors.APIError(description=f"unreadable publish answer: {data[:200]!r}")


def _is_duplicate(data: bytes) -> bool:
    try:
        return orjson.loads(data).get("duplicate") is True
    except (orjson.JSONDecodeError, AttributeError):
        return False


class AckInbox:
    """One wildcard reply subscription on a connection; ``expect`` opens a batch, ``close_batch`` forgets it.

    Use from the connection's event loop only. Answers to a batch already forgotten (one that timed out) are
    dropped.
    """

    def __init__(self) -> None:
        self._prefix = ""
        self._prefix_size = 0
        self._numbers = itertools.count()
        self._batches: dict[bytes, tuple[BatchAcks, asyncio.Future[None]]] = {}
        self.routed = False  # answers come straight from the parser (see internals.route_replies)

    async def start(self, nc: Client) -> None:
        """Subscribe to the replies (nats-py subscribes again by itself after a reconnection)."""
        self._prefix = nc.new_inbox() + "."
        self._prefix_size = len(self._prefix.encode())
        sub = await nc.subscribe(self._prefix + "*", cb=self._on_reply)
        self.routed = route_replies(nc, sub, self._on_answer)

    def expect(self, count: int) -> tuple[str, BatchAcks, asyncio.Future[None]]:
        """A reply subject for a batch of ``count`` publishes, its counter, and a future done when complete."""
        token = str(next(self._numbers))
        acks, done = BatchAcks(count), asyncio.get_running_loop().create_future()
        if count == 0:
            done.set_result(None)
        self._batches[token.encode()] = (acks, done)
        return self._prefix + token, acks, done

    def close_batch(self, reply: str) -> None:
        self._batches.pop(reply[len(self._prefix):].encode(), None)

    def _on_answer(self, subject: bytes, data: bytes, status: str | None) -> None:
        entry = self._batches.get(subject[self._prefix_size:])
        if entry is None:
            return
        acks, done = entry
        acks.add(data, status)
        if acks.complete and not done.done():
            done.set_result(None)

    async def _on_reply(self, msg: Msg) -> None:
        """The subscription's callback, used only when ``route_replies`` could not route the answers."""
        self._on_answer(msg.subject.encode(), msg.data, status_of(msg))

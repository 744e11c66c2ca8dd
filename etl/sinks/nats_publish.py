"""The ``publish`` sink: enriched events to ``NATS_SUBJECT_ENRICHED``, from synchronous Dramatiq threads.

nats-py is asyncio-only, so the sink owns one event loop in a daemon thread and every call submits a coroutine
to it (``run_coroutine_threadsafe``) and waits at most the sink's budget (``Settings.sink_budget_s``) for the
result. All worker threads share the one connection.

With ``NATS_ENRICHED_STREAM`` set, events are JetStream publishes whose acks are awaited together for the
whole batch, and ``Nats-Msg-Id`` (the event id) lets the stream drop replays inside its duplicate window:
``write`` returns the number of events the stream newly stored. Without it, events are core publishes then one
flush per batch: at-most-once past the server, and every event counts as new.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import re
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StorageType

from etl.config import Settings
from etl.errors import SinkDataError, SinkUnavailable
from etl.natsio import conn, hpub, internals
from etl.natsio.js_acks import AckInbox
from etl.natsio.stream_limits import StreamLimits
from etl.pipeline.limits import PUBLISH_HEADER_OVERHEAD_BYTES
from etl.sinks.base import Event, inner_timeout_s

log = logging.getLogger(__name__)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
T = TypeVar("T")

# Replays of a batch within this window are recognised by the stream (Nats-Msg-Id) and not stored twice.
DEFAULT_DUPLICATE_WINDOW_S = 120.0

def enriched_stream_limits(settings: Settings) -> StreamLimits:
    """The enriched stream's limits: full, it drops its oldest events (discard ``old``), which readers had their
    time to take, rather than stop the pipeline."""
    return StreamLimits(settings.nats_enriched_stream_max_bytes, settings.nats_enriched_stream_max_age_s,
                        DiscardPolicy.OLD)


# A call's coroutine times out this much before the caller stops waiting for the loop thread to answer at all.
LOOP_GRACE_S = 1.0
LOOP_JOIN_TIMEOUT_S = 5.0
# JetStream's error code for a message larger than the stream's max_msg_size.
JS_ERR_MESSAGE_TOO_LARGE = 10054
# Every published event's headers, in the order encode gives their values; a JetStream publish adds the stream's
# name as Nats-Expected-Stream.
HEADER_NAMES = ("Nats-Msg-Id", "x-host-id", "x-event-type", "x-timestamp")
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"

# (JSON payload, header values in the order of the sink's header names)
Message = internals.Message


def header_value(value: object) -> str:
    """``value`` as a header value, as nats-py would send it: control characters (CR and LF would end the header)
    become spaces, so an event's own fields can never add headers of their own, and the ends are stripped."""
    return _CONTROL.sub(" ", str(value)).strip()


def header_ready(text: str) -> bool:
    """Whether ``header_value`` would leave every value in ``text`` as it is: no white space (which it strips at
    a value's ends) and no control character. A conservative check, two scans in C: a value with an inner space,
    or any other character that is not printable, merely takes the slow path."""
    return " " not in text and text.isprintable()


def encode(event: Event, extra: tuple[str, ...] = ()) -> Message:
    """An enriched event -> (JSON payload, values of ``HEADER_NAMES`` followed by ``extra``), the values ready for
    ``hpub.Headers`` (see ``header_value``). Raises ``SinkDataError`` if it cannot be serialised."""
    try:
        payload = orjson.dumps(event)
        metadata = event.get("metadata") or {}
        host_id = metadata.get("host_id")
        values = (str(event["id"]), "" if host_id is None else str(host_id), str(event.get("type", "")),
                  str(event["timestamp"]), *extra)
        if not header_ready("".join(values)):  # rare: only then value by value
            values = tuple(header_value(v) for v in values)
    except (TypeError, KeyError, AttributeError) as e:  # orjson.JSONEncodeError is a TypeError
        raise SinkDataError(f"event {event.get('id')!r} cannot be published: {e!r}") from e
    return payload, values


def publish_headers(stream: str | None) -> tuple[hpub.Headers, tuple[str, ...]]:
    """The headers every event is published with, and the values ``encode`` adds after its own (``extra``): to a
    stream, ``Nats-Expected-Stream`` too, so that no other stream capturing the subject stores our events."""
    if stream is None:
        return hpub.Headers(HEADER_NAMES), ()
    return hpub.Headers((*HEADER_NAMES, EXPECTED_STREAM_HEADER)), (stream,)


def wire_size(message: Message, headers: hpub.Headers) -> int:
    """Bytes the server counts against its max_payload: the payload plus the encoded headers."""
    payload, values = message
    return len(payload) + len(headers.block(values))


def call_timeouts_s(settings: Settings) -> tuple[float, float]:
    """(a call's coroutine time-out, the caller's wait for the loop thread's answer), in seconds: the wait is the
    sink's budget, and the coroutine gives up ``LOOP_GRACE_S`` earlier (at least half the budget)."""
    budget_s = settings.sink_budget_s
    return inner_timeout_s(budget_s, LOOP_GRACE_S), budget_s


class NatsPublisher:
    """Sink ``publish``. Thread-safe: any number of worker threads may call ``write`` at once."""


    def __init__(self, settings: Settings, *, duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S) -> None:
        self._settings = settings
        internals.apply_settings(settings)
        self._subject = settings.nats_subject_enriched
        self._stream = settings.nats_enriched_stream or None
        self._headers, self._extra = publish_headers(self._stream)
        self._duplicate_window_s = duplicate_window_s
        self._timeout_s, self._budget_s = call_timeouts_s(settings)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Client | None = None
        self._acks: AckInbox | None = None

    def open(self) -> None:
        """Connect, and create the enriched stream if configured and missing, within the sink's budget.
        Raises ``SinkUnavailable``."""
        with self._lock:
            if self._nc is not None:
                return
            self._start_loop()
            try:
                self._call(self._open())
            except BaseException:
                self._stop_loop()
                raise

    async def _open(self) -> None:
        try:
            nc = await conn.connect(self._settings, "etl-publisher")
            try:
                if self._stream is not None:
                    await conn.ensure_stream(
                        nc.jetstream(timeout=self._timeout_s), self._stream, [self._subject],
                        storage=StorageType.FILE, duplicate_window=self._duplicate_window_s,
                        num_replicas=self._settings.nats_stream_replicas, kept=enriched_stream_limits(self._settings))
                    self._acks = AckInbox()
                    with conn.unavailable_as(conn.NatsUnavailable, "cannot subscribe to publish acks"):
                        await self._acks.start(nc)
            except BaseException:
                await conn.close(nc)
                raise
        except conn.NatsUnavailable as e:
            raise SinkUnavailable(str(e)) from e
        self._nc = nc

    def write(self, events: Sequence[Event]) -> int:
        """Publish ``events``; returns how many were newly stored (JetStream) or sent (core NATS).

        Returns only once the stream acked every event (JetStream) or the server read them all (core).
        Raises ``SinkUnavailable`` when NATS is unreachable, not answering within the sink's budget
        (``Settings.sink_budget_s``), or has no stream for the subject; ``SinkDataError`` when an event cannot be
        serialised or is larger than the server accepts. On a raise, some events may have been published:
        replaying is safe.
        """
        if not events:
            return 0
        extra = self._extra
        return self._call(self._publish([encode(e, extra) for e in events]))

    async def _publish(self, messages: list[Message]) -> int:
        nc = self._connected()
        limit = nc.max_payload
        for message in messages:
            # Every header value but the stream's name is also in the payload, so the headers add at most the
            # payload's size and their overhead: an exact size is needed only for big payloads.
            if (2 * len(message[0]) + PUBLISH_HEADER_OVERHEAD_BYTES > limit
                    and (size := wire_size(message, self._headers)) > limit):
                raise SinkDataError(f"event {message[1][0]!r} is {size} bytes with headers, over the server's "
                                    f"max_payload of {limit}")
        with conn.unavailable_as(SinkUnavailable, f"cannot publish to {self._subject}"):
            try:
                if self._acks is None:
                    return await self._publish_core(nc, messages)
                return await self._publish_js(nc, self._acks, messages)
            except nats.errors.MaxPayloadError as e:
                raise SinkDataError(f"an event is over the server's max_payload of {limit} bytes") from e

    async def _publish_core(self, nc: Client, messages: list[Message]) -> int:
        await internals.publish_with_headers(nc, self._subject, "", self._headers, messages)
        await nc.flush(timeout=math.ceil(self._timeout_s))  # whole seconds; the call's own time-out comes first
        return len(messages)

    async def _publish_js(self, nc: Client, inbox: AckInbox, messages: list[Message]) -> int:
        """Publish the batch with one reply subject and wait for the stream's answer to every message."""
        reply, acks, done = inbox.expect(len(messages))
        try:
            await internals.publish_with_headers(nc, self._subject, reply, self._headers, messages)
            await done
        finally:
            inbox.close_batch(reply)
        if acks.error is not None:
            raise _translated(acks.error)
        return acks.stored

    def _connected(self) -> Client:
        nc = self._nc
        if nc is None or nc.is_closed:
            raise SinkUnavailable("the NATS publisher is not open")
        if not nc.is_connected:
            # Fail fast rather than buffer while reconnecting: the actor's retry will find the server back.
            raise SinkUnavailable("NATS is disconnected; reconnecting")
        return nc

    def check(self) -> None:
        """Raises ``SinkUnavailable`` unless the server answers a ping within the sink's budget."""
        self._call(self._check())

    async def _check(self) -> None:
        nc = self._connected()
        with conn.unavailable_as(SinkUnavailable, "NATS did not answer"):
            await nc.flush(timeout=math.ceil(self._timeout_s))

    def close(self) -> None:
        """Drain the connection and stop the loop thread. Safe to call twice."""
        with self._lock:
            if self._loop is None:
                return
            nc, self._nc = self._nc, None
            if nc is not None:
                try:
                    self._call(conn.close(nc))
                except SinkUnavailable as e:
                    log.warning("closing the NATS publisher timed out: %s", e)
            self._stop_loop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the sink's loop; return within the sink's budget. Raises ``SinkUnavailable`` when it
        takes longer (the coroutine is cancelled after ``self._timeout_s``) or the sink is not open."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise SinkUnavailable("the NATS publisher is not open")
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, self._timeout_s), loop)
        try:
            return future.result(self._budget_s)
        except (TimeoutError, concurrent.futures.TimeoutError) as e:
            future.cancel()
            raise SinkUnavailable(f"NATS did not answer within {self._timeout_s:g}s") from e

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="nats-publisher", daemon=True)
        self._thread.start()
        self._loop = loop

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(LOOP_JOIN_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()


def _translated(error: BaseException) -> BaseException:
    """The sink's error for a stream's refusal of a publish (or ``error`` itself, for ``unavailable_as``)."""
    if isinstance(error, nats.js.errors.APIError) and not isinstance(error, conn.UNAVAILABLE_ERRORS):
        if error.err_code == JS_ERR_MESSAGE_TOO_LARGE:
            return SinkDataError(f"the stream refused an event: {error.description}")
        return SinkUnavailable(f"the stream refused a publish: {conn.describe(error)}")
    return error


def count_published(settings: Settings) -> int:
    """Messages in the enriched stream (0 when no stream captures the enriched subject). Raises
    ``NatsUnavailable`` (and other driver errors) when NATS cannot be read."""
    if not settings.nats_enriched_stream:
        return 0

    async def count() -> int:
        nc = await conn.connect(settings, name="etl-report")
        try:
            info = await nc.jetstream().stream_info(settings.nats_enriched_stream)
            return int(info.state.messages)
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await conn.close(nc)

    return asyncio.run(count())

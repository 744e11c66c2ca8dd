"""The one seam for nats-py internals: every private hook of nats-py we use lives here, and nowhere else.

nats-py's public API spends most of a NATS-bound process's CPU on per-message work (a regex per subject, a future
per frame, a ``Msg`` and a callback task per reply), so the hot paths go around it:

- a batch of publishes is queued as one run of frames (``Client._send_command``, ``Client._flush_pending``);
- a batch of JetStream acks likewise, each message then marked acked (``Msg._ackd``);
- the replies of one subscription are handed over as they are parsed (``Client._process_msg``,
  ``Client._process_headers``, ``Subscription._id``).

At import this module checks that the installed nats-py is the version pinned in requirements.txt and that every
hook is there and behaves as used here (``check_hooks``). If not, or when the setting ``ETL_NATS_PUBLIC_API`` is
true (``apply_settings``) or ``use_public_api(True)`` was called, each operation uses nats-py's public API instead
(``Client.publish``, ``Msg.ack``, the subscription's callback), and the first one to do so logs one warning.
Both paths put the same messages on the wire.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from etl.config import Settings
from etl.natsio import hpub
from etl.natsio.conn import STATUS_HEADER

log = logging.getLogger(__name__)

# The hooks were read in this version's source; any other version gets the public API until they are re-read.
PINNED_NATS_PY_VERSION = "2.16.0"
PUBLIC_API_ENV = "ETL_NATS_PUBLIC_API"
CLIENT_COROUTINES = ("_send_command", "_flush_pending", "_process_msg", "_process_headers")
# What our replacement of _process_msg is called with, and calls the original with, positionally.
PROCESS_MSG_PARAMETERS = ("self", "sid", "subject", "reply", "data", "headers")
_PROBE_SID = 7

# (payload, header values in the order of the ``hpub.Headers`` names)
Message = tuple[bytes, tuple[str, ...]]
# What route_replies hands each message of its subscription: (subject, payload, status or None).
ReplyHandler = Callable[[bytes, bytes, "str | None"], None]


def installed_nats_py_version() -> str | None:
    """The installed nats-py's version, or ``None`` when its distribution metadata cannot be found."""
    try:
        return metadata.version("nats-py")
    except metadata.PackageNotFoundError:
        return None


def check_hooks(version: str | None, client_cls: Any, subscription_cls: Any, msg_cls: Any) -> str | None:
    """Why the private hooks cannot be used with this nats-py (its ``version`` and classes), or ``None`` when they
    can. Pure: it builds one ``subscription_cls`` and one ``msg_cls`` without a connection, and sends nothing."""
    if version != PINNED_NATS_PY_VERSION:
        return f"nats-py {version or '(version unknown)'} is not the pinned {PINNED_NATS_PY_VERSION}"
    return _client_problem(client_cls) or _subscription_problem(subscription_cls) or _msg_problem(msg_cls)


def _client_problem(client_cls: Any) -> str | None:
    for name in CLIENT_COROUTINES:
        if not inspect.iscoroutinefunction(getattr(client_cls, name, None)):
            return f"{client_cls.__name__}.{name} is not a coroutine function"
    parameters = tuple(inspect.signature(client_cls._process_msg).parameters)
    if parameters != PROCESS_MSG_PARAMETERS:
        return f"{client_cls.__name__}._process_msg takes {parameters}, not {PROCESS_MSG_PARAMETERS}"
    return None


def _subscription_problem(subscription_cls: Any) -> str | None:
    try:
        sub = subscription_cls(None, _PROBE_SID)
    except Exception as e:  # noqa: BLE001 - any failure means "not the class the hooks were read in"
        return f"{subscription_cls.__name__}(conn, id) cannot be built: {e!r}"
    if getattr(sub, "_id", None) != _PROBE_SID:
        return f"{subscription_cls.__name__} keeps its id elsewhere than in _id"
    return None


def _msg_problem(msg_cls: Any) -> str | None:
    try:
        msg = msg_cls(None)
        before = msg.is_acked
        msg._ackd = True
        after = msg.is_acked
    except Exception as e:  # noqa: BLE001 - as above
        return f"{msg_cls.__name__}._ackd cannot be used: {e!r}"
    if (before, after) != (False, True):
        return f"{msg_cls.__name__}.is_acked does not follow _ackd"
    return None


_HOOKS_PROBLEM = check_hooks(installed_nats_py_version(), Client, Subscription, Msg)
_public_forced = False
_warned = False


def apply_settings(settings: Settings) -> None:
    """Force the public API when the settings ask for it (``ETL_NATS_PUBLIC_API``); never turns it back off. Called
    by the processes that use the hooks (the bridge, the publisher) as they are built."""
    if settings.nats_public_api:
        use_public_api(True)


def use_public_api(on: bool) -> bool:
    """Force nats-py's public API (``on``), or go back to the private hooks if they checked out at import.
    Overrides ``ETL_NATS_PUBLIC_API``. Affects the operations called afterwards: a subscription already routed by
    ``route_replies`` stays routed. Returns the previous setting."""
    global _public_forced
    previous, _public_forced = _public_forced, on
    return previous


def fast_path() -> bool:
    """Whether operations use the private hooks now (they checked out, and the public API is not forced)."""
    return _HOOKS_PROBLEM is None and not _public_forced


def _fast() -> bool:
    """``fast_path()``; logs the one warning the first time the public API is used instead."""
    if fast_path():
        return True
    global _warned
    if not _warned:
        _warned = True
        reason = f"{PUBLIC_API_ENV} or use_public_api() asks for it" if _HOOKS_PROBLEM is None else _HOOKS_PROBLEM
        log.warning("nats-py's internals are not used, the public API is (slower): %s", reason)
    return False


async def _send(nc: Client, frames: bytes) -> None:
    """Queue protocol frames on ``nc``, as ``Client.publish`` queues one, and wake its flusher.
    Raises ``nats.errors.ConnectionClosedError`` on a closed connection."""
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    await nc._send_command(frames)
    await nc._flush_pending()


async def publish_with_headers(nc: Client, subject: str, reply: str, headers: hpub.Headers,
                               messages: Sequence[Message]) -> None:
    """Publish every message, in order, to ``subject`` with reply subject ``reply`` (``""`` for none) and
    ``headers`` filled with its values (ready as ``hpub.Headers.block`` wants them). Returns once they are queued
    for the flusher; ``nc.flush()`` proves the server read them. Raises what ``Client.publish`` raises (on the fast
    path only ``ConnectionClosedError``: the caller checks sizes against ``max_payload`` itself)."""
    if _fast():
        await _send(nc, hpub.frames(subject, reply, headers, messages))
        return
    for payload, values in messages:
        await nc.publish(subject, payload, reply=reply, headers=dict(zip(headers.names, values, strict=True)))


async def publish_plain(nc: Client, subject: str, payloads: Sequence[bytes]) -> None:
    """Publish every payload, in order, to ``subject`` with neither headers nor reply subject. Returns and raises
    like ``publish_with_headers``."""
    if _fast():
        subject_b = subject.encode()
        await _send(nc, b"".join(hpub.pub_frame(subject_b, p) for p in payloads))
        return
    for payload in payloads:
        await nc.publish(subject, payload)


async def ack_all(nc: Client, batch: Sequence[Msg]) -> None:
    """Ack every JetStream message of ``batch`` (received on ``nc``) as ``Msg.ack`` does, and mark it acked.
    Returns once the acks are queued for the flusher; ``nc.flush()`` proves the server read them. Raises
    ``NotJSMessageError`` or ``MsgAlreadyAckdError``, as ``Msg.ack`` does, before anything is sent; else what
    ``Client.publish`` raises."""
    for m in batch:
        if not m.reply:
            raise nats.errors.NotJSMessageError
        if m.is_acked:
            raise nats.errors.MsgAlreadyAckdError(m)
    if not _fast():
        for m in batch:
            await m.ack()
        return
    frames = b"".join(hpub.pub_frame(m.reply.encode(), b"") for m in batch)
    for m in batch:
        m._ackd = True
    await _send(nc, frames)


def route_replies(nc: Client, sub: Subscription, handler: ReplyHandler) -> bool:
    """Hand every message of ``sub`` to ``handler`` as it is parsed, instead of through a ``Msg``, the
    subscription's queue and its callback task. Returns ``False``, changing nothing, on the public API: the
    subscription's own callback then gets the messages. nats-py resubscribes with the same id after a
    reconnection, so the routing survives it. ``handler`` runs on the connection's event loop and must not raise.
    """
    if not _fast():
        return False
    original = nc._process_msg
    parse_headers = nc._process_headers
    sid = sub._id
    stats = nc.stats

    async def process_msg(msg_sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if msg_sid != sid:
            await original(msg_sid, subject, reply, data, headers)
            return
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        status = None
        if headers:  # only a status reply (no responders) carries headers here
            parsed = await parse_headers(headers)
            status = parsed.get(STATUS_HEADER) if parsed else None
        handler(subject, data, status)

    nc._process_msg = process_msg  # type: ignore[method-assign,assignment]
    return True

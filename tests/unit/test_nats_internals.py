"""The seam for nats-py internals: when it uses the private hooks, when it falls back to the public API, and that
both paths do the same thing. Pure: fake connections record what each path hands nats-py."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from etl.config import Settings
from etl.errors import ConfigError
from etl.natsio import hpub, internals
from tests.support.fake_nats import RecordingClient

ROOT = Path(__file__).resolve().parents[2]
NEWER = "2.99.0"


def jetstream_msgs(nc: RecordingClient, count: int) -> list[Msg]:
    return [Msg(nc, subject="events.raw", reply=f"$JS.ACK.S.C.1.{i}.{i}.0.0", data=b"x")  # type: ignore[arg-type]
            for i in range(count)]


# --- when the hooks are used ----------------------------------------------------------------------------------


def test_the_pin_in_the_seam_is_the_pin_in_requirements() -> None:
    pins = re.findall(r"^nats-py==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pins == [internals.PINNED_NATS_PY_VERSION], "re-read the hooks in the new nats-py, then move both pins"


def test_the_installed_nats_py_passes_the_check() -> None:
    assert internals.check_hooks(internals.installed_nats_py_version(), Client, Subscription, Msg) is None


@pytest.mark.parametrize("version", [NEWER, "2.15.9", None])
def test_any_other_version_falls_back(version: str | None) -> None:
    reason = internals.check_hooks(version, Client, Subscription, Msg)
    assert reason is not None and "pinned 2.16.0" in reason


class NoSendCommand(Client):
    _send_command = None  # type: ignore[assignment]


class SyncFlushPending(Client):
    def _flush_pending(self) -> None:  # type: ignore[override]
        pass


class WiderProcessMsg(Client):
    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes,  # type: ignore[override]
                           trace: bool = False) -> None:
        pass


class SidSubscription:
    def __init__(self, conn: Any, id: int = 0) -> None:
        self._sid = id


class NeedsMoreSubscription:
    def __init__(self, conn: Any, id: int, subject: str) -> None:
        self._id = id


class AckedElsewhere(Msg):
    @property
    def is_acked(self) -> bool:
        return False


@pytest.mark.parametrize(("client_cls", "subscription_cls", "msg_cls", "blamed"), [
    (NoSendCommand, Subscription, Msg, "_send_command"),
    (SyncFlushPending, Subscription, Msg, "_flush_pending"),
    (WiderProcessMsg, Subscription, Msg, "_process_msg"),
    (Client, SidSubscription, Msg, "_id"),
    (Client, NeedsMoreSubscription, Msg, "cannot be built"),
    (Client, Subscription, AckedElsewhere, "_ackd"),
])
def test_a_hook_missing_or_changed_falls_back(client_cls: type, subscription_cls: type, msg_cls: type,
                                               blamed: str) -> None:
    reason = internals.check_hooks(internals.PINNED_NATS_PY_VERSION, client_cls, subscription_cls, msg_cls)
    assert reason is not None and blamed in reason


@pytest.mark.parametrize(("value", "fast"), [("1", False), ("true", False), ("0", True), ("", True)])
def test_the_setting_forces_the_public_api(value: str, fast: bool) -> None:
    previous = internals.use_public_api(False)
    try:
        internals.apply_settings(Settings.from_env({internals.PUBLIC_API_ENV: value}))
        assert internals.fast_path() is fast
    finally:
        internals.use_public_api(previous)


def test_a_bad_setting_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="ETL_NATS_PUBLIC_API must be true or false"):
        Settings.from_env({internals.PUBLIC_API_ENV: "maybe"})


def test_falling_back_warns_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(internals, "_warned", False)
    previous = internals.use_public_api(True)
    try:
        assert not internals.fast_path()
        nc = RecordingClient()
        assert not internals.route_replies(nc, Subscription(nc, 3), lambda s, d, st: None)  # type: ignore[arg-type]
        assert not internals.route_replies(nc, Subscription(nc, 4), lambda s, d, st: None)  # type: ignore[arg-type]
    finally:
        internals.use_public_api(previous)
    warnings = [r for r in caplog.records if r.name == internals.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and internals.PUBLIC_API_ENV in warnings[0].getMessage()
    assert internals.fast_path() != previous


# --- both paths do the same -----------------------------------------------------------------------------------


def test_acks_go_to_each_reply_subject_and_mark_the_messages(nats_path: str) -> None:
    nc = RecordingClient()
    batch = jetstream_msgs(nc, 3)
    asyncio.run(internals.ack_all(nc, batch))  # type: ignore[arg-type]
    assert all(m.is_acked for m in batch)
    if nats_path == "internals":
        assert nc.frames == [b"".join(b"PUB %b 0\r\n\r\n" % m.reply.encode() for m in batch)] and not nc.published
    else:
        assert nc.published == [(m.reply, b"", "", None) for m in batch] and not nc.frames


@pytest.mark.parametrize(("bad", "error"), [("reply", nats.errors.NotJSMessageError),
                                             ("acked", nats.errors.MsgAlreadyAckdError)])
def test_a_message_that_cannot_be_acked_stops_the_batch_before_anything_is_sent(
    nats_path: str, bad: str, error: type[Exception],
) -> None:
    nc = RecordingClient()
    batch = jetstream_msgs(nc, 3)
    if bad == "reply":
        batch[2].reply = ""
    else:
        asyncio.run(batch[2].ack())
        nc.published.clear()
    with pytest.raises(error):
        asyncio.run(internals.ack_all(nc, batch))  # type: ignore[arg-type]
    assert not nc.frames and not nc.published and not batch[0].is_acked


def test_publishes_carry_subject_reply_headers_and_payload(nats_path: str) -> None:
    nc = RecordingClient()
    headers = hpub.Headers(("Nats-Msg-Id", "x-host-id"))
    messages = [(b'{"id":"a"}', ("a", "h1")), (b'{"id":"b"}', ("b", ""))]

    async def publish() -> None:
        await internals.publish_with_headers(nc, "events.enriched", "_INBOX.x.1", headers, messages)  # type: ignore[arg-type]
        await internals.publish_plain(nc, "events.raw", [b"p1", b"p2"])  # type: ignore[arg-type]

    asyncio.run(publish())
    if nats_path == "internals":
        assert nc.frames == [hpub.frames("events.enriched", "_INBOX.x.1", headers, messages),
                             b"PUB events.raw 2\r\np1\r\nPUB events.raw 2\r\np2\r\n"]
        assert nc.flushes == 2 and not nc.published
    else:
        assert nc.published == [
            ("events.enriched", b'{"id":"a"}', "_INBOX.x.1", {"Nats-Msg-Id": "a", "x-host-id": "h1"}),
            ("events.enriched", b'{"id":"b"}', "_INBOX.x.1", {"Nats-Msg-Id": "b", "x-host-id": ""}),
            ("events.raw", b"p1", "", None), ("events.raw", b"p2", "", None)]
        assert not nc.frames


def test_replies_are_routed_to_the_handler_or_left_to_the_callback(nats_path: str) -> None:
    nc = RecordingClient()
    got: list[tuple[bytes, bytes, str | None]] = []
    original = nc._process_msg
    routed = internals.route_replies(nc, Subscription(nc, 5), lambda *answer: got.append(answer))  # type: ignore[arg-type]
    assert routed == (nats_path == "internals")
    if not routed:
        assert nc._process_msg == original
        return

    async def deliver() -> None:
        await nc._process_msg(5, b"_INBOX.x.1", b"", b'{"seq":1}', b"")
        await nc._process_msg(5, b"_INBOX.x.2", b"", b"", b"NATS/1.0 503\r\n\r\n")
        await nc._process_msg(6, b"other", b"", b"data", b"")

    asyncio.run(deliver())
    assert got == [(b"_INBOX.x.1", b'{"seq":1}', None), (b"_INBOX.x.2", b"", "503")]
    assert nc.others == [(6, b"other")] and nc.stats["in_msgs"] == 2


def test_a_closed_connection_is_refused_on_the_fast_path() -> None:
    nc = RecordingClient()
    nc.is_closed = True
    previous = internals.use_public_api(False)
    try:
        with pytest.raises(nats.errors.ConnectionClosedError):
            asyncio.run(internals.publish_plain(nc, "s", [b"x"]))  # type: ignore[arg-type]
    finally:
        internals.use_public_api(previous)

"""The ``publish`` sink against a real nats-server: headers, stream dedupe, core mode, outages."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from etl.config import Settings
from etl.dev import servers
from etl.errors import SinkDataError, SinkUnavailable
from etl.natsio.conn import CONNECT_BUDGET_S
from etl.sinks.nats_publish import NatsPublisher, call_timeouts_s

WAIT_S = 20.0
TIMEOUT_S = 2


def eventually(attempt: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Retry ``attempt`` (it may raise ``SinkUnavailable``) until it returns true or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if attempt():
                return
        except SinkUnavailable:
            pass
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def events(n: int, prefix: str = "ev") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "type": "process_exec", "source": "agent", "timestamp": 1_700_000_000_000 + i,
         "metadata": {"host_id": f"host-{i % 3}", "enriched_at": "2024-01-01T00:00:00.000Z"}, "env": "test",
         "rdns": None}
        for i in range(n)
    ]


def expected_headers(event: dict[str, Any]) -> dict[str, str]:
    return {"Nats-Msg-Id": event["id"], "x-host-id": event["metadata"]["host_id"],
            "x-event-type": event["type"], "x-timestamp": str(event["timestamp"])}


@pytest.fixture
def open_publisher() -> Iterator[Callable[[Settings], NatsPublisher]]:
    opened: list[NatsPublisher] = []

    def make(settings: Settings) -> NatsPublisher:
        publisher = NatsPublisher(settings)
        publisher.open()
        opened.append(publisher)
        return publisher

    yield make
    for publisher in opened:
        publisher.close()


def assert_ack_path(publisher: NatsPublisher, nats_path: str) -> None:
    """Stream answers read straight from nats-py's parser (``internals.route_replies``), or through the
    subscription's callback on the public API."""
    inbox = publisher._acks  # noqa: SLF001 - which way the answers come is not part of the sink's interface
    assert inbox is not None and inbox.routed == (nats_path == "internals")


async def receive(nc: Client, subject: str, count: int, action: Callable[[], Any]) -> list[Any]:
    """Subscribe to ``subject``, run the blocking ``action`` in a thread, and collect ``count`` messages."""
    sub = await nc.subscribe(subject)
    await nc.flush()
    result = await asyncio.to_thread(action)
    msgs = [await sub.next_msg(timeout=WAIT_S) for _ in range(count)]
    await sub.unsubscribe()
    return [result, msgs]


def test_jetstream_publish_sets_headers_and_dedupes_replays(
    make_settings: Callable[..., Settings], open_publisher: Callable[[Settings], NatsPublisher], nats_path: str
) -> None:
    settings = make_settings(PROCESSING_TIMEOUT=5)
    publisher = open_publisher(settings)
    assert_ack_path(publisher, nats_path)
    batch = events(3)

    async def main() -> None:
        nc = await nats.connect(settings.nats_url)
        try:
            subject = settings.nats_subject_enriched
            stored, msgs = await receive(nc, subject, 3, lambda: publisher.write(batch))
            assert stored == 3
            for event, msg in zip(batch, msgs, strict=True):
                assert {k: msg.headers[k] for k in expected_headers(event)} == expected_headers(event)
            js = nc.jetstream()
            stream = await js.stream_info(settings.nats_enriched_stream)
            assert stream.state.messages == 3
            assert stream.config.duplicate_window == 120
            kept = await js.get_msg(settings.nats_enriched_stream, 1)
            assert kept.headers is not None and kept.headers["Nats-Msg-Id"] == batch[0]["id"]
            assert kept.headers["x-timestamp"] == str(batch[0]["timestamp"])

            assert await asyncio.to_thread(publisher.write, batch) == 0  # a replay stores nothing
            assert await asyncio.to_thread(publisher.write, batch + events(1, "new")) == 1
            assert (await js.stream_info(settings.nats_enriched_stream)).state.messages == 4
        finally:
            await nc.close()

    asyncio.run(main())
    publisher.check()


def test_core_publish_flushes_once_per_batch(
    make_settings: Callable[..., Settings], open_publisher: Callable[[Settings], NatsPublisher],
    monkeypatch: pytest.MonkeyPatch, nats_path: str,
) -> None:
    settings = make_settings(NATS_ENRICHED_STREAM="", PROCESSING_TIMEOUT=5)
    publisher = open_publisher(settings)
    nc = publisher._nc
    assert nc is not None
    flushes: list[float] = []
    real_flush = nc.flush

    async def counting_flush(*args: Any, **kwargs: Any) -> None:
        flushes.append(time.monotonic())
        await real_flush(*args, **kwargs)

    monkeypatch.setattr(nc, "flush", counting_flush)
    batch = events(50)

    async def main() -> None:
        sub_nc = await nats.connect(settings.nats_url)
        try:
            subject = settings.nats_subject_enriched
            sent, msgs = await receive(sub_nc, subject, 50, lambda: publisher.write(batch))
        finally:
            await sub_nc.close()
        assert sent == 50 and len(flushes) == 1
        assert [m.headers["Nats-Msg-Id"] for m in msgs] == [e["id"] for e in batch]
        assert {k: msgs[7].headers[k] for k in expected_headers(batch[7])} == expected_headers(batch[7])

    asyncio.run(main())


def test_event_over_max_payload_is_a_data_error(
    make_settings: Callable[..., Settings], open_publisher: Callable[[Settings], NatsPublisher], nats_path: str
) -> None:
    settings = make_settings(PROCESSING_TIMEOUT=5)
    publisher = open_publisher(settings)
    huge = events(1, "huge")[0] | {"blob": "x" * (1024 * 1024)}
    with pytest.raises(SinkDataError, match="max_payload"):
        publisher.write([huge])
    assert publisher.write(events(2)) == 2  # the connection survived


def test_a_stream_refusing_one_event_is_a_data_error_and_the_rest_are_stored(
    make_settings: Callable[..., Settings], open_publisher: Callable[[Settings], NatsPublisher], nats_path: str
) -> None:
    settings = make_settings(PROCESSING_TIMEOUT=5)

    async def limited_stream() -> None:  # an operator's stream, which the sink binds to as it is
        nc = await nats.connect(settings.nats_url)
        try:
            await nc.jetstream().add_stream(name=settings.nats_enriched_stream,
                                            subjects=[settings.nats_subject_enriched], max_msg_size=600)
        finally:
            await nc.close()

    asyncio.run(limited_stream())
    publisher = open_publisher(settings)
    assert_ack_path(publisher, nats_path)
    big = events(1, "big")[0] | {"blob": "x" * 700}
    with pytest.raises(SinkDataError, match="the stream refused an event: message size exceeds maximum"):
        publisher.write(events(2, "a") + [big] + events(2, "b"))
    assert publisher.write(events(2, "a") + events(3, "b")) == 1  # the four before were stored: replays now


def test_no_stream_for_the_subject_is_unavailable(
    make_settings: Callable[..., Settings], open_publisher: Callable[[Settings], NatsPublisher], nats_path: str
) -> None:
    settings = make_settings(PROCESSING_TIMEOUT=5)
    publisher = open_publisher(settings)
    assert_ack_path(publisher, nats_path)
    assert publisher.write(events(2)) == 2

    async def drop_stream() -> None:
        nc = await nats.connect(settings.nats_url)
        try:
            await nc.jetstream().delete_stream(settings.nats_enriched_stream)
        finally:
            await nc.close()

    asyncio.run(drop_stream())
    started = time.monotonic()
    with pytest.raises(SinkUnavailable, match="cannot publish"):
        publisher.write(events(3, "gone"))
    assert time.monotonic() - started < 2, "no responders is answered at once, not after the timeout"


@pytest.mark.parametrize("stream", ["js", "core"])
def test_outage_raises_unavailable_in_time_then_recovers(
    make_settings: Callable[..., Settings], open_publisher: Callable[[Settings], NatsPublisher],
    tmp_path: Path, stream: str,
) -> None:
    server = servers.nats_server(tmp_path / "nats").start()
    try:
        overrides = {} if stream == "js" else {"NATS_ENRICHED_STREAM": ""}
        settings = make_settings(NATS_URL=f"nats://127.0.0.1:{server.port}", PROCESSING_TIMEOUT=TIMEOUT_S,
                                 **overrides)
        publisher = open_publisher(settings)
        assert publisher.write(events(2, "before")) == 2

        server.stop()
        started = time.monotonic()
        with pytest.raises(SinkUnavailable):
            publisher.write(events(2, "during"))
        assert time.monotonic() - started < TIMEOUT_S + 1.5
        with pytest.raises(SinkUnavailable):
            publisher.check()

        server.start()
        eventually(lambda: publisher.write(events(2, "after")) == 2)
        publisher.check()
    finally:
        server.stop()


@pytest.mark.parametrize("stream", ["js", "core"])
def test_hung_server_times_out_as_unavailable(
    make_settings: Callable[..., Settings], open_publisher: Callable[[Settings], NatsPublisher],
    tmp_path: Path, stream: str,
) -> None:
    """A server that is connected but not answering (SIGSTOP) costs the publisher's call time-out, within the sink's
    budget: it gives up before Dramatiq's time limit (``PROCESSING_TIMEOUT``) would interrupt the actor."""
    server = servers.nats_server(tmp_path / "nats").start()
    assert server.proc is not None
    try:
        overrides = {} if stream == "js" else {"NATS_ENRICHED_STREAM": ""}
        settings = make_settings(NATS_URL=f"nats://127.0.0.1:{server.port}", PROCESSING_TIMEOUT=TIMEOUT_S,
                                 **overrides)
        publisher = open_publisher(settings)
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(SinkUnavailable):
            publisher.write(events(3))
        coroutine_s, _ = call_timeouts_s(settings)
        assert coroutine_s - 0.1 < time.monotonic() - started <= settings.sink_budget_s < TIMEOUT_S
        server.proc.send_signal(signal.SIGCONT)
        eventually(lambda: publisher.write(events(3)) in (0, 3))  # a replay of what got through is fine
    finally:
        server.proc.send_signal(signal.SIGCONT)
        server.stop()


def test_open_fails_fast_without_a_server_and_close_is_idempotent(
    make_settings: Callable[..., Settings]
) -> None:
    nowhere = f"nats://127.0.0.1:{servers.free_port()}"
    # A budget longer than the connect's own (conn.CONNECT_BUDGET_S), so the connect is what gives up.
    settings = make_settings(NATS_URL=nowhere, PROCESSING_TIMEOUT=int(CONNECT_BUDGET_S * 2))
    publisher = NatsPublisher(settings)
    started = time.monotonic()
    with pytest.raises(SinkUnavailable, match="cannot connect"):
        publisher.open()
    assert time.monotonic() - started < settings.sink_budget_s
    with pytest.raises(SinkUnavailable):
        publisher.write(events(1))
    publisher.close()
    publisher.close()

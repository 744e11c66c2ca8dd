"""HPUB frames for a batch, checked against nats-py's own formatting of the same publishes."""

from __future__ import annotations

import asyncio

import nats.aio.client as nats_client
from nats.protocol import command

from etl.natsio import hpub, internals
from tests.support.fake_nats import RecordingClient

NAMES = ("Nats-Msg-Id", "x-host-id", "x-event-type", "x-timestamp")
VALUES = ("ev-1", "host-1", "exec", "17")  # as nats_publish.encode makes them: stripped


def nats_py_frame(subject: str, reply: str, headers: dict[str, str], payload: bytes) -> bytes:
    """The frame nats-py's ``publish`` queues for the same message (its own steps, from its client module)."""
    hdr = bytearray(nats_client.NATS_HDR_LINE + nats_client._CRLF_)
    for name, value in headers.items():
        hdr += name.encode() + b": " + value.strip().translate(nats_client._HEADER_VALUE_NEWLINES).encode()
        hdr += nats_client._CRLF_
    hdr += nats_client._CRLF_
    return command.hpub_cmd(subject, reply, hdr, payload)


def tokens(frame: bytes) -> tuple[list[bytes], bytes]:
    """The control line's fields (nats-py leaves two spaces where there is no reply) and the rest."""
    line, rest = frame.split(b"\r\n", 1)
    return line.split(), rest


def test_a_frame_is_what_nats_py_sends_with_and_without_a_reply() -> None:
    payload = b'{"id":"ev-1","note":"caf\xc3\xa9 \\r\\n"}'
    headers = hpub.Headers(NAMES)
    as_dict = dict(zip(NAMES, VALUES, strict=True))
    ours = hpub.frames("events.enriched", "_INBOX.abc.7", headers, [(payload, VALUES)])
    assert ours == nats_py_frame("events.enriched", "_INBOX.abc.7", as_dict, payload)
    ours = hpub.frames("events.enriched", "", headers, [(payload, VALUES)])
    assert tokens(ours) == tokens(nats_py_frame("events.enriched", "", as_dict, payload))
    assert ours.startswith(b"HPUB events.enriched %d " % len(headers.block(VALUES)))


def test_encoded_events_frame_as_nats_py_sends_their_raw_values() -> None:
    """nats-py strips header values; ``encode`` does it for ``Headers``, on the rare value that needs it."""
    from etl.sinks.nats_publish import HEADER_NAMES, encode

    for host in (" host-1 ", "host-1", "\u00a0h\u00e9\t", "", "100% {x}"):
        event = {"id": "ev-1", "type": " exec", "timestamp": 17, "metadata": {"host_id": host}}
        payload, values = encode(event)
        raw = dict(zip(HEADER_NAMES, ("ev-1", host, " exec", "17"), strict=True))
        assert hpub.frames("s", "r.1", hpub.Headers(HEADER_NAMES), [(payload, values)]) == nats_py_frame(
            "s", "r.1", raw, payload)


def test_a_batch_is_its_frames_in_order() -> None:
    headers = hpub.Headers(("Nats-Msg-Id", "x-host-id"))
    messages = [(b"{}", ("a", "")), (b"x" * 3000, ("b", "h\u00e9")), (b"", ("c", "100% {x}"))]
    expected = b"".join(nats_py_frame("s", "r.1", dict(zip(headers.names, v, strict=True)), p)
                        for p, v in messages)
    assert hpub.frames("s", "r.1", headers, messages) == expected


def test_sizes_count_bytes_not_characters() -> None:
    headers = hpub.Headers(("x-host-id",))
    block = headers.block(("日本",))
    assert block == "NATS/1.0\r\nx-host-id: 日本\r\n\r\n".encode()
    frame = hpub.frames("s", "", headers, [("é".encode(), ("日本",))])
    assert frame.startswith(b"HPUB s %d %d\r\n" % (len(block), len(block) + 2))
    assert frame.endswith("é\r\n".encode())


def test_a_plain_publish_is_what_nats_py_sends() -> None:
    for payload in (b"", b"+ACK", "é {x}\r\n".encode()):
        ours = hpub.pub_frame(b"$JS.ACK.S.C.1.2.3.4.5", payload)
        assert tokens(ours) == tokens(command.pub_cmd("$JS.ACK.S.C.1.2.3.4.5", "", payload))


def test_both_paths_of_the_seam_put_the_same_frames_on_the_wire() -> None:
    """The frames the private hooks queue are those nats-py's ``publish`` makes of what the public path passes it."""
    headers = hpub.Headers(NAMES)
    messages = [(b'{"id":"ev-1"}', VALUES), (b"", ("ev-2", "", "exec", "18"))]
    sent: dict[bool, RecordingClient] = {}
    for public in (False, True):
        previous = internals.use_public_api(public)
        try:
            nc = sent[public] = RecordingClient()
            asyncio.run(internals.publish_with_headers(nc, "s", "r.1", headers, messages))  # type: ignore[arg-type]
        finally:
            internals.use_public_api(previous)
    assert sent[False].frames == [b"".join(nats_py_frame(subject, reply, hdrs or {}, payload)
                                           for subject, payload, reply, hdrs in sent[True].published)]

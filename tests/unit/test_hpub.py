"""HPUB frames for a batch, checked against nats-py's own formatting of the same publishes."""

from __future__ import annotations

import nats.aio.client as nats_client
from nats.protocol import command

from etl.sinks import hpub

HEADERS = {"Nats-Msg-Id": "ev-1", "x-host-id": " host-1 ", "x-event-type": "exec", "x-timestamp": "17"}


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
    ours = hpub.frames("events.enriched", "_INBOX.abc.7", [(payload, HEADERS)])
    assert ours == nats_py_frame("events.enriched", "_INBOX.abc.7", HEADERS, payload)
    ours = hpub.frames("events.enriched", "", [(payload, HEADERS)])
    assert tokens(ours) == tokens(nats_py_frame("events.enriched", "", HEADERS, payload))
    assert ours.startswith(b"HPUB events.enriched %d " % len(hpub.header_block(HEADERS)))


def test_a_batch_is_its_frames_in_order() -> None:
    messages = [(b"{}", {"Nats-Msg-Id": "a"}), (b"x" * 3000, {"Nats-Msg-Id": "b", "x-host-id": "h\u00e9"}),
                (b"", {"Nats-Msg-Id": "c"})]
    expected = b"".join(nats_py_frame("s", "r.1", h, p) for p, h in messages)
    assert hpub.frames("s", "r.1", messages) == expected


def test_sizes_count_bytes_not_characters() -> None:
    block = hpub.header_block({"x-host-id": "日本"})
    assert block == "NATS/1.0\r\nx-host-id: 日本\r\n\r\n".encode()
    frame = hpub.frame(b"s", b"", block, "é".encode())
    assert frame.startswith(b"HPUB s %d %d\r\n" % (len(block), len(block) + 2))
    assert frame.endswith("é\r\n".encode())

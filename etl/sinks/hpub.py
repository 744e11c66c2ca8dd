"""NATS ``HPUB`` frames (a publish with headers), formatted for a whole batch at once. Pure.

nats-py's ``publish`` does, for every message: validate the subject and the reply subject with a regex, check
each header name with another, strip each value and translate its line breaks, format the frame, and queue it
with a future for the flusher. That was a third of the publish pool's CPU. Here the subject and the header names
are constants checked once, the values arrive already free of control characters (``nats_publish.encode``), and
a batch becomes one ``bytes`` for ``nats_conn.send_frames``.

Wire format (NATS client protocol)::

    HPUB <subject> [reply-to] <#header bytes> <#total bytes>\r\n<headers><payload>\r\n

where ``<headers>`` is ``NATS/1.0\r\n``, then ``Name: value\r\n`` per header, then ``\r\n``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HEADER_LINE = b"NATS/1.0\r\n"
CRLF = b"\r\n"


def header_block(headers: Mapping[str, str]) -> bytes:
    """The header section for ``headers``. Values are stripped, as nats-py does; they must hold no CR or LF."""
    lines = [HEADER_LINE]
    for name, value in headers.items():
        lines.append(b"%b: %b\r\n" % (name.encode(), value.strip().encode()))
    lines.append(CRLF)
    return b"".join(lines)


def frame(subject: bytes, reply: bytes, headers: bytes, payload: bytes) -> bytes:
    """One ``HPUB`` frame; ``reply`` may be empty."""
    if reply:
        head = b"HPUB %b %b %d %d\r\n" % (subject, reply, len(headers), len(headers) + len(payload))
    else:
        head = b"HPUB %b %d %d\r\n" % (subject, len(headers), len(headers) + len(payload))
    return b"".join((head, headers, payload, CRLF))


def frames(subject: str, reply: str, messages: Iterable[tuple[bytes, Mapping[str, str]]]) -> bytes:
    """Every message of a batch, (payload, headers), as consecutive frames to ``subject`` with ``reply``."""
    subject_b, reply_b = subject.encode(), reply.encode()
    return b"".join(frame(subject_b, reply_b, header_block(headers), payload) for payload, headers in messages)

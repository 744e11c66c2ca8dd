"""NATS ``HPUB`` frames (a publish with headers), formatted for a whole batch at once, and plain ``PUB`` ones. Pure.

nats-py's ``publish`` does, for every message: validate the subject and the reply subject with a regex, check
each header name with another, strip each value and translate its line breaks, format the frame, and queue it
with a future for the flusher: much of the pool's CPU (docs/performance.md). Here the subject and the header names
are constants formatted once (``Headers``), the values arrive already stripped and free of control characters
(``nats_publish.encode``), and a batch becomes one ``bytes`` for ``internals.publish_with_headers``, each frame made
by one formatting operation.

Wire format (NATS client protocol)::

    HPUB <subject> [reply-to] <#header bytes> <#total bytes>\r\n<headers><payload>\r\n

where ``<headers>`` is ``NATS/1.0\r\n``, then ``Name: value\r\n`` per header, then ``\r\n``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class Headers:
    """A header section with fixed names (given once), filled with each message's values."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        # The section as a %-format, one %s per value.
        self.template = "NATS/1.0\r\n" + "".join(f"{name.replace('%', '%%')}: %s\r\n" for name in self.names) + "\r\n"

    def block(self, values: Sequence[str]) -> bytes:
        """The section for ``values``, in the order of the names. The values must be as nats-py would send them:
        stripped, with no CR or LF (``nats_publish.header_value``)."""
        return (self.template % tuple(values)).encode()


def pub_frame(subject: bytes, payload: bytes) -> bytes:
    """One core ``PUB`` frame without headers or reply subject: ``PUB <subject> <#bytes>\r\n<payload>\r\n``."""
    return b"PUB %b %d\r\n%b\r\n" % (subject, len(payload), payload)


def frames(subject: str, reply: str, headers: Headers, messages: Iterable[tuple[bytes, tuple[str, ...]]]) -> bytes:
    """Every message of a batch, (payload, header values), as consecutive frames to ``subject`` with ``reply``.

    ``Headers.block`` inlined: this runs for every event published."""
    control = b"HPUB " + subject.encode() + (b" " + reply.encode() if reply else b"") + b" %d %d\r\n%b%b\r\n"
    block = headers.template
    out = []
    for payload, values in messages:
        head = (block % values).encode()
        out.append(control % (len(head), len(head) + len(payload), head, payload))
    return b"".join(out)

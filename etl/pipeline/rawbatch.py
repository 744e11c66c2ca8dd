"""How a batch of raw NATS payloads travels inside one Dramatiq message.

Message bodies are JSON, so raw bytes travel as text. Payloads that are not valid UTF-8 (which the event
contract rejects, but which must still reach the dead-letter queue intact) travel as base64, and their indices
are listed beside the batch. So do payloads that JSON would escape to well over their size (a control character
becomes six bytes): base64 costs a third more at most, so a hostile batch takes about its own size in Redis.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

_CONTROL = bytes(range(0x20))
# Extra bytes JSON spends on one control character (``\u0001``) and on a quote or a backslash.
_CONTROL_EXTRA = 5
_QUOTE_EXTRA = 1
# Base64 spends one byte in three.
_BASE64_EXTRA_SHARE = 3


def pack(batch: Sequence[bytes]) -> tuple[list[str], list[int]]:
    """Raw payloads -> (texts, indices of the texts that are base64)."""
    texts: list[str] = []
    binary: list[int] = []
    for i, data in enumerate(batch):
        text = _as_text(data)
        if text is None:
            texts.append(base64.b64encode(data).decode("ascii"))
            binary.append(i)
        else:
            texts.append(text)
    return texts, binary


def _as_text(data: bytes) -> str | None:
    """``data`` as text, or None when it is not UTF-8 or when JSON would escape it to more than base64's size."""
    if _escapes_badly(data):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _escapes_badly(data: bytes) -> bool:
    """Whether JSON would spend more extra bytes on ``data`` than base64 would (counted at C speed)."""
    controls = len(data) - len(data.translate(None, _CONTROL))
    extra = controls * _CONTROL_EXTRA + (data.count(b'"') + data.count(b"\\")) * _QUOTE_EXTRA
    return extra * _BASE64_EXTRA_SHARE > len(data)


def unpack(texts: Sequence[str], binary: Sequence[int] = ()) -> list[str | bytes]:
    """The inverse of ``pack``: UTF-8 payloads come back as ``str``, the others as their original bytes."""
    out: list[str | bytes] = list(texts)
    for i in binary:
        out[i] = base64.b64decode(texts[i])
    return out

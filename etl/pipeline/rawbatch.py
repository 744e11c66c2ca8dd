"""How a batch of raw NATS payloads travels inside one Dramatiq message.

Message bodies are JSON, so raw bytes travel as text. Payloads that are not valid UTF-8 (which the event
contract rejects, but which must still reach the dead-letter queue intact) travel as base64, and their indices
are listed beside the batch.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence


def pack(batch: Sequence[bytes]) -> tuple[list[str], list[int]]:
    """Raw payloads -> (texts, indices of the texts that are base64)."""
    texts: list[str] = []
    binary: list[int] = []
    for i, data in enumerate(batch):
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(base64.b64encode(data).decode("ascii"))
            binary.append(i)
    return texts, binary


def unpack(texts: Sequence[str], binary: Sequence[int] = ()) -> list[str | bytes]:
    """The inverse of ``pack``: UTF-8 payloads come back as ``str``, the others as their original bytes."""
    out: list[str | bytes] = list(texts)
    for i in binary:
        out[i] = base64.b64decode(texts[i])
    return out

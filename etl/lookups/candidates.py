"""What of an event is looked up in the indicator index: its addresses, the domains its payload names, and the
hash of its binary. Pure: reads a parsed event (``etl.pipeline.events``), changes nothing.

Domains are found by a regular expression over the decoded payload's strings (``args``; or, for an opaque
payload, its first ``MAX_SCAN_CHARS`` bytes read as text). Its work is bounded on every axis, since the payload is
the agent's: at most ``MAX_SCAN_STRINGS`` strings, ``MAX_SCAN_CHARS`` characters of each, ``MAX_DOMAINS`` domains.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

from etl.pipeline.events import Event, payload_bytes
from etl.pipeline.peers import destination_of

MAX_SCAN_STRINGS = 64
MAX_SCAN_CHARS = 4096
MAX_DOMAINS = 16
# Labels of letters, digits, '-' and '_', the last a top-level domain as etl.lookups.feeds.values reads one. Each
# label's length is bounded, and a name cannot begin inside a longer word, so a scan is linear in the text.
_DOMAIN = re.compile(r"(?<![\w.-])(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+"
                     r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})(?![\w-])", re.IGNORECASE)


class Field(StrEnum):
    """Where in the event a candidate was found: reported with each match."""

    HOST = "metadata.host_ip"
    DESTINATION = "destination"  # the peer address, etl.pipeline.peers.destination_of
    PAYLOAD = "payload"
    BINARY = "metadata.binary_sha256"


def addresses(event: Event) -> list[tuple[Field, str]]:
    """The event's host and destination addresses, as sent (not yet checked to be addresses)."""
    found = []
    host = event.get("metadata", {}).get("host_ip")
    if isinstance(host, str) and host:
        found.append((Field.HOST, host.strip()))
    peer = destination_of(event)
    if peer:
        found.append((Field.DESTINATION, peer))
    return found


def binary_hash(event: Event) -> str | None:
    """``metadata.binary_sha256`` in lower case, or ``None`` when there is none."""
    value = event.get("metadata", {}).get("binary_sha256")
    return value.strip().lower() if isinstance(value, str) and value else None


def _strings(value: Any, budget: list[int]) -> Iterator[str]:
    """The strings in ``value`` (nested objects and arrays included), while ``budget[0]`` lasts."""
    if isinstance(value, str):
        if budget[0] > 0:
            budget[0] -= 1
            yield value[:MAX_SCAN_CHARS]
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, budget)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, budget)


def _payload_texts(event: Event) -> Iterator[str]:
    args = event.get("args")
    if isinstance(args, dict):
        yield from _strings(args, [MAX_SCAN_STRINGS])
    elif event.get("payload") is not None:
        data = payload_bytes(event)
        if data:
            yield data[:MAX_SCAN_CHARS].decode("latin-1")


def domains(event: Event) -> list[str]:
    """The distinct domain names the payload holds, in lower case, at most ``MAX_DOMAINS``, in order of appearance.
    Only names with a dot and an alphabetic last label: ``file.txt`` is one, which the index simply does not hold."""
    found: dict[str, None] = {}
    for text in _payload_texts(event):
        if "." not in text:
            continue
        for match in _DOMAIN.finditer(text):
            found[match.group().lower()] = None
            if len(found) >= MAX_DOMAINS:
                return list(found)
    return list(found)

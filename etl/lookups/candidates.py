"""What of an event is looked up in the indicator index: its addresses, the domains its payload names, and the
hash of its binary. Pure: reads a parsed event (``etl.pipeline.events``), changes nothing.

Domains are found by a regular expression over the decoded payload's strings (``args``; or, for an opaque
payload, its first ``MAX_SCAN_CHARS`` bytes read as text). Its work is bounded on every axis, since the payload is
the agent's: at most ``MAX_SCAN_STRINGS`` strings, ``MAX_SCAN_CHARS`` characters of each, ``MAX_DOMAINS`` domains.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from etl.pipeline.events import Event, payload_bytes
from etl.pipeline.peers import destination_of

MAX_SCAN_STRINGS = 64
MAX_SCAN_CHARS = 4096
MAX_DOMAINS = 16
# Labels of letters, digits, '-' and '_', the last a top-level domain as etl.lookups.feeds.values reads one, not
# inside a longer word. Looser than a feed's domain (a label may end in '-'): a candidate only needs to find what
# the index holds, and this form is the cheaper to scan. Labels are bounded, so a scan is linear in the text. It
# runs on text already in lower case: case-insensitive matching makes every character class costlier.
_DOMAIN = re.compile(r"(?<![\w.-])(?:[a-z0-9_-]{1,63}\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})(?![\w-])")


class Field(StrEnum):
    """Where in the event a candidate was found: reported with each match."""

    HOST = "metadata.host_ip"
    DESTINATION = "destination"  # the peer address, etl.pipeline.peers.destination_of
    PAYLOAD = "payload"
    BINARY = "metadata.binary_sha256"


def host_address(event: Event) -> str | None:
    """``metadata.host_ip`` stripped, as sent (not yet checked to be an address); ``None`` when absent or empty."""
    host = event.get("metadata", {}).get("host_ip")
    return host.strip() if isinstance(host, str) and host else None


def addresses(event: Event) -> list[tuple[Field, str]]:
    """The event's host and destination addresses, as sent (not yet checked to be addresses)."""
    found = []
    host = host_address(event)
    if host is not None:
        found.append((Field.HOST, host))
    peer = destination_of(event)
    if peer:
        found.append((Field.DESTINATION, peer))
    return found


def binary_hash(event: Event) -> str | None:
    """``metadata.binary_sha256`` in lower case, or ``None`` when there is none."""
    value = event.get("metadata", {}).get("binary_sha256")
    return value.strip().lower() if isinstance(value, str) and value else None


def _dotted_strings(args: dict[str, Any]) -> list[str]:
    """The strings in ``args`` (nested objects and arrays included, after their siblings) that hold a dot, the
    first ``MAX_SCAN_CHARS`` of each; at most ``MAX_SCAN_STRINGS`` strings looked at. A loop over a stack rather
    than recursion or a generator: this runs for every event, and most strings are passed over at a glance."""
    found: list[str] = []
    budget, todo = MAX_SCAN_STRINGS, [args.values()]
    while todo:
        for value in todo.pop():
            kind = type(value)
            if kind is str:
                if "." in value and not value.replace(".", "").isdigit():  # an IPv4 address or a version: no name
                    found.append(value if len(value) <= MAX_SCAN_CHARS else value[:MAX_SCAN_CHARS])
                budget -= 1
                if budget == 0:
                    return found
            elif kind is dict:
                todo.append(value.values())
            elif kind is list:
                todo.append(value)
    return found


def payload_text(event: Event) -> str:
    """The text the payload's domains are looked for in: ``args``' dotted strings a line each (one regular
    expression call an event, not one a string), or an opaque payload's first bytes."""
    args = event.get("args")
    if isinstance(args, dict):
        return "\n".join(_dotted_strings(args))
    if event.get("payload") is None:
        return ""
    data = payload_bytes(event)
    return data[:MAX_SCAN_CHARS].decode("latin-1") if data else ""


def domains(event: Event) -> list[str]:
    """The distinct domain names the payload holds, in lower case, at most ``MAX_DOMAINS`` (the first found).
    Only names with a dot and an alphabetic last label: ``file.txt`` is one, which the index simply does not hold."""
    return domains_in(payload_text(event))


def domains_in(text: str) -> list[str]:
    """``domains`` of a payload's text, as ``payload_text`` gives it: for a caller that remembers the names of a
    text it sees again."""
    if not text:
        return []
    found: dict[str, None] = {}
    for match in _DOMAIN.finditer(text.lower()):
        found[match.group()] = None
        if len(found) >= MAX_DOMAINS:
            break
    return list(found)

"""What reverse DNS takes as a host: bounded text, and the IP addresses among it that may be PTR-resolved.

Host fields come from the agents. Each is bounded in length before it is stripped, parsed or used as a cache key,
so that a hostile one costs no more than a real one: nothing longer than a DNS name is a host.
"""

from __future__ import annotations

import ipaddress

from etl.pipeline.peers import MAX_ADDRESS_CHARS

# The longest a DNS name can be written, without its final dot.
MAX_HOST_CHARS = 253


def bounded_host(value: str) -> str | None:
    """``value`` when it could name a host (non-empty, at most ``MAX_HOST_CHARS`` characters), else ``None``."""
    return value if 0 < len(value) <= MAX_HOST_CHARS else None


def ptr_address(host: str) -> str | None:
    """The canonical text of ``host`` (surrounding spaces aside) when it is an IPv4 or IPv6 address that may be
    PTR-resolved, the cache key; else ``None``. An address with a scope id (``fe80::1%eth0``) is not: its reverse
    name would not hold the scope, and the scope is the sender's free text."""
    if len(host) > MAX_HOST_CHARS:
        return None
    text = host.strip()
    if len(text) > MAX_ADDRESS_CHARS or "%" in text:
        return None
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None

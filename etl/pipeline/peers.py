"""The peer of a network event: where its decoded payload (``args``) names the address, port and protocol it
talks to. Reverse DNS names the address (``dst_rdns``); the graph keys the endpoint by all three.

Also how long an IP address's text can be, so that reverse DNS and the graph bound agents' text before they
parse it as an address."""

from __future__ import annotations

from typing import Any

# The longest text of an IP address: eight groups of four hex digits, or six and a dotted IPv4 tail.
MAX_ADDRESS_CHARS = 45
# An IPv6 scope id names an interface: at most 15 characters on Linux (IFNAMSIZ, less its NUL), or its index.
MAX_SCOPE_ID_CHARS = 15
MAX_SCOPED_ADDRESS_CHARS = MAX_ADDRESS_CHARS + len("%") + MAX_SCOPE_ID_CHARS

# In order of preference.
DESTINATION_KEYS = ("dst_ip", "remote_ip")
PORT_KEYS = ("dst_port", "remote_port")
PROTOCOL_KEYS = ("protocol", "proto")


def destination_of(event: dict[str, Any]) -> str | None:
    """The peer's address: ``args.dst_ip``, else ``args.remote_ip`` (non-empty strings only, stripped); ``None``
    for an event without one."""
    args = event.get("args")
    if not isinstance(args, dict):
        return None
    for key in DESTINATION_KEYS:
        value = args.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def first_of(args: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any]:
    """The first of ``keys`` that ``args`` holds a non-empty value for, and that value; else the first key and
    ``None``."""
    for key in keys:
        value = args.get(key)
        if value is not None and value != "":
            return key, value
    return keys[0], None

"""Network endpoints: the peer a network event talks to, as the graph keys it.

The peer's address is the one reverse DNS names (``etl.pipeline.enrich.destination_of``: ``args.dst_ip``, else
``args.remote_ip``); its port is ``args.dst_port``, else ``args.remote_port``; its protocol ``args.protocol``, else
``args.proto``. An address that parses as IP is written in its canonical form, so ``::FFFF:0A00:0001`` and
``::ffff:10.0.0.1`` are one endpoint; any other text is kept as sent.

The key, ``endpoint_id``, is ``<ip>:<port>``, with an IPv6 address in brackets (``[2001:db8::1]:443``), or just
``<ip>`` when the event names no port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from etl.errors import SinkDataError
from etl.pipeline.enrich import destination_of

PORT_KEYS = ("dst_port", "remote_port")
PROTOCOL_KEYS = ("protocol", "proto")
MAX_PORT = 65_535
# Longer than any IP address with a sensible scope id: kept as sent, and out of the cache.
MAX_IP_CHARS = 64
# Canonical forms of the addresses seen lately: a few hundred peers account for most events.
_CANONICAL_CACHE_SIZE = 4_096


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    ip: str
    port: int | None
    protocol: str | None


@lru_cache(maxsize=_CANONICAL_CACHE_SIZE)
def canonical_ip(text: str) -> str:
    """``text`` as a canonical IP address (scope id kept), or unchanged when it is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _first(args: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any]:
    for key in keys:
        value = args.get(key)
        if value is not None and value != "":
            return key, value
    return keys[0], None


def _port(event_id: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PORT:
        return value
    raise SinkDataError(f"event {event_id!r}: args.{key} must be a port number (0-{MAX_PORT}), "
                        f"got {str(value)[:64]!r}")


def _protocol(event_id: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SinkDataError(f"event {event_id!r}: args.{key} must be a string or a number")
    return str(value).strip() or None


def endpoint_of(event: dict[str, Any]) -> Endpoint | None:
    """The network endpoint ``event`` talks to, or ``None`` when its ``args`` name no peer address.

    Raises ``SinkDataError`` for a port that is not a number from 0 to ``MAX_PORT`` (as an integer or decimal
    text) or a protocol that is neither text nor a number.
    """
    peer = destination_of(event)
    if peer is None:
        return None
    args = event["args"]
    event_id = str(event.get("id"))
    ip = canonical_ip(peer) if len(peer) <= MAX_IP_CHARS else peer
    port = _port(event_id, *_first(args, PORT_KEYS))
    protocol = _protocol(event_id, *_first(args, PROTOCOL_KEYS))
    if port is None:
        return Endpoint(ip, ip, None, protocol)
    host = f"[{ip}]" if ":" in ip else ip
    return Endpoint(f"{host}:{port}", ip, port, protocol)

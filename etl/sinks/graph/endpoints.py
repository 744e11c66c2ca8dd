"""Network endpoints: the peer a network event talks to, as the graph keys it.

The peer's address, port and protocol are read as ``etl.pipeline.peers`` says. An address that parses as IP is
written in one canonical form (an IPv4-mapped IPv6 address in dotted form, whatever Python's version prints), so
``::FFFF:0A00:0001`` and ``::ffff:10.0.0.1`` are one endpoint; any other text is kept as sent.

The key, ``endpoint_id``, is ``<ip>:<port>``, with an IPv6 address in brackets (``[2001:db8::1]:443``), or just
``<ip>`` when the event names no port. Text that is not an address but holds a ``:`` is always bracketed, so that
it cannot read as another address and port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from etl.errors import PeerDataError
from etl.pipeline.peers import MAX_SCOPED_ADDRESS_CHARS, PORT_KEYS, PROTOCOL_KEYS, destination_of, first_of

MAX_PORT = 65_535
_CACHE_SIZE = 4_096


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    ip: str
    port: int | None
    protocol: str | None


def canonical_ip(text: str) -> str | None:
    """``text`` as a canonical IP address (scope id kept), or ``None`` when it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None and not address.scope_id:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _port(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PORT:
        return value
    raise ValueError(f"args.{key} must be a port number (0-{MAX_PORT}), got {str(value)[:64]!r}")


def _protocol(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"args.{key} must be a string or a number")
    return str(value).strip() or None


def _endpoint(peer: str, port_key: str, port_value: Any, protocol_key: str, protocol_value: Any) -> Endpoint:
    # Unlike reverse DNS, the graph keeps a scope id: it tells apart link-local peers on different interfaces.
    # Longer text is no address: kept as sent, and out of the cache.
    canonical = canonical_ip(peer) if len(peer) <= MAX_SCOPED_ADDRESS_CHARS else None
    ip = peer if canonical is None else canonical
    port = _port(port_key, port_value)
    protocol = _protocol(protocol_key, protocol_value)
    host = f"[{ip}]" if ":" in ip else ip
    if port is None:
        return Endpoint(ip if canonical is not None else host, ip, None, protocol)
    return Endpoint(f"{host}:{port}", ip, port, protocol)


# The same few hundred peers make most flows: their endpoints are worked out once. Only short text and plain
# integers are cached (no bool or float, which a cache would take for equal integers).
_cached_endpoint = lru_cache(maxsize=_CACHE_SIZE)(_endpoint)
_CACHEABLE = (str, int, type(None))


def endpoint_of(event: dict[str, Any]) -> Endpoint | None:
    """The network endpoint ``event`` talks to, or ``None`` when its ``args`` name no peer address.

    Raises ``PeerDataError`` for a port that is not a number from 0 to ``MAX_PORT`` (as an integer or decimal
    text) or a protocol that is neither text nor a number.
    """
    peer = destination_of(event)
    if peer is None:
        return None
    args = event["args"]
    port_key, port = first_of(args, PORT_KEYS)
    protocol_key, protocol = first_of(args, PROTOCOL_KEYS)
    cacheable = len(peer) <= MAX_SCOPED_ADDRESS_CHARS and type(port) in _CACHEABLE and type(protocol) in _CACHEABLE
    try:
        return (_cached_endpoint if cacheable else _endpoint)(peer, port_key, port, protocol_key, protocol)
    except ValueError as e:
        raise PeerDataError(f"event {str(event.get('id'))[:64]!r}: {e}") from None

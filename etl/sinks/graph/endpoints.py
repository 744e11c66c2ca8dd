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
_CACHE_SIZE = 4_096


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    ip: str
    port: int | None
    protocol: str | None


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


def _port(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
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
    ip = canonical_ip(peer) if len(peer) <= MAX_IP_CHARS else peer
    port = _port(port_key, port_value)
    protocol = _protocol(protocol_key, protocol_value)
    if port is None:
        return Endpoint(ip, ip, None, protocol)
    host = f"[{ip}]" if ":" in ip else ip
    return Endpoint(f"{host}:{port}", ip, port, protocol)


# The same few hundred peers make most flows: their endpoints are worked out once. Only short text and plain
# integers are cached (no bool or float, which a cache would take for equal integers).
_cached_endpoint = lru_cache(maxsize=_CACHE_SIZE)(_endpoint)
_CACHEABLE = (str, int, type(None))


def endpoint_of(event: dict[str, Any]) -> Endpoint | None:
    """The network endpoint ``event`` talks to, or ``None`` when its ``args`` name no peer address.

    Raises ``SinkDataError`` for a port that is not a number from 0 to ``MAX_PORT`` (as an integer or decimal
    text) or a protocol that is neither text nor a number.
    """
    peer = destination_of(event)
    if peer is None:
        return None
    args = event["args"]
    port_key, port = _first(args, PORT_KEYS)
    protocol_key, protocol = _first(args, PROTOCOL_KEYS)
    cacheable = len(peer) <= MAX_IP_CHARS and type(port) in _CACHEABLE and type(protocol) in _CACHEABLE
    try:
        return (_cached_endpoint if cacheable else _endpoint)(peer, port_key, port, protocol_key, protocol)
    except ValueError as e:
        raise SinkDataError(f"event {str(event.get('id'))[:64]!r}: {e}") from None

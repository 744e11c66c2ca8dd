"""Reverse-DNS strategies, chosen by ``RDNS_MODE``. Each resolves a batch of host strings to names (or ``None``).

``off`` gives ``None`` for everything; ``fake`` derives a stable name from the host without any I/O, for
development and tests; ``ptr`` asks DNS for PTR records, concurrently, through a cache and within a time budget
per batch (``etl.rdns.ptr``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Protocol

from etl.config import Settings
from etl.rdns.hosts import MAX_HOST_CHARS
from etl.rdns.ptr import PtrResolver

# Fake names are a pure function of the host: the last ones computed are kept (hosts are bounded: a few MB).
FAKE_CACHE_SIZE = 16_384


class Resolver(Protocol):
    def resolve(self, hosts: Iterable[str]) -> dict[str, str | None]:
        """Map each host (an IP address or a host name) to its reverse-DNS name, or ``None``."""
        ...


def fake_name(host: str) -> str | None:
    """The fake reverse-DNS name of ``host``: ``host-{last part}.local``; ``None`` for a host longer than
    ``MAX_HOST_CHARS`` (checked before the cache, which keeps its hosts).

    The last part is the last octet of an IPv4 address, the last group of an IPv6 address, the last
    dot-separated label of a host name, or for a name without dots its last ``-``-separated part.
    """
    return None if len(host) > MAX_HOST_CHARS else _fake_name(host)


@functools.lru_cache(maxsize=FAKE_CACHE_SIZE)
def _fake_name(host: str) -> str | None:
    host = host.strip().rstrip(".")
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None:
        last = host.rsplit(".", 1)[-1] if "." in host else host.rsplit("-", 1)[-1]
    elif address.version == 4:
        last = str(address).rsplit(".", 1)[-1]
    else:
        last = address.compressed.rsplit(":", 1)[-1] or "0"
    return f"host-{last}.local" if last else None


class OffResolver:
    def resolve(self, hosts: Iterable[str]) -> dict[str, str | None]:
        return dict.fromkeys(hosts)


class FakeResolver:
    def resolve(self, hosts: Iterable[str]) -> dict[str, str | None]:
        return {host: fake_name(host) for host in set(hosts)}


def resolver_for(settings: Settings) -> Resolver:
    """The resolver ``settings.rdns_mode`` asks for. Raises ``ConfigError`` when ``ptr`` finds no nameserver."""
    if settings.rdns_mode == "ptr":
        return PtrResolver.from_settings(settings)
    return FakeResolver() if settings.rdns_mode == "fake" else OffResolver()

"""Real reverse DNS: PTR queries through dnspython's asyncio resolver, concurrent, cached and time-bounded.

``PtrResolver.resolve`` is called from Dramatiq worker threads with the distinct hosts of one batch. Hosts that
are not IP addresses get ``None`` (names are not PTR-resolved, nor addresses with a scope id: see
``etl.rdns.hosts``). The cache answers what it can; the misses are
handed to one event loop thread per process, which runs them all at once, and the calling thread waits at most
the batch budget. What is not answered by then gets ``None`` and is counted in
``etl_rdns_budget_exhausted_total``: DNS never holds a batch up longer than the budget, and a DNS failure never
fails a batch.

A lookup outlives the batch that started it, bounded by its own timeout: its answer still lands in the cache for
the next batch, and a later batch asking for the same address joins it instead of querying again. At most
``MAX_CONCURRENT_QUERIES`` queries are on the wire and ``MAX_PENDING_LOOKUPS`` lookups wait or run; an address
beyond that is left unresolved for its batch (and counted the same way).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Iterable, Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from etl.config import Settings
from etl.errors import ConfigError
from etl.rdns.cache import DnsCache, TtlPolicy
from etl.rdns.hosts import ptr_address
from etl.runtime.loopthread import LoopThread
from etl.runtime.metrics import (
    RDNS_BUDGET_EXHAUSTED,
    RDNS_CACHE_BYTES,
    RDNS_CACHE_ENTRIES,
    RDNS_CACHE_REQUESTS,
    RDNS_LOOKUP_SECONDS,
    RDNS_LOOKUPS,
)

log = logging.getLogger(__name__)

MAX_CONCURRENT_QUERIES = 256  # UDP sockets open at once, per process
MAX_PENDING_LOOKUPS = 4096
# The calling thread waits this much past the budget for the loop thread to hand the answers over.
HANDOFF_GRACE_S = 0.05
LOOKUP_RESULTS = ("ok", "nxdomain", "nodata", "servfail", "timeout", "error")


def build_dns_resolver(nameservers: Sequence[tuple[str, int]], timeout_s: float) -> dns.asyncresolver.Resolver:
    """A dnspython resolver asking ``nameservers`` ((address, port) pairs; empty: the system's), where one lookup
    takes at most ``timeout_s`` seconds in all, shared among the servers. Raises ``ConfigError`` when no
    nameserver is given and the system has none configured."""
    try:
        resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    except dns.resolver.NoResolverConfiguration as e:
        raise ConfigError(f"RDNS_MODE=ptr: RDNS_NAMESERVERS is empty and the system has no resolver ({e})") from e
    if nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers]
    resolver.lifetime = timeout_s
    resolver.timeout = timeout_s / max(1, len(resolver.nameservers))
    resolver.cache = None  # ours is in front of it, with the TTL policy and size limit of the settings
    return resolver


def _first_name(answer: dns.resolver.Answer) -> str | None:
    """The PTR target of an answer without its final dot; the smallest when there are several, so that every
    process gives the same one."""
    names = sorted(rdata.target.to_text(omit_final_dot=True) for rdata in answer)
    return names[0] if names and names[0] else None


class PtrResolver:
    """The ``ptr`` strategy of ``etl.rdns.strategies``. Safe to call from many threads; ``close`` ends its loop
    thread."""

    def __init__(self, dns_resolver: dns.asyncresolver.Resolver, cache: DnsCache, *, budget_s: float) -> None:
        self._dns = dns_resolver
        self._cache = cache
        self._budget_s = budget_s
        self._loop = LoopThread("rdns-ptr")
        self._queries = asyncio.Semaphore(MAX_CONCURRENT_QUERIES)
        self._pending: dict[str, asyncio.Task[str | None]] = {}  # touched on the loop thread only

    @classmethod
    def from_settings(cls, settings: Settings) -> PtrResolver:
        """The resolver the ``RDNS_*`` settings describe. Raises ``ConfigError`` as ``build_dns_resolver``."""
        policy = TtlPolicy(settings.rdns_min_ttl_s, settings.rdns_max_ttl_s, settings.rdns_negative_ttl_s)
        dns_resolver = build_dns_resolver(settings.rdns_nameservers, settings.rdns_timeout_ms / 1000)
        cache = DnsCache(settings.rdns_cache_size, policy, max_bytes=settings.rdns_cache_bytes)
        return cls(dns_resolver, cache, budget_s=settings.rdns_batch_budget_ms / 1000)

    def resolve(self, hosts: Iterable[str]) -> dict[str, str | None]:
        """Each host's PTR name, or ``None``: not an IP address that may be resolved (``ptr_address``), no name, a
        failure, or not answered within the budget. Returns within the budget (plus a hand-over margin). Never
        raises for DNS reasons."""
        deadline = time.monotonic() + self._budget_s
        addresses = {host: ptr_address(host) for host in set(hosts)}
        names: dict[str, str | None] = {}
        misses: set[str] = set()
        for address in {a for a in addresses.values() if a is not None}:
            entry = self._cache.get(address)
            if entry is None:
                misses.add(address)
            else:
                names[address] = entry.name
        RDNS_CACHE_REQUESTS.labels(result="hit").inc(len(names))
        RDNS_CACHE_REQUESTS.labels(result="miss").inc(len(misses))
        if misses:
            found = self._lookup(sorted(misses), deadline)
            if len(found) < len(misses):
                RDNS_BUDGET_EXHAUSTED.inc(len(misses) - len(found))
            names.update(found)
        RDNS_CACHE_ENTRIES.set(len(self._cache))
        RDNS_CACHE_BYTES.set(self._cache.size_bytes)
        return {host: names.get(address) if address else None for host, address in addresses.items()}

    def close(self) -> None:
        """Cancel the lookups in flight and stop the loop thread. The resolver cannot be used afterwards."""
        self._loop.close()

    def _lookup(self, addresses: list[str], deadline: float) -> dict[str, str | None]:
        """Answers for ``addresses`` that arrived before ``deadline`` (``time.monotonic`` seconds)."""
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return {}
        future = self._loop.submit(lambda: self._gather(addresses, remaining_s))
        try:
            return future.result(timeout=remaining_s + HANDOFF_GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the lookups themselves go on and fill the cache
            return {}

    async def _gather(self, addresses: list[str], budget_s: float) -> dict[str, str | None]:
        names: dict[str, str | None] = {}
        tasks: dict[str, asyncio.Task[str | None]] = {}
        for address in addresses:
            # The caller missed the cache on its own thread; a lookup of the same address may have filled it and
            # left the in-flight table since. Asking the cache again here, on the loop thread, closes that gap.
            entry = self._cache.get(address)
            if entry is not None:
                names[address] = entry.name
                continue
            task = self._task_for(address)
            if task is not None:
                tasks[address] = task
        if tasks:
            await asyncio.wait(set(tasks.values()), timeout=budget_s)
        names.update({address: task.result() for address, task in tasks.items()
                      if task.done() and not task.cancelled()})
        return names

    def _task_for(self, address: str) -> asyncio.Task[str | None] | None:
        """The lookup of ``address`` in flight, a new one, or ``None`` when too many are pending already."""
        task = self._pending.get(address)
        if task is None and len(self._pending) < MAX_PENDING_LOOKUPS:
            task = asyncio.get_running_loop().create_task(self._lookup_one(address))
            self._pending[address] = task
            task.add_done_callback(lambda _: self._pending.pop(address, None))
        return task

    async def _lookup_one(self, address: str) -> str | None:
        """Query, count, time and cache one address. Never raises (but for cancellation)."""
        async with self._queries:
            started = time.monotonic()
            name, ttl_s, result = await self._query(address)
            RDNS_LOOKUP_SECONDS.observe(time.monotonic() - started)
        RDNS_LOOKUPS.labels(result=result).inc()
        if name is not None and ttl_s is not None:
            self._cache.put_name(address, name, ttl_s)
        else:
            self._cache.put_negative(address)
        return name

    async def _query(self, address: str) -> tuple[str | None, int | None, str]:
        """(name, record TTL in seconds, result label) of one PTR query."""
        try:
            answer = await self._dns.resolve_address(address)
        except dns.resolver.NXDOMAIN:
            return None, None, "nxdomain"
        except dns.resolver.NoAnswer:
            return None, None, "nodata"
        except dns.resolver.NoNameservers:  # SERVFAIL (or refused) from every nameserver
            return None, None, "servfail"
        except dns.exception.Timeout:
            return None, None, "timeout"
        except Exception as e:  # a malformed answer, a socket error: one null name, not a failed batch
            log.debug("PTR lookup of %s failed: %s: %s", address, type(e).__name__, e)
            return None, None, "error"
        name = _first_name(answer)
        if name is None or answer.rrset is None:
            return None, None, "nodata"
        return name, answer.rrset.ttl, "ok"

"""A bounded cache of reverse-DNS answers, shared by every thread of a process. Pure: the clock is passed in.

Positive answers are kept for the record's TTL clamped to ``[min_ttl_s, max_ttl_s]``; negative ones (no name:
NXDOMAIN, no PTR record, SERVFAIL, a timeout) for ``negative_ttl_s``. The cache is bounded in entries and in
bytes (an estimate: the sizes of the address and name strings plus a fixed overhead per entry); past either bound
the least recently used entries go first. Expired entries are dropped when met.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# The Entry object, its float and the dict slot that holds it, beside the two strings counted by their own size.
ENTRY_OVERHEAD_BYTES = 200


@dataclass(frozen=True)
class TtlPolicy:
    """How long answers are kept, in seconds."""

    min_ttl_s: float
    max_ttl_s: float
    negative_ttl_s: float

    def positive(self, record_ttl_s: float) -> float:
        """The record's TTL clamped to ``[min_ttl_s, max_ttl_s]``."""
        return min(max(record_ttl_s, self.min_ttl_s), self.max_ttl_s)


@dataclass(frozen=True)
class Entry:
    name: str | None
    expires_at: float


def entry_bytes(address: str, name: str | None) -> int:
    """The bytes one entry is counted for: its strings' sizes in memory plus ``ENTRY_OVERHEAD_BYTES``."""
    return sys.getsizeof(address) + (sys.getsizeof(name) if name is not None else 0) + ENTRY_OVERHEAD_BYTES


class DnsCache:
    """Address -> name (or ``None`` for a negative answer), at most ``max_entries`` of them and ``max_bytes`` in
    all (as ``entry_bytes`` counts them). Thread-safe.

    ``clock`` returns seconds on a monotonic scale (``time.monotonic`` unless a test passes its own).
    """

    def __init__(self, max_entries: int, policy: TtlPolicy, *, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries <= 0 or max_bytes <= 0:
            raise ValueError(f"max_entries and max_bytes must be positive, got {max_entries} and {max_bytes}")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._policy = policy
        self._clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, address: str) -> Entry | None:
        """The live entry for ``address``, or ``None`` when there is none (or it expired)."""
        with self._lock:
            entry = self._entries.get(address)
            if entry is None:
                return None
            if entry.expires_at <= self._clock():
                self._drop(address)
                return None
            self._entries.move_to_end(address)
            return entry

    def put_name(self, address: str, name: str, record_ttl_s: float) -> None:
        """Keep a positive answer for its TTL, clamped by the policy."""
        self._put(address, name, self._policy.positive(record_ttl_s))

    def put_negative(self, address: str) -> None:
        """Keep a negative answer (no name, or no usable answer) for the policy's negative TTL."""
        self._put(address, None, self._policy.negative_ttl_s)

    def _put(self, address: str, name: str | None, ttl_s: float) -> None:
        size = entry_bytes(address, name)
        with self._lock:
            self._drop(address)
            if ttl_s <= 0 or size > self._max_bytes:
                return  # nothing to keep, or an entry that would push out the whole cache on its own
            self._entries[address] = Entry(name, self._clock() + ttl_s)
            self._bytes += size
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, address: str) -> None:
        """Remove ``address``'s entry, if any, and its bytes. The caller holds the lock."""
        entry = self._entries.pop(address, None)
        if entry is not None:
            self._bytes -= entry_bytes(address, entry.name)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The bytes the entries are counted for, at most ``max_bytes``."""
        with self._lock:
            return self._bytes

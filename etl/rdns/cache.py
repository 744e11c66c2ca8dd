"""A bounded cache of reverse-DNS answers, shared by every thread of a process. Pure: the clock is passed in.

Positive answers are kept for the record's TTL clamped to ``[min_ttl_s, max_ttl_s]``; negative ones (no name:
NXDOMAIN, no PTR record, SERVFAIL, a timeout) for ``negative_ttl_s``. When full, the least recently used entry
goes first. Expired entries are dropped when met.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


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


class DnsCache:
    """Address -> name (or ``None`` for a negative answer), at most ``max_entries`` of them. Thread-safe.

    ``clock`` returns seconds on a monotonic scale (``time.monotonic`` unless a test passes its own).
    """

    def __init__(self, max_entries: int, policy: TtlPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self._max_entries = max_entries
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
                del self._entries[address]
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
        if ttl_s <= 0:
            with self._lock:
                self._entries.pop(address, None)
            return
        with self._lock:
            self._entries[address] = Entry(name, self._clock() + ttl_s)
            self._entries.move_to_end(address)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

"""Group commit: the batches a bridge replica has taken from NATS and not yet settled, and the ones of them that
wait for Redis's disk.

A batch is held from the moment it is handed over until it is acked (or nak'ed). Once enqueued it waits in
``committing`` for the next durability check (``WAITAOF``, see ``etl.broker.AofSync``): one check covers every batch
enqueued before it started, so with ``appendfsync everysec`` a second's worth of batches shares one fsync instead
of waiting a second each. What the replica holds is bounded in events and in bytes (``BRIDGE_MAX_UNACKED``,
``BRIDGE_MAX_UNACKED_BYTES``): at the bound it takes no new batch until the next check settles some.

Asyncio only: every method runs on the bridge's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar


class Message(Protocol):
    @property
    def data(self) -> bytes: ...


M = TypeVar("M", bound=Message)


class AckWindow(Generic[M]):
    """What one replica holds un-acked, and the enqueued batches waiting for their durability check."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        # Every batch held, by identity: what must be kept from redelivery while the bridge pauses.
        self._held: dict[int, Sequence[M]] = {}
        self._committing: list[Sequence[M]] = []
        self._changed = asyncio.Event()

    @property
    def full(self) -> bool:
        """At the bound: no new batch until some are settled. Always room for one when nothing is held."""
        return self.events > 0 and (self.events >= self._max_events or self.bytes >= self._max_bytes)

    def hold(self, batch: Sequence[M]) -> None:
        """Count ``batch`` as held, from its hand-over on."""
        self._held[id(batch)] = batch
        self.events += len(batch)
        self.bytes += sum(len(m.data) for m in batch)

    def release(self, batch: Sequence[M]) -> None:
        """``batch`` is settled (acked or nak'ed): no longer held."""
        del self._held[id(batch)]
        self.events -= len(batch)
        self.bytes -= sum(len(m.data) for m in batch)
        self._wake()

    def held(self) -> list[M]:
        """Every message held: being handed over, waiting for a durability check, or being checked."""
        return [m for batch in self._held.values() for m in batch]

    def enqueued(self, batch: Sequence[M]) -> None:
        """``batch`` is in Redis: it waits for the next durability check."""
        self._committing.append(batch)
        self._wake()

    async def wait_for_room(self, stopping: asyncio.Event) -> None:
        """Return once a new batch may be taken, or when ``stopping`` is set."""
        while self.full and not stopping.is_set():
            await self._changed_or(stopping)

    async def next_group(self) -> list[Sequence[M]]:
        """Every enqueued batch not checked yet (at least one): the batches the next check covers."""
        while not self._committing:
            await self._changed_or(None)
        group, self._committing = self._committing, []
        return group

    async def drained(self) -> None:
        """Return once nothing is held."""
        while self.events:
            await self._changed_or(None)

    def _wake(self) -> None:
        self._changed.set()

    async def _changed_or(self, stopping: asyncio.Event | None) -> None:
        self._changed.clear()
        waits = [asyncio.ensure_future(self._changed.wait())]
        if stopping is not None:
            waits.append(asyncio.ensure_future(stopping.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

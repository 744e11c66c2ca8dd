"""Collecting one batch from the shared consumer: it closes at ``max_batch_size`` messages, at about
``max_batch_bytes``, or ``batch_linger_ms`` after its first message, whichever comes first. Durations are seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg

from etl.config import Settings
from etl.natsio import conn
from etl.natsio.pull import ConsumerGone, PullFetcher
from etl.pipeline.rawstream import Sleep

log = logging.getLogger(__name__)

# How long one idle fetch waits for a first message; bounds how soon stop() is noticed when idle.
DEFAULT_IDLE_FETCH_S = 0.5
# Shorter fetches than this are not worth a request (nats-py also needs expires > 0.1 ms).
MIN_FETCH_S = 0.002
# After a failed fetch or bind (server gone, consumer deleted), wait this long before trying again.
RETRY_FETCH_S = 1.0


def room(max_count: int, max_bytes: int, count: int, size: int) -> int:
    """How many more messages a batch of ``count`` messages and ``size`` bytes takes: by count, and by bytes at
    the average size so far. ``count`` must be at least 1."""
    by_count = max_count - count
    by_bytes = (max_bytes - size) // max(1, size // count)
    return min(by_count, by_bytes)


class Collector:
    """Takes batches from ``fetcher`` (set once bound); notes in ``consumer_lost`` that it must be bound again."""

    def __init__(self, settings: Settings, stopping: asyncio.Event, sleep: Sleep, *,
                 idle_fetch_s: float = DEFAULT_IDLE_FETCH_S) -> None:
        self._settings = settings
        self._stopping = stopping
        self._sleep = sleep
        self._idle_fetch_s = idle_fetch_s
        self._linger_s = settings.batch_linger_ms / 1000
        self.fetcher: PullFetcher | None = None
        self.consumer_lost = False

    async def collect(self) -> list[Msg]:
        """Up to ``max_batch_size`` messages, closed ``batch_linger_ms`` after the first, or once one more message of
        the batch's average size would take it past ``max_batch_bytes`` (so it passes that by at most the size of
        its last message); ``[]`` when idle."""
        fetcher = self.fetcher
        if fetcher is None:
            return []
        batch: list[Msg] = []
        size = 0
        deadline: float | None = None
        while not self.consumer_lost:
            if deadline is None:
                if self._stopping.is_set():
                    break
                # Wait for one message only: a larger fetch would wait its whole timeout for the rest.
                want, timeout = 1, self._idle_fetch_s
            else:
                s = self._settings
                want, timeout = room(s.max_batch_size, s.max_batch_bytes, len(batch), size), deadline - time.monotonic()
                if want < 1 or timeout < MIN_FETCH_S:
                    break
            fetched = await self._fetch(fetcher, want, timeout)
            batch += fetched
            size += sum(len(m.data) for m in fetched)
            if deadline is None and batch:
                deadline = time.monotonic() + self._linger_s
        return batch

    async def _fetch(self, fetcher: PullFetcher, want: int, timeout_s: float) -> list[Msg]:
        try:
            return await fetcher.fetch(want, timeout_s)  # [] when nothing arrived in time: normal when idle
        except ConsumerGone as e:
            # Re-binding re-creates a deleted consumer, and is harmless when JetStream was briefly unavailable.
            log.warning("bridge fetch refused, will re-bind its consumer: %s", e)
            self.consumer_lost = True
        except conn.UNAVAILABLE_ERRORS as e:
            log.warning("bridge fetch failed: %s", conn.describe(e))
        await self._sleep(RETRY_FETCH_S)
        return []

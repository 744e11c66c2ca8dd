"""The sample-event generator of the local default, publishing from a thread of its own so progress keeps showing.

Events come from ``etl.dev.corpus``, in the producers' shape by default; a few are malformed on purpose, so the
dead-letter queue has something in it, and the producers' shape repeats a few, as a producer's retry does. Each is
published to the raw subject through JetStream, and counted once JetStream acknowledged it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

from etl.config import Settings
from etl.dev.corpus import PRODUCERS, default_duplicate_every, duplicates_in, generate
from etl.dev.progress import Sent

MALFORMED_EVERY = 200  # one malformed event in this many (or one in ``count``, for fewer events)
CHUNK = 500  # publishes awaited together
TICK_S = 0.05  # how often a rate-limited generator checks what is due
STOP_TIMEOUT_S = 10.0


def malformed_every(count: int) -> int:
    """One malformed event in ``MALFORMED_EVERY``, and at least one whenever ``count`` >= 2."""
    return min(MALFORMED_EVERY, count) if count >= 2 else 0


def sample_events(count: int, hosts: int, shape: str = PRODUCERS) -> Iterator[bytes]:
    """``count`` raw events of ``shape`` from ``hosts`` hosts. The seed and the ids follow the start time, so each
    run adds new events."""
    now_ms = int(time.time() * 1000)
    return generate(count, shape=shape, hosts=hosts, seed=now_ms, base_ms=now_ms,
                    malformed_every=malformed_every(count))


class Generator:
    """Publishes ``count`` sample events of ``shape`` at ``rate`` per second (0: as fast as JetStream
    acknowledges)."""

    def __init__(self, settings: Settings, *, count: int, hosts: int, rate: float, shape: str = PRODUCERS) -> None:
        self._settings, self._count, self._hosts, self._rate, self._shape = settings, count, hosts, rate, shape
        self._every = malformed_every(count)
        self._duplicate_every = default_duplicate_every(shape)
        self._stop = threading.Event()
        self._sent = 0
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="etl-dev-generator", daemon=True)

    def start(self) -> Generator:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop publishing; waits up to ``timeout_s`` for the publishes in flight to be acknowledged."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def progress(self) -> Sent:
        sent = self._sent
        return Sent(sent=sent, malformed=sent // self._every if self._every else 0, total=self._count,
                    duplicates=duplicates_in(sent, self._duplicate_every, self._every),
                    finished=self._thread.ident is not None and not self._thread.is_alive(), error=self._error)

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except Exception as e:  # noqa: BLE001 - shown in the progress; the stack keeps running
            self._error = f"{type(e).__name__}: {e}".splitlines()[0]

    async def _publish(self) -> None:
        from etl.natsio.conn import close, connect
        from etl.pipeline.rawstream import ensure_raw_stream

        events = sample_events(self._count, self._hosts, self._shape)
        nc = await connect(self._settings, name="etl-dev-generator")
        try:
            js = nc.jetstream()
            await ensure_raw_stream(js, self._settings)
            subject, start = self._settings.nats_subject_raw, time.monotonic()
            while not self._stop.is_set():
                chunk = list(itertools.islice(events, self._due(time.monotonic() - start)))
                if not chunk and self._sent >= self._count:
                    return
                if not chunk:
                    await asyncio.sleep(TICK_S)
                    continue
                await asyncio.gather(*(js.publish(subject, data) for data in chunk))
                self._sent += len(chunk)
        finally:
            await close(nc)

    def _due(self, elapsed_s: float) -> int:
        """How many events to publish now to keep to the rate (at most ``CHUNK``)."""
        if self._rate <= 0:
            return CHUNK
        return max(0, min(CHUNK, int(self._rate * elapsed_s) + 1 - self._sent))

"""The seed-style baseline: the one-event-at-a-time service this pipeline replaced, in outline.

One process, no Redis and no batches: it takes events from ``events.raw`` (JetStream, ``IN_FLIGHT`` per fetch),
and each on a thread of its own validates and enriches it and writes it alone to PostgreSQL, to the graph and to
``events.enriched``; it acks them once they are all written, then takes the next ones. Each write waits for its
server's fsync, so events in flight are what lets one fsync cover several, as the original's hundred events in
flight did. It runs this project's contract, enrichment and sinks, so its output is the pipeline's and the
benchmark counts it the same way; what differs is the shape: one process, each event written alone. (The original
wrote to the graph only for network events, and published on core NATS without an ack: its figure is not this
one.) A bad event is logged and acked, as there is no dead-letter queue here. Run as::

    python -m bench.seed_style
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from etl.config import Settings
from etl.dev.servers import signal_when_parent_dies
from etl.dev.supervisor import Pipeline
from etl.pipeline.bridge import Bridge, run_until_signalled
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.validate import validate_batch
from etl.rdns.strategies import resolver_for
from etl.sinks.base import Sink
from etl.stages import SINK_STAGES

PROCESS = "seed-style-0"
IN_FLIGHT = 64  # the original allowed 100; a PostgreSQL connection per thread here, of its default 100
log = logging.getLogger("bench.seed_style")


class OneAtATime:
    """The hand-off of the service: each event of what the fetcher gives (up to ``IN_FLIGHT``) through every sink
    alone, each event on a thread of its own; the caller acks once it returns."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._resolver = resolver_for(settings)
        self._sinks: list[Sink] = [stage.sink(settings) for stage in SINK_STAGES]
        for sink in self._sinks:
            sink.open()
        self._threads = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="seed-style")

    def __call__(self, batch: list[bytes]) -> None:
        list(self._threads.map(self._one, batch))  # raises the first error: the caller naks the batch

    def _one(self, raw: bytes) -> None:
        valid, bad = validate_batch([raw], max_bytes=self._settings.max_event_bytes)
        for letter in bad:
            log.warning("bad event dropped: %s", letter)
        events = enrich_batch([v.event for v in valid], env=self._settings.af_env, resolver=self._resolver,
                              now=datetime.now(UTC))
        for sink in self._sinks:
            sink.write(events)

    def close(self) -> None:
        self._threads.shutdown()
        for sink in self._sinks:
            sink.close()


class SeedStylePipeline(Pipeline):
    """``etl.dev.supervisor.Pipeline`` running this module's one process instead of the bridge and the pools."""

    def start(self) -> Pipeline:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "MAX_BATCH_SIZE": str(IN_FLIGHT),
               "PG_POOL_SIZE": str(IN_FLIGHT + 1)}
        with open(Path(self.log_dir) / f"{PROCESS}.log", "ab") as out:
            self.procs[PROCESS] = subprocess.Popen([sys.executable, "-m", "bench.seed_style"], env=env, stdout=out,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   start_new_session=True,
                                                   preexec_fn=signal_when_parent_dies(signal.SIGTERM))
        return self


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env(os.environ)
    service = OneAtATime(settings)
    try:
        run_until_signalled(Bridge(settings, service, ack_wait_s=settings.nats_ack_wait_s, name="etl-seed-style"))
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

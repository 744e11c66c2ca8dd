"""A feed replaced under load, through the real pipeline (bridge, enrich and publish pools between real NATS and
Redis): events flow all along; once the new feed has taken effect every event matches it, and every event sent
arrives enriched, none lost, none doubled, none without a match."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from etl.config import Settings
from etl.dev.supervisor import Pipeline
from etl.natsio.conn import connect
from etl.pipeline.rawstream import ensure_raw_stream
from tests.integration.accounting import id_diff
from tests.producers import VISIBILITY_ARGS, visibility_event
from tests.waiting import wait_for

BAD_PEER = VISIBILITY_ARGS["dst_ip"]  # every event's destination: the indicator both feeds list
FIRST_PADDING = int(ipaddress.IPv4Address("100.64.0.0"))
CHUNK = 10
PACE_S = 0.05  # a chunk every 50 ms: a steady flow, well within what one enrich process takes
AFTER = 200  # events sent once the new feed has taken effect
# Indicators no event matches, so that a load takes long enough for batches to be enriched during it.
PADDING = 50_000


def feed(source: str) -> str:
    padding = "".join(f"ip,{ipaddress.IPv4Address(FIRST_PADDING + i)},{source},low\n" for i in range(PADDING))
    return f"type,value,source,severity\n{padding}ip,{BAD_PEER},{source},high\n"


def replace(path: Path, text: str) -> None:
    """Write beside, rename over: how a feed is updated."""
    beside = path.with_name(f".{path.name}.new")
    beside.write_text(text)
    os.replace(beside, path)


class Producer(threading.Thread):
    """Publishes events to the raw subject, ``CHUNK`` at a time every ``PACE_S``, until stopped; ``sent`` holds
    each event's id and the monotonic time its publish began."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="producer", daemon=True)
        self.settings = settings
        self.sent: list[tuple[str, float]] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    async def _publish(self) -> None:
        nc = await connect(self.settings, name="test-producer")
        try:
            js = nc.jetstream()
            await ensure_raw_stream(js, self.settings)
            while not self.stopping.is_set():
                ids = [f"ev-{len(self.sent) + i}" for i in range(CHUNK)]
                began = time.monotonic()
                await asyncio.gather(*(js.publish(self.settings.nats_subject_raw,
                                                  orjson.dumps(visibility_event(i))) for i in ids))
                self.sent += [(i, began) for i in ids]
                await asyncio.to_thread(self.stopping.wait, PACE_S)
        finally:
            await nc.close()

    def sent_after(self, moment: float) -> list[str]:
        return [i for i, began in self.sent if began > moment]


class EnrichedReader:
    """Reads the enriched stream through one durable consumer, each read taking what arrived since the last, up to
    what the stream holds then (events keep flowing: a read that waited for the stream to go quiet would not end).
    ``ids``: every event's id, as read; ``sources``: each event by id, with the sources of its matches of
    ``BAD_PEER`` (an id read twice: both)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ids: list[str] = []
        self.sources: dict[str, list[str]] = {}

    def read(self) -> dict[str, list[str]]:
        try:
            asyncio.run(self._read())
        except NotFoundError:  # the publish pool creates the stream with its first batch
            pass
        return self.sources

    async def _read(self) -> None:
        nc = await connect(self.settings, name="test-reader")
        try:
            sub = await nc.jetstream().pull_subscribe(self.settings.nats_subject_enriched, durable="test-reader",
                                                      stream=self.settings.nats_enriched_stream)
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=0.5)
                except TimeoutError:
                    return
                for msg in msgs:
                    event = orjson.loads(msg.data)
                    self.ids.append(event["id"])
                    self.sources.setdefault(event["id"], []).extend(
                        m["source"] for m in event["intel"] if m["value"] == BAD_PEER)
                    await msg.ack()
                if msgs[-1].metadata.num_pending == 0:
                    return
        finally:
            await nc.close()

    def matched(self, source: str) -> bool:
        return any(source in sources for sources in self.read().values())


def worker_metric(pipeline: Pipeline, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{pipeline.ports['worker-enrich']}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_feed_replaced_under_load_takes_effect_and_no_event_is_lost(
        tmp_path: Path, make_settings: Callable[..., Settings], start_pipeline: Callable[..., Pipeline]) -> None:
    path = tmp_path / "feeds" / "bad.csv"
    path.parent.mkdir()
    path.write_text(feed("feed-v1"))
    # Only enrich and publish run: the other sinks' queues fill, so the bridge must not pause on them.
    settings = make_settings(INTEL_PATHS=str(path.parent), LOOKUP_RELOAD_S=1, MAX_BATCH_SIZE=20, BATCH_LINGER_MS=20,
                             MAX_QUEUE_DEPTH=100_000)
    pipeline = start_pipeline(settings, pools=("enrich", "publish"))
    producer, reader = Producer(settings), EnrichedReader(settings)
    producer.start()
    try:
        wait_for(lambda: reader.matched("feed-v1"), timeout_s=60,
                 describe=lambda: f"no event matched the first feed; alive={pipeline.alive()} {producer.error}")
        replace(path, feed("feed-v2"))
        replaced = time.monotonic()
        wait_for(lambda: reader.matched("feed-v2"), timeout_s=30,
                 describe=lambda: f"the new feed never took effect; alive={pipeline.alive()} {producer.error}")
        effect = time.monotonic()
        wait_for(lambda: len(producer.sent_after(effect)) >= AFTER or producer.error, timeout_s=60)
    finally:
        producer.stopping.set()
        producer.join(30)
    assert producer.error is None, producer.error
    sent = [i for i, _ in producer.sent]
    print(f"sent {len(sent)}, {len(producer.sent_after(effect))} after the new feed took effect, "
          f"{effect - replaced:.1f}s after it was renamed into place")

    wait_for(lambda: len(reader.read()) >= len(sent), timeout_s=90, describe=lambda: id_diff(reader.ids, sent))
    found = reader.read()
    assert Counter(reader.ids) == Counter(sent), id_diff(reader.ids, sent)
    unmatched = [i for i, sources in found.items() if len(sources) != 1]
    assert not unmatched, f"each event is enriched once, with one match: {len(unmatched)} not {unmatched[:5]}"
    after = producer.sent_after(effect)
    stale = [i for i in after if found[i] != ["feed-v2"]]
    assert not stale, f"{len(stale)} of {len(after)} events sent after the new feed took effect: {stale[:5]}"
    assert Counter(s for sources in found.values() for s in sources).keys() == {"feed-v1", "feed-v2"}
    assert worker_metric(pipeline, "etl_intel_matches_total", source="feed-v2", type="ip") >= len(after)
    assert worker_metric(pipeline, "etl_lookup_entries", table="intel") == PADDING + 1
    assert worker_metric(pipeline, "etl_lookup_reload_failures_total", table="intel") == 0

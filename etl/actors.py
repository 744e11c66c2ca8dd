"""The Dramatiq actors: thin wrappers that decode a batch, call pure code and hand the result to a sink.

``dramatiq etl.actors --queues <pool>`` runs one pool. Dramatiq's CLI imports this module and expects the
broker to be set by the import, so the wiring happens here, once, from the environment.
"""

# ruff: noqa: E402 - the metrics directory must be set before the imports below load prometheus_client.
from __future__ import annotations

from etl.runtime import workerenv

workerenv.prepare()

import logging
from datetime import datetime, timezone
from typing import Any

import dramatiq
import orjson

from etl.app import App, load_app
from etl.broker import QUEUE_ENRICH, QUEUE_GRAPH, QUEUE_PUBLISH, QUEUE_TIMESCALE, AofSync
from etl.pipeline import rawbatch
from etl.pipeline.enrich import enrich_batch as enrich_events
from etl.pipeline.isolation import write_or_split
from etl.pipeline.validate import validate_batch
from etl.runtime import gctune
from etl.runtime.metrics import BATCH_SIZE, EVENTS, WRITE_SECONDS

log = logging.getLogger(__name__)
Event = dict[str, Any]

app: App = load_app()
gctune.tune()


@dramatiq.actor(queue_name=QUEUE_ENRICH, actor_name="enrich_batch")
def enrich_batch(raw: list[str], binary: list[int] | None = None) -> None:
    """Validate and enrich one batch from the bridge, dead-letter bad events, fan out to the sink queues."""
    good, bad = validate_batch(rawbatch.unpack(raw, binary or ()), max_bytes=app.settings.max_event_bytes)
    BATCH_SIZE.labels(stage=QUEUE_ENRICH).observe(len(raw))
    app.dead_letters().add(bad)
    if not good:
        return
    enriched = enrich_events(good, env=app.settings.af_env, resolver=app.resolver,
                             now=datetime.now(timezone.utc))
    encoded = orjson.Fragment(orjson.dumps(enriched))  # JSON once for the three messages, not once each
    for actor in (publish_batch, store_batch, merge_batch):
        actor.send(encoded)
    EVENTS.labels(stage=QUEUE_ENRICH).inc(len(enriched))


def _deliver(actor: dramatiq.Actor[Any, Any], sink_name: str, events: list[Event]) -> None:
    """Write ``events`` to a sink, isolating poison events (see ``etl.pipeline.isolation``)."""
    sink = app.sinks.get(sink_name)
    with WRITE_SECONDS.labels(sink=sink_name).time():
        written = write_or_split(sink, events, actor.send)
    if written:
        BATCH_SIZE.labels(stage=sink_name).observe(len(events))
        EVENTS.labels(stage=sink_name).inc(len(events))


@dramatiq.actor(queue_name=QUEUE_PUBLISH, actor_name="publish_batch")
def publish_batch(events: list[Event]) -> None:
    """Publish enriched events to the enriched subject."""
    _deliver(publish_batch, "publish", events)


@dramatiq.actor(queue_name=QUEUE_TIMESCALE, actor_name="store_batch")
def store_batch(events: list[Event]) -> None:
    """Insert enriched events into TimescaleDB."""
    _deliver(store_batch, "timescale", events)


@dramatiq.actor(queue_name=QUEUE_GRAPH, actor_name="merge_batch")
def merge_batch(events: list[Event]) -> None:
    """Merge enriched events into the graph."""
    _deliver(merge_batch, "graph", events)


_aof = AofSync(app.broker.client, enabled=app.settings.redis_wait_aof, replicas=app.settings.redis_wait_replicas)


def enqueue_raw(batch: list[bytes]) -> None:
    """The bridge's hand-off: one Dramatiq message for a whole batch of raw NATS payloads, on disk in Redis
    before this returns (so the bridge may ack NATS). Raises on any Redis failure; the bridge then naks."""
    texts, binary = rawbatch.pack(batch)
    enrich_batch.send(texts, binary)
    _aof.wait()


def send_to_stage(stage: str, payloads: list[Any]) -> None:
    """Enqueue a batch for ``stage`` again (dead-letter replay): raw bytes for enrich, events for a sink."""
    if stage == QUEUE_ENRICH:
        enqueue_raw(payloads)
        return
    {QUEUE_PUBLISH: publish_batch, QUEUE_TIMESCALE: store_batch, QUEUE_GRAPH: merge_batch}[stage].send(payloads)

"""The Dramatiq actors: thin wrappers that decode a batch, call pure code and hand the result to a sink.

``dramatiq etl.actors --queues <pool>`` runs one pool. Dramatiq's CLI imports this module and expects the
broker to be set by the import, so the wiring happens here, once, from the environment. One actor per stage of
``etl.stages``: ``enrich_batch`` for the bridge's raw batches, then one per sink stage, to which it fans out.
"""

# ruff: noqa: E402 - the metrics directory must be set before the imports below load prometheus_client.
from __future__ import annotations

from etl.runtime import workerenv

workerenv.prepare()

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import dramatiq

from etl.app import App, load_app
from etl.pipeline import rawbatch
from etl.pipeline.enrich import enrich_batch as enrich_events
from etl.pipeline.isolation import write_or_split
from etl.pipeline.limits import DEFAULT_NATS_MAX_PAYLOAD_BYTES
from etl.pipeline.validate import Encoded, as_message, encode_enriched, validate_batch
from etl.runtime import gctune
from etl.runtime.metrics import BATCH_SIZE, EVENTS, INTEL_MATCHES, WRITE_SECONDS
from etl.stages import ENRICH, SINK_STAGES, Stage

log = logging.getLogger(__name__)
Event = dict[str, Any]

app: App = load_app()
gctune.tune()


@dramatiq.actor(queue_name=ENRICH.queue, actor_name=ENRICH.actor)
def enrich_batch(raw: list[str], binary: list[int] | None = None, max_payload: int | None = None) -> None:
    """Validate and enrich one batch from the bridge, dead-letter bad events, fan out to the sink stages.

    ``max_payload`` is the NATS server's, as the bridge read it from the server's INFO; a batch without it
    (enqueued by ``etl dlq replay``, or before an upgrade) is held to NATS's default."""
    valid, bad = validate_batch(rawbatch.unpack(raw, binary or ()), max_bytes=app.settings.max_event_bytes)
    BATCH_SIZE.labels(stage=ENRICH.name).observe(len(raw))
    sent = Encoded([], [], [])
    if valid:
        enriched = enrich_events([v.event for v in valid], env=app.settings.af_env, resolver=app.resolver,
                                 now=datetime.now(UTC), tables=app.lookups.current())
        sent = encode_enriched(enriched, [v.raw for v in valid],
                               max_payload=max_payload or DEFAULT_NATS_MAX_PAYLOAD_BYTES)
        bad += sent.oversized
    app.dead_letters().add(bad)
    if not sent.encoded:
        return
    message = as_message(sent.encoded)  # JSON once for every sink's message, not once each
    for actor in SINK_ACTORS.values():
        actor.send(message)
    # Once sent: a batch that fails before (and is retried) counts nothing, and dead-lettered events never count.
    EVENTS.labels(stage=ENRICH.name).inc(len(sent.encoded))
    _count_matches(sent.events)


def _count_matches(enriched: Sequence[Event]) -> None:
    """``etl_intel_matches_total``: each match of each event's ``intel``, one increment per label pair."""
    counts = Counter((match["source"], match["type"]) for event in enriched for match in event["intel"])
    for (source, kind), count in counts.items():
        INTEL_MATCHES.labels(source=source, type=kind).inc(count)


def _sink_actor(stage: Stage) -> dramatiq.Actor[Any, Any]:
    """The actor of a sink stage: writes each batch to the stage's sink, isolating poison events (see
    ``etl.pipeline.isolation``), whose halves go back to the same actor."""

    def deliver(events: list[Event]) -> None:
        sink = app.sinks.get(stage.name)
        with WRITE_SECONDS.labels(sink=stage.name).time():
            written = write_or_split(sink, events, actor.send, stage=stage.name)
        if written:
            BATCH_SIZE.labels(stage=stage.name).observe(len(events))
            EVENTS.labels(stage=stage.name).inc(len(events))

    deliver.__doc__ = f"Write a batch of enriched events to the {stage.name} sink."
    actor = dramatiq.actor(queue_name=stage.queue, actor_name=stage.actor)(deliver)
    return actor


SINK_ACTORS: dict[str, dramatiq.Actor[Any, Any]] = {stage.name: _sink_actor(stage) for stage in SINK_STAGES}

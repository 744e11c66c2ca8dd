"""Pure enrichment: validated events in, enriched events out. No I/O and no clock: the caller passes ``now``.

The correlator reads an event's context from a ``context`` object (its rules match its keys, and it reads
``context.tags`` as a string). The ingest's gRPC sender flattens the agent's context into metadata as
``context_<key>``, so enrichment rebuilds the object: the agent's own ``context`` object if it sent one, every
``metadata.context_<key>`` as ``<key>`` (the value as sent), then ``env``, ``rdns``, ``dst_rdns`` and
``intel_match``; on a clash the later wins.

Lookup context (``intel``, ``src_asset``, ``dst_asset``, ``dst_geo``) comes from the ``LookupTables`` snapshot the
caller passes, one for the whole batch (``etl.lookups.context``); when ``intel`` was capped,
``metadata.intel_omitted`` says how many matches it left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from etl.lookups.context import LookupFields, lookup_fields
from etl.lookups.tables import EMPTY, LookupTables
from etl.pipeline.peers import destination_of
from etl.rdns.hosts import bounded_host
from etl.rdns.strategies import Resolver

Event = dict[str, Any]

# Bump whenever what enrichment adds, or how, changes: stored events say which logic produced them.
ENRICHMENT_VERSION = "6"
# The metadata key of how many matches an event's ``intel`` left out (``etl.lookups.context.MAX_INTEL_MATCHES``).
INTEL_OMITTED = "intel_omitted"
# Metadata keys ``context_<key>`` are the agent's context, flattened by the ingest's gRPC sender.
CONTEXT_PREFIX = "context_"


def host_of(event: Event) -> str | None:
    """The event's host for reverse DNS: ``metadata.host_ip``, else ``hostname``, else ``host_id``. A value
    longer than a host name can be (``etl.rdns.hosts``) is not a host: the next key is tried."""
    metadata = event["metadata"]
    for key in ("host_ip", "hostname", "host_id"):
        value = metadata.get(key)
        if value is not None:
            host = bounded_host(value if isinstance(value, str) else str(value))
            if host is not None:
                return host
    return None


def peer_of(destination: str | None) -> str | None:
    """The event's destination (``etl.pipeline.peers.destination_of``) for reverse DNS, when it could be a host."""
    return None if destination is None else bounded_host(destination)


def format_time(now: datetime) -> str:
    """ISO-8601 UTC with milliseconds, e.g. ``2024-01-01T12:00:00.123Z``. ``now`` must be timezone-aware."""
    utc = now.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def enrich(event: Event, *, env: str, rdns: str | None, enriched_at: str, lookups: LookupFields,
           dst_rdns: str | None = None) -> Event:
    """A new event: every field of ``event`` plus ``env``, ``rdns``, ``dst_rdns``, the four ``lookups`` fields, the
    enrichment metadata, a top-level ``host_id`` (``metadata.host_id`` as a string, ``None`` when absent or
    empty; the correlator reads it there) and ``context`` (see the module's docstring). These replace fields of
    the same name in ``event``; ``event`` and its dicts are not changed."""
    metadata = event["metadata"]
    host_id = metadata.get("host_id")
    incoming = event.get("context")
    context: dict[str, Any] = dict(incoming) if incoming else {}
    for key, value in metadata.items():  # one pass: this runs for every event
        if key.startswith(CONTEXT_PREFIX):
            context[key[len(CONTEXT_PREFIX):]] = value
    context["env"] = env
    context["rdns"] = rdns
    context["dst_rdns"] = dst_rdns
    context["intel_match"] = bool(lookups.intel)
    out = dict(event)
    out["env"] = env
    out["rdns"] = rdns
    out["dst_rdns"] = dst_rdns
    out["host_id"] = None if host_id is None or host_id == "" else str(host_id)
    out["context"] = context
    out["intel"], out["src_asset"], out["dst_asset"], out["dst_geo"], omitted = lookups
    out["metadata"] = enriched_metadata = {**metadata, "enriched_at": enriched_at,
                                           "enrichment_version": ENRICHMENT_VERSION}
    # In the metadata, which TimescaleDB stores whole: an analyst sees that ``intel`` is not every match. The key
    # is enrichment's, as ``enriched_at`` is: an agent's own is dropped rather than read as ours.
    if omitted:
        enriched_metadata[INTEL_OMITTED] = omitted
    else:
        enriched_metadata.pop(INTEL_OMITTED, None)
    return out


def enrich_batch(events: Sequence[Event], *, env: str, resolver: Resolver, now: datetime,
                 tables: LookupTables = EMPTY) -> list[Event]:
    """Enrich a batch with one ``resolver.resolve`` call for every distinct host and destination in it, and
    lookups in one snapshot of the ``tables``. Raises ``LookupReadError`` (transient: the batch is retried) if a
    GeoIP database's data read as corrupt."""
    hosts = [host_of(e) for e in events]
    destinations = [destination_of(e) for e in events]
    peers = [peer_of(d) for d in destinations]
    names = resolver.resolve({a for a in (*hosts, *peers) if a is not None})
    enriched_at = format_time(now)
    return [
        enrich(e, env=env, rdns=names.get(h) if h is not None else None, enriched_at=enriched_at,
               lookups=lookup_fields(tables, e, d), dst_rdns=names.get(p) if p is not None else None)
        for e, h, d, p in zip(events, hosts, destinations, peers, strict=True)
    ]

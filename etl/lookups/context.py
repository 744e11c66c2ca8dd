"""An event's lookup fields, from one snapshot of the lookup tables (``etl.lookups.tables``): the indicators it
matched (``intel``), the asset of its host and of its destination (``src_asset``, ``dst_asset``) and where its
destination is (``dst_geo``). Pure: reads the tables and the event, and changes neither (only the snapshot's
memo of answers, below).

- ``src_asset`` is of ``metadata.host_ip`` and ``dst_asset`` of the destination (``etl.pipeline.peers``), each
  ``None`` when the event has none or it is not an IP address. Without an inventory an address is still
  classified internal or external (``etl.lookups.assets``).
- ``dst_geo`` only for an external destination, when a GeoIP database is configured and knows it: GeoIP says
  nothing true of a private address.
- ``intel`` is one JSON object per ``etl.lookups.indicators.Match``; empty without a feed. At most
  ``MAX_INTEL_MATCHES`` of them, the first found (the host's, the destination's, the payload's, the binary's), and
  ``intel_omitted`` counts the rest.

What the tables say of a host, a destination or a short payload is remembered in the snapshot
(``LookupTables.memo``), so each is classified, located and matched once, not once an event: a worker sees the
same few in batch after batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from etl.lookups import candidates
from etl.lookups.assets import UNLISTED_EXTERNAL, UNLISTED_INTERNAL, Asset, is_internal_range
from etl.lookups.candidates import Field
from etl.lookups.geoip import UNKNOWN, Geo
from etl.lookups.indicators import IndicatorIndex, Match
from etl.lookups.tables import LookupTables
from etl.pipeline.events import Event
from etl.pipeline.peers import MAX_SCOPED_ADDRESS_CHARS

Json = dict[str, Any]
Found = tuple[Json, ...]  # what an address or a payload matched, as JSON, remembered: copied into each event
_NONE: Found = ()
# Hosts, destinations and payloads remembered per snapshot: more than a fleet's hosts and the peers and names they
# use at once, at a bounded cost (a few small dicts, or a payload of at most MAX_MEMO_PAYLOAD_CHARS, each).
MAX_MEMO_ENTRIES = 32_768
MAX_MEMO_PAYLOAD_CHARS = 512  # a longer payload is scanned every time
_RAW_PAYLOAD = "raw payload"  # the tag of a payload's memo key, apart from an address's (a ``Field``)
# The most matches one event carries in ``intel``. An address matches every (source, severity) of every CIDR that
# covers it, and a name every listed parent, so feed content alone could grow an event past NATS's max_payload,
# and dead-letter it; an analyst reads a few matches, and learns from ``intel_omitted`` that there were more.
MAX_INTEL_MATCHES = 32


class LookupFields(NamedTuple):
    """The four fields the enriched event gains, as JSON values, and how many matches ``intel`` left out (see
    ``MAX_INTEL_MATCHES``)."""

    intel: list[Json]
    src_asset: Json | None
    dst_asset: Json | None
    dst_geo: Json | None
    intel_omitted: int = 0


class _Place(NamedTuple):
    """What a snapshot says of one host or destination: its asset and, for a destination, where it is (as JSON),
    and the indicators it matched."""

    asset: Json | None
    geo: Json | None
    intel: Found


_NOWHERE = _Place(None, None, _NONE)  # of an event without a host or a destination


def match_json(match: Match) -> Json:
    """One match as the enriched event carries it: plain strings, so every consumer reads the same JSON."""
    return {"type": match.type.value, "value": match.value, "source": match.source, "severity": match.severity,
            "field": match.field.value, "observed": match.observed}


def _copy(value: Json | None) -> Json | None:
    """A copy for one event: no two events share a dict, so a consumer may change one without the others."""
    return None if value is None else dict(value)


def asset_of(tables: LookupTables, text: str) -> Asset | None:
    """The asset of the address ``text``, or ``None`` when ``text`` is not an IP address."""
    inventory = tables.assets
    try:
        if inventory is not None:
            return inventory.lookup(text)
        return UNLISTED_INTERNAL if is_internal_range(text) else UNLISTED_EXTERNAL
    except ValueError:
        return None


def geo_of(tables: LookupTables, text: str) -> Geo | None:
    """What the GeoIP databases know of the address ``text``; ``None`` when none is configured or it knows
    nothing. Raises ``LookupReadError`` (transient) if a database's data read as corrupt."""
    if tables.geoip is None:
        return None
    geo = tables.geoip.lookup(text)
    return None if geo == UNKNOWN else geo


def _address(tables: LookupTables, field: Field, text: str) -> _Place:
    """What ``tables`` say of the host or destination ``text``, remembered in the snapshot's memo: a worker sees
    the same few hosts and peers in batch after batch."""
    if len(text) > MAX_SCOPED_ADDRESS_CHARS:  # no address: nothing to look up, and an agent's text not to keep
        return _NOWHERE
    memo = tables.memo
    found: _Place | None = memo.get((field, text))
    if found is not None:
        return found
    asset = asset_of(tables, text)
    geo = geo_of(tables, text) if field is Field.DESTINATION and asset is not None and not asset.internal else None
    index = tables.indicators
    intel = tuple(match_json(m) for m in index.match_address(field, text)) if index is not None else _NONE
    found = _Place(asset.as_dict() if asset is not None else None, geo.as_dict() if geo is not None else None, intel)
    _remember(memo, (field, text), found)
    return found


def _remember(memo: dict[Any, Any], key: tuple[str, str], value: object) -> None:
    """Remember ``value``; the memo is emptied when full, which bounds it without the bookkeeping of an LRU."""
    if len(memo) >= MAX_MEMO_ENTRIES:
        memo.clear()
    memo[key] = value


def _domain_intel(tables: LookupTables, index: IndicatorIndex, event: Event) -> Found:
    """The indicators the payload's domains match. A short payload that names anything is remembered with its
    matches in the snapshot's memo, by its raw text (base64, as sent: the same text always decodes to the same
    ``args``): agents send the same queries and paths again and again, and finding the names in a payload costs
    more than the index lookups."""
    raw = event.get("payload")
    key = (_RAW_PAYLOAD, raw) if type(raw) is str and len(raw) <= MAX_MEMO_PAYLOAD_CHARS else None
    found: Found | None = tables.memo.get(key) if key is not None else None
    if found is not None:
        return found
    text = candidates.payload_text(event)
    if not text:  # nothing to scan, and none to remember: such payloads (ports, pids) rarely come again
        return _NONE
    found = tuple(match_json(m) for name in candidates.domains_in(text) for m in index.match_domain(name))
    if key is not None:
        _remember(tables.memo, key, found)
    return found


def _payload_intel(tables: LookupTables, index: IndicatorIndex, event: Event) -> list[Json]:
    """The indicators the payload's domains and the binary's hash match, as JSON, each dict the event's own."""
    found = [dict(m) for m in _domain_intel(tables, index, event)] if index.holds_domains else []
    binary = candidates.binary_hash(event)
    if binary is not None:
        found += map(match_json, index.match_hash(binary))
    return found


def lookup_fields(tables: LookupTables, event: Event, peer: str | None) -> LookupFields:
    """The event's four lookup fields (see the module's docstring); ``peer`` is its destination, as
    ``etl.pipeline.peers.destination_of`` gives it. Raises ``LookupReadError`` (transient) if a GeoIP database's
    data read as corrupt."""
    host = candidates.host_address(event)
    src = _address(tables, Field.HOST, host) if host else _NOWHERE
    dst = _address(tables, Field.DESTINATION, peer) if peer else _NOWHERE
    intel = [dict(m) for m in src.intel + dst.intel] if src.intel or dst.intel else []
    if tables.indicators is not None:
        intel += _payload_intel(tables, tables.indicators, event)
    omitted = max(len(intel) - MAX_INTEL_MATCHES, 0)
    if omitted:
        del intel[MAX_INTEL_MATCHES:]
    return LookupFields(intel, _copy(src.asset), _copy(dst.asset), _copy(dst.geo), omitted)

"""An event's lookup fields, from one snapshot of the lookup tables (``etl.lookups.tables``): the indicators it
matched (``intel``), the asset of its host and of its destination (``src_asset``, ``dst_asset``) and where its
destination is (``dst_geo``). Pure: reads the tables and the event, changes neither.

- ``src_asset`` is of ``metadata.host_ip`` and ``dst_asset`` of the destination (``etl.pipeline.peers``), each
  ``None`` when the event has none or it is not an IP address. Without an inventory an address is still
  classified internal or external (``etl.lookups.assets``).
- ``dst_geo`` only for an external destination, when a GeoIP database is configured and knows it: GeoIP says
  nothing true of a private address.
- ``intel`` is one JSON object per ``etl.lookups.indicators.Match``; empty without a feed.

A batch shares one ``BatchLookups``, so each distinct address in it is classified and located once: a batch holds
few hosts and peers, each in many events.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from etl.lookups import candidates
from etl.lookups.assets import UNLISTED_EXTERNAL, UNLISTED_INTERNAL, Asset, is_internal_range
from etl.lookups.geoip import UNKNOWN, Geo
from etl.lookups.indicators import Match
from etl.lookups.tables import LookupTables
from etl.pipeline.events import Event
from etl.pipeline.peers import MAX_SCOPED_ADDRESS_CHARS, destination_of

Json = dict[str, Any]


class LookupFields(NamedTuple):
    """The four fields the enriched event gains, as JSON values."""

    intel: list[Json]
    src_asset: Json | None
    dst_asset: Json | None
    dst_geo: Json | None


def match_json(match: Match) -> Json:
    """One match as the enriched event carries it: plain strings, so every consumer reads the same JSON."""
    return {"type": match.type.value, "value": match.value, "source": match.source, "severity": match.severity,
            "field": match.field.value, "observed": match.observed}


class BatchLookups:
    """The lookups of one batch against one snapshot; remembers each address it was asked about, so build one per
    batch (its memory is bounded by the batch)."""

    __slots__ = ("_tables", "_assets", "_places")

    def __init__(self, tables: LookupTables) -> None:
        self._tables = tables
        self._assets: dict[str, Asset | None] = {}
        self._places: dict[str, Geo | None] = {}

    def asset(self, text: str) -> Asset | None:
        """The asset of the address ``text``, or ``None`` when ``text`` is not an IP address."""
        if text in self._assets:
            return self._assets[text]
        found: Asset | None = None
        if len(text) <= MAX_SCOPED_ADDRESS_CHARS:  # longer is no address: not worth parsing an agent's text
            inventory = self._tables.assets
            try:
                if inventory is not None:
                    found = inventory.lookup(text)
                else:
                    found = UNLISTED_INTERNAL if is_internal_range(text) else UNLISTED_EXTERNAL
            except ValueError:
                found = None
        self._assets[text] = found
        return found

    def place(self, text: str) -> Geo | None:
        """What the GeoIP databases know of the address ``text``; ``None`` when none is configured or it knows
        nothing. Raises ``LookupFileError`` if a database's data are corrupt."""
        geoip = self._tables.geoip
        if geoip is None:
            return None
        if text not in self._places:
            geo = geoip.lookup(text)
            self._places[text] = None if geo == UNKNOWN else geo
        return self._places[text]

    def fields(self, event: Event) -> LookupFields:
        """The event's four lookup fields (see the module's docstring)."""
        host = candidates.host_address(event)
        peer = destination_of(event)
        src = self.asset(host) if host else None
        dst = self.asset(peer) if peer else None
        geo = self.place(peer) if peer and dst is not None and not dst.internal else None
        index = self._tables.indicators
        intel = [match_json(m) for m in index.match(event)] if index is not None else []
        return LookupFields(intel, src.as_dict() if src is not None else None,
                            dst.as_dict() if dst is not None else None, geo.as_dict() if geo is not None else None)

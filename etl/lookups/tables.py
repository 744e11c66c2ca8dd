"""The lookup tables one batch is enriched with, taken together: an immutable snapshot.

A worker holds one ``LookupTables`` at a time and replaces it whole when a file changes, so a batch reads every
table from one snapshot: it never sees a new feed beside an old inventory half-way through. What was looked up in
a snapshot is remembered with it (``memo``), and forgotten when it is replaced. ``None`` is a table
that is not configured; ``EMPTY`` is the snapshot of a pipeline with no lookup files at all, which still
classifies each address as internal or external (``etl.lookups.assets``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from etl.lookups.assets import AssetInventory
from etl.lookups.geoip import GeoIp
from etl.lookups.indicators import IndicatorIndex


@dataclass(frozen=True, slots=True)
class LookupTables:
    """The indicator index (``INTEL_PATHS``), the asset inventory (``ASSETS_PATH``) and the GeoIP databases
    (``GEOIP_CITY_PATH``, ``GEOIP_ASN_PATH``) in use; each ``None`` when not configured."""

    indicators: IndicatorIndex | None = None
    assets: AssetInventory | None = None
    geoip: GeoIp | None = None
    # Answers computed from this snapshot (``etl.lookups.context``): true as long as the snapshot is, so a worker
    # reuses them from batch to batch, and drops them with it. Changed only by whole-entry dict operations, which
    # the GIL makes atomic, so threads may share it; its reader bounds its size.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


EMPTY = LookupTables()

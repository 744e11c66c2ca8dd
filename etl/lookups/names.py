"""The lookup tables' names, declared once: what ``etl.lookups.sources`` loads each table as, the ``table`` label
of the lookup metrics, and what ``etl status`` (``etl.ops.lookup_status``) reads them by. A module of its own so
that the status command names the tables without importing the loaders and the libraries they need."""

from __future__ import annotations

INTEL = "intel"
ASSETS = "assets"
GEOIP_CITY = "geoip_city"
GEOIP_ASN = "geoip_asn"
# The order the tables load in at a worker's start, and are shown in by ``etl status``.
TABLE_NAMES = (INTEL, ASSETS, GEOIP_CITY, GEOIP_ASN)

"""The GeoIP tests' and the lookup benchmark's ``.mmdb`` builder: the one the local default writes its sample
databases with, so both lay out records alike."""

from __future__ import annotations

from etl.dev.mmdb import asn_record, city_record, write_mmdb

__all__ = ["asn_record", "city_record", "write_mmdb"]

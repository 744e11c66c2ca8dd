"""Small MaxMind-format databases built on the spot, laid out like GeoLite2-City and GeoLite2-ASN: the local
default's sample GeoIP files (``etl.dev.samples``), and the GeoIP tests' and the lookup benchmark's. Nothing is
downloaded. Written with ``mmdb-writer``, a development dependency (requirements-dev.txt) as the local servers
are: only the local default writes these files, never the pipeline. So the writer is imported when a database is
written, not with this module: the installed package (without development dependencies) imports every module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_mmdb(path: Path, records: Mapping[str, Any], *, database_type: str, ip_version: int = 6) -> Path:
    """A database at ``path`` holding ``records`` (network -> record). An IPv6 database also holds IPv4 networks,
    where MaxMind's readers look for them (``::a.b.c.d``)."""
    from mmdb_writer import MMDBWriter  # development dependencies: see the module's docstring
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=ip_version, database_type=database_type, languages=["en"],
                        description="aegisflux-etl sample data", ipv4_compatible=ip_version == 6)
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def city_record(country: str | None, registered: str | None = None) -> dict[str, Any]:
    """A record shaped like GeoLite2-City's: ``country`` and ``registered_country`` with ISO codes and names."""
    record: dict[str, Any] = {"city": {"names": {"en": "Testville"}}, "location": {"latitude": 1.5}}
    if country is not None:
        record["country"] = {"iso_code": country, "names": {"en": f"Country {country}"}}
    if registered is not None:
        record["registered_country"] = {"iso_code": registered, "names": {"en": f"Country {registered}"}}
    return record


def asn_record(number: int | None, organization: str | None) -> dict[str, Any]:
    """A record shaped like GeoLite2-ASN's."""
    record: dict[str, Any] = {}
    if number is not None:
        record["autonomous_system_number"] = number
    if organization is not None:
        record["autonomous_system_organization"] = organization
    return record

"""Country, autonomous system and its organisation for an address, from MaxMind-format (``.mmdb``) databases.

Two databases, each optional, as MaxMind ships them:

- a City or Country database (GeoLite2-City, GeoLite2-Country, GeoIP2-City...): the country is the record's
  ``country.iso_code`` (ISO 3166-1 alpha-2), else its ``registered_country.iso_code``: an anycast or satellite
  network often has only the country where it is registered;
- an ASN database (GeoLite2-ASN, or GeoIP2-ISP, which has the same two fields): ``autonomous_system_number`` and
  ``autonomous_system_organization``.

A field the database lacks (or holds with another type) is ``None``. Each reader is opened once with
``MODE_AUTO``: the C extension over a memory map when it is installed, the pure-Python reader over a memory map
otherwise. Because the file is mapped, a database is updated by writing the new file beside it and renaming it
over the old one (as MaxMind's ``geoipupdate`` does), never by rewriting it in place under a running reader.

This module answers for any address; the enrich stage asks it only for external ones (``etl.lookups.assets``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import maxminddb

from etl.errors import LookupFileError
from etl.lookups.prefixes import Address, address_key


@dataclass(frozen=True, slots=True)
class Geo:
    """What the databases know of one address; ``None`` where they know nothing."""

    country: str | None
    asn: int | None
    organization: str | None

    def as_dict(self) -> dict[str, str | int | None]:
        """The three fields, always all three keys, for the enriched event and the sinks' JSON."""
        return {"country": self.country, "asn": self.asn, "organization": self.organization}


UNKNOWN = Geo(None, None, None)


def _field(record: Any, *path: str) -> Any:
    """``record[path[0]][path[1]]...``, or ``None`` where a level is missing or not a map."""
    for key in path:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def _text(record: Any, *path: str) -> str | None:
    value = _field(record, *path)
    return value if isinstance(value, str) and value else None


def _integer(record: Any, *path: str) -> int | None:
    value = _field(record, *path)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _query(ip: Address) -> tuple[int, Address]:
    """The family of ``ip`` and the form to ask a reader: the string itself when the reader parses it the same
    way (the common case, and the fastest), else an ``ipaddress`` object. An IPv4-mapped address is asked as the
    IPv4 address it carries: a database holds IPv4 data under its IPv4 subtree, not always under ::ffff:0:0/96 as
    well. ``ValueError`` if ``ip`` is not an address."""
    family, value = address_key(ip)
    if isinstance(ip, str) and ("." not in ip if family == 6 else ":" not in ip) and "%" not in ip:
        return family, ip
    return family, ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


class _Database:
    """One open ``.mmdb`` file. Lookups of an address of a family the database does not hold answer ``None``."""

    __slots__ = ("path", "_reader", "_has_ipv6")

    def __init__(self, path: str | Path, mode: int) -> None:
        self.path = str(path)
        try:
            self._reader = maxminddb.open_database(self.path, mode)
        # The C reader says InvalidDatabaseError of a file that is no database; the pure-Python one may say
        # ValueError (an empty file cannot be mapped).
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            raise LookupFileError(self.path, f"not a readable MaxMind database: {e}") from e
        self._has_ipv6 = self._reader.metadata().ip_version == 6

    def get(self, family: int, query: Address) -> Any:
        """The record for ``query`` (an address of ``family``, as ``_query`` makes it), or ``None``. Raises
        ``LookupFileError`` if the database's data turn out to be corrupt."""
        if family == 6 and not self._has_ipv6:
            return None
        try:
            return self._reader.get(query)
        except maxminddb.InvalidDatabaseError as e:
            raise LookupFileError(self.path, f"corrupt data: {e}") from e

    @property
    def node_count(self) -> int:
        """Nodes of the database's search tree: its size, for the operator."""
        count: int = self._reader.metadata().node_count
        return count

    def close(self) -> None:
        self._reader.close()


class GeoIp:
    """The country database and the ASN database together; either may be absent. Close it when done (it is a
    context manager): each reader holds an open memory map."""

    __slots__ = ("_city", "_asn")

    def __init__(self, city: _Database | None, asn: _Database | None) -> None:
        self._city = city
        self._asn = asn

    @classmethod
    def open(cls, city_path: str | Path | None = None, asn_path: str | Path | None = None, *,
             mode: int = maxminddb.MODE_AUTO) -> GeoIp:
        """Open the databases at the paths given; ``mode`` is ``maxminddb``'s (``MODE_MMAP`` forces the pure-Python
        reader). Raises ``LookupFileError`` when a file is missing, unreadable or not a MaxMind database (and closes
        whichever was already open)."""
        city = _Database(city_path, mode) if city_path is not None else None
        try:
            asn = _Database(asn_path, mode) if asn_path is not None else None
        except LookupFileError:
            if city is not None:
                city.close()
            raise
        return cls(city, asn)

    @classmethod
    def pair(cls, city: GeoIp | None, asn: GeoIp | None) -> GeoIp:
        """The country database of ``city`` and the ASN database of ``asn`` together (each opened alone, say
        ``open(city_path=...)``): how a reload replaces one database and keeps the other, sharing its reader."""
        return cls(city._city if city is not None else None, asn._asn if asn is not None else None)

    def node_count(self) -> int:
        """Nodes of the search trees of the databases open: what ``etl_lookup_entries`` reports of GeoIP."""
        return sum(database.node_count for database in (self._city, self._asn) if database is not None)

    def lookup(self, ip: Address) -> Geo:
        """What the databases hold for ``ip``; ``UNKNOWN`` when neither knows it. ``ValueError`` if ``ip`` is not
        an address."""
        family, query = _query(ip)
        place = self._city.get(family, query) if self._city is not None else None
        network = self._asn.get(family, query) if self._asn is not None else None
        if place is None and network is None:
            return UNKNOWN
        return Geo(
            country=_text(place, "country", "iso_code") or _text(place, "registered_country", "iso_code"),
            asn=_integer(network, "autonomous_system_number"),
            organization=_text(network, "autonomous_system_organization"),
        )

    def close(self) -> None:
        for database in (self._city, self._asn):
            if database is not None:
                database.close()

    def __enter__(self) -> GeoIp:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

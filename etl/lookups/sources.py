"""The four lookup tables as a worker loads them: which files each reads, how it loads them, what it reports, and
how the loaded tables make one ``LookupTables`` snapshot. This is the I/O of the reload (``etl.lookups.live``):
listing and stat-ing the files (``table_signature``) and reading them.

Each table loads on its own, so a bad feed never holds up an inventory update: ``intel`` (every feed of
``INTEL_PATHS`` in one index; one file that cannot be loaded fails the whole table, so the one in use is kept
rather than replaced by part of the feeds), ``assets``, and the two GeoIP databases, ``geoip_city`` and
``geoip_asn``, each opened alone and paired in the snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etl.errors import LookupFileError
from etl.lookups.assets import load_assets
from etl.lookups.changes import FileSignature, TableSignature
from etl.lookups.feeds import FeedReport, feed_files, read_feeds
from etl.lookups.geoip import GeoIp
from etl.lookups.indicators import IndicatorIndex
from etl.lookups.names import ASSETS, GEOIP_ASN, GEOIP_CITY, INTEL
from etl.lookups.tables import LookupTables


@dataclass(frozen=True, slots=True)
class Loaded:
    """One table as loaded: the table (an ``IndicatorIndex``, an ``AssetInventory`` or a one-database ``GeoIp``),
    its entries and the malformed lines or objects its files had; for ``intel``, also the well-formed STIX
    indicators it does not match (``FeedReport.unsupported`` and ``outside_validity``), so that the load's log
    line can tell the operator of them."""

    table: Any
    entries: int
    skipped: int
    unsupported: int = 0
    outside_validity: int = 0

    def passed_over(self) -> str:
        """The indicators read but not matched, for the load's log line: empty when there are none."""
        if not (self.unsupported or self.outside_validity):
            return ""
        return (f"; STIX indicators not matched: {self.unsupported} unsupported,"
                f" {self.outside_validity} outside their validity window")


@dataclass(frozen=True, slots=True)
class TableSource:
    """A configured table: its name, its paths, and ``load``, which raises ``LookupFileError`` when the files
    cannot be loaded at all."""

    name: str
    paths: tuple[str, ...]
    load: Callable[[tuple[str, ...]], Loaded]

    def signature(self) -> TableSignature:
        return table_signature(self.paths)


def load_intel(paths: tuple[str, ...]) -> Loaded:
    """Every feed of ``paths`` in one index, each indicator added to it as its line is read: a reload holds the
    table in use and the one being built, and no file's text, lines or list of indicators beside them."""
    reports: list[FeedReport] = []
    index = IndicatorIndex.build(read_feeds(paths, reports))
    return Loaded(index, len(index), sum(report.skipped for report in reports),
                  sum(report.unsupported for report in reports), sum(report.outside_validity for report in reports))


def load_inventory(paths: tuple[str, ...]) -> Loaded:
    (path,) = paths
    inventory = load_assets(path)
    return Loaded(inventory, len(inventory), inventory.skipped)


def load_city(paths: tuple[str, ...]) -> Loaded:
    (path,) = paths
    geoip = GeoIp.open(city_path=path)
    return Loaded(geoip, geoip.node_count(), 0)


def load_asn(paths: tuple[str, ...]) -> Loaded:
    (path,) = paths
    geoip = GeoIp.open(asn_path=path)
    return Loaded(geoip, geoip.node_count(), 0)


def table_sources(*, intel_paths: Iterable[str] = (), assets_path: str = "", geoip_city_path: str = "",
                  geoip_asn_path: str = "") -> list[TableSource]:
    """The tables configured by these paths (empty: not configured), in the order they load at start."""
    found = [TableSource(INTEL, tuple(intel_paths), load_intel)] if tuple(intel_paths) else []
    for name, path, load in ((ASSETS, assets_path, load_inventory), (GEOIP_CITY, geoip_city_path, load_city),
                             (GEOIP_ASN, geoip_asn_path, load_asn)):
        if path:
            found.append(TableSource(name, (path,), load))
    return found


def snapshot(tables: Mapping[str, Any]) -> LookupTables:
    """The snapshot of the tables loaded, by name (a table absent from ``tables`` is ``None`` in it)."""
    city, asn = tables.get(GEOIP_CITY), tables.get(GEOIP_ASN)
    geoip = GeoIp.pair(city, asn) if city is not None or asn is not None else None
    return LookupTables(indicators=tables.get(INTEL), assets=tables.get(ASSETS), geoip=geoip)


def table_signature(paths: Iterable[str]) -> TableSignature:
    """The signature of the files ``paths`` name (a directory: its files, as ``feed_files`` lists them); a path
    that does not exist, or cannot be listed, is ``None``."""
    found: list[tuple[str, FileSignature | None]] = []
    for given in paths:
        try:
            files = [str(path) for path in feed_files([given])]
        except (LookupFileError, OSError):
            found.append((given, None))
            continue
        found += ((path, file_signature(path)) for path in files)
    return tuple(found)


def file_signature(path: str | Path) -> FileSignature | None:
    """The file's signature, ``None`` when it cannot be stat-ed (it vanished)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return FileSignature(stat.st_mtime_ns, stat.st_size, stat.st_ino)

"""The asset inventory: which site, owner and criticality an address belongs to, and whether it is internal.

The inventory is a CSV file with a header row naming ``cidr,site,owner,criticality`` (in any order, matched without
regard to case; only ``cidr`` is required), then one prefix a row::

    cidr,site,owner,criticality
    10.0.0.0/8,hq,it,medium
    10.20.0.0/16,lab,research,low
    2001:db8:10::/48,hq,it,high

- The most specific prefix that holds an address wins; a prefix listed twice keeps its last row. A bare address
  is a one-address prefix (``/32`` or ``/128``).
- Blank lines and lines whose first cell starts with ``#`` are ignored. A malformed row (a cell too many or too
  few, a ``cidr`` that is not a network or has host bits set) is skipped and counted, and the numbers of the first
  few such lines kept (``etl.lookups.badlines``); it never fails the file. An empty ``site``, ``owner`` or
  ``criticality`` is ``None``.
- A file that cannot be read, is not UTF-8, or has no header row naming ``cidr`` raises ``LookupFileError``.

Every address the inventory lists is ``internal``: it is ours, whether its range is private or public. An address
it does not list is classified by its range: ``internal`` when it cannot be a host on the public internet, that is
private (RFC 1918), shared (RFC 6598, ``100.64.0.0/10``, carrier-grade NAT and overlay networks such as tailnets:
never routed on the internet, so GeoIP has nothing to say of it), loopback, link-local, unique local
(``fc00::/7``), multicast, the limited broadcast ``255.255.255.255``, or unspecified (``0.0.0.0/8``, ``::``);
``external`` otherwise.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from etl.errors import LookupFileError
from etl.lookups.badlines import keep_bad_line
from etl.lookups.csvrows import content_rows
from etl.lookups.prefixes import Address, Network, NetworkKey, PrefixTable, address_key, network_key

ASSET_COLUMNS = ("cidr", "site", "owner", "criticality")
INTERNAL_NETWORKS = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918 private
    "100.64.0.0/10",  # RFC 6598 shared address space (CGNAT)
    "127.0.0.0/8", "::1/128",  # loopback
    "169.254.0.0/16", "fe80::/10",  # link-local
    "fc00::/7",  # RFC 4193 unique local
    # Not hosts on the public internet, so no GeoIP for them: what a LAN's discovery (mDNS, SSDP) and DHCP send to.
    "224.0.0.0/4", "ff00::/8",  # multicast
    "255.255.255.255/32",  # limited broadcast
    "0.0.0.0/8", "::/128",  # "this network" and the unspecified address
)


@dataclass(frozen=True, slots=True)
class Asset:
    """What the inventory says of one address. ``site``, ``owner`` and ``criticality`` are ``None`` for an address
    it does not list (or a row that left them empty)."""

    site: str | None
    owner: str | None
    criticality: str | None
    internal: bool

    def as_dict(self) -> dict[str, str | bool | None]:
        """The four fields, always all four keys, for the enriched event and the sinks' JSON."""
        return {"site": self.site, "owner": self.owner, "criticality": self.criticality, "internal": self.internal}


UNLISTED_INTERNAL = Asset(None, None, None, internal=True)
UNLISTED_EXTERNAL = Asset(None, None, None, internal=False)


@cache
def _internal_ranges() -> PrefixTable[bool]:
    """The ranges that make an unlisted address internal, built on first use and shared: the table is immutable."""
    return PrefixTable.build((net, True) for net in INTERNAL_NETWORKS)


def is_internal_range(ip: Address) -> bool:
    """Whether ``ip`` lies in one of ``INTERNAL_NETWORKS``. ``ValueError`` if it is not an address."""
    return _internal_ranges().most_specific_key(address_key(ip)) is not None


class AssetInventory:
    """Immutable once built; ``lookup`` answers for any address, listed or not.

    ``skipped`` counts the malformed rows the file had, and ``bad_lines`` holds the line numbers (1-based) of the
    first few of them, as a feed's report does; ``len()`` is the number of distinct prefixes.
    """

    __slots__ = ("_table", "skipped", "bad_lines")

    def __init__(self, table: PrefixTable[Asset], skipped: int = 0, bad_lines: tuple[int, ...] = ()) -> None:
        self._table = table
        self.skipped = skipped
        self.bad_lines = bad_lines

    @classmethod
    def build(cls, entries: Iterable[tuple[Network, Asset]]) -> AssetInventory:
        """From ``(cidr, asset)`` pairs; ``ValueError`` on a cidr that is not a network (see ``parse_rows``)."""
        return cls(PrefixTable.build(entries))

    def __len__(self) -> int:
        return len(self._table)

    def lookup(self, ip: Address) -> Asset:
        """The asset of the most specific listed prefix holding ``ip``, else an unlisted one, internal or external
        by its range. ``ValueError`` if ``ip`` is not an address."""
        key = address_key(ip)
        listed = self._table.most_specific_key(key)
        if listed is not None:
            return listed
        return UNLISTED_INTERNAL if _internal_ranges().most_specific_key(key) is not None else UNLISTED_EXTERNAL


def _column_positions(header: list[str]) -> dict[str, int]:
    """Where each known column is in the header row. ``ValueError`` when ``cidr`` is not among them."""
    names = [name.strip().lower() for name in header]
    if "cidr" not in names:
        raise ValueError(f"the header row names no 'cidr' column (expected {','.join(ASSET_COLUMNS)})")
    return {name: names.index(name) for name in ASSET_COLUMNS if name in names}


def _asset(row: list[str], columns: dict[str, int]) -> Asset:
    def cell(name: str) -> str | None:
        return row[columns[name]].strip() or None if name in columns else None

    return Asset(cell("site"), cell("owner"), cell("criticality"), internal=True)


def parse_rows(lines: Iterable[str]) -> tuple[list[tuple[NetworkKey, Asset]], int, tuple[int, ...]]:
    """The ``(network key, asset)`` entries of an inventory's CSV lines, header first, how many lines it skipped as
    malformed, and the numbers of the first few of them. Equal assets are shared, so a large inventory holds each
    site/owner/criticality once.

    Raises ``ValueError`` when there is no header row, or it names no ``cidr`` column: then no row can be read.
    """
    rows = csv.reader(lines)
    header = next(content_rows(rows), None)
    if header is None:
        raise ValueError("no header row")
    columns = _column_positions(header)
    entries: list[tuple[NetworkKey, Asset]] = []
    skipped, bad_lines = 0, list[int]()
    shared: dict[Asset, Asset] = {}
    for row in content_rows(rows):
        try:
            if len(row) != len(header):
                raise ValueError("a cell too many or too few")
            key = network_key(row[columns["cidr"]])
        except ValueError:
            skipped += 1
            keep_bad_line(bad_lines, rows.line_num)
            continue
        asset = _asset(row, columns)
        entries.append((key, shared.setdefault(asset, asset)))
    return entries, skipped, tuple(bad_lines)


def load_assets(path: str | Path) -> AssetInventory:
    """The inventory in the CSV file at ``path``. Raises ``LookupFileError`` when the file cannot be read, is not
    UTF-8 (a byte-order mark is allowed), or has no usable header row; a malformed row is only skipped."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as lines:
            entries, skipped, bad_lines = parse_rows(lines)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise LookupFileError(str(path), str(e)) from e
    return AssetInventory(PrefixTable.from_keys(entries), skipped, bad_lines)

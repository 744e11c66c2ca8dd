"""An immutable table of IPv4 and IPv6 prefixes (CIDRs), each mapped to a value, searched in O(log n).

Prefixes are either nested or disjoint, so at build time each family's address space is cut into sorted, disjoint
integer ranges, each labelled with the most specific prefix that covers it (or with none). A lookup is one
``bisect`` over those range starts; the prefixes that cover the address are then found by walking up from that
prefix to the ones enclosing it, a chain no longer than the family's bit width. No lookup loops over the prefixes.

Conventions the callers rely on:

- A prefix declared more than once (the same network and length) keeps the value of its *last* declaration, like a
  dict: a later line of a file overrides an earlier one, and nothing is refused.
- An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is looked up as the IPv4 address it carries, and an
  IPv4-mapped network (``::ffff:10.0.0.0/104``) is stored as the IPv4 network it names.
- A network with host bits set (``10.0.0.1/8``) is refused with ``ValueError``, as ``ipaddress`` refuses it: a
  typo there would silently widen or narrow what the operator meant.
"""

from __future__ import annotations

import ipaddress
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_pton
from typing import Generic, TypeVar

V = TypeVar("V")

Address = str | ipaddress.IPv4Address | ipaddress.IPv6Address
Network = str | ipaddress.IPv4Network | ipaddress.IPv6Network
NetworkKey = tuple[int, int, int]  # (family 4 or 6, first address as an integer, prefix length): see network_key

BITS = {4: 32, 6: 128}
NO_PREFIX = -1  # the label of a range that no prefix covers
LENGTH_BITS = 8  # a prefix length (at most 128) fits in 8 bits
LENGTH_MASK = (1 << LENGTH_BITS) - 1
_V4_MAPPED_HIGH = 0xFFFF  # an IPv4-mapped IPv6 address is ::ffff:a.b.c.d, i.e. its high 96 bits are 0xffff
_V4_MASK = 0xFFFFFFFF


def _unmap(value: int) -> tuple[int, int]:
    """``(family, integer)`` of a 128-bit address: IPv4 when it is IPv4-mapped."""
    if value >> 32 == _V4_MAPPED_HIGH:
        return 4, value & _V4_MASK
    return 6, value


def plain_address_key(text: str) -> tuple[int, int] | None:
    """``address_key`` of a plain address, a dotted quad or IPv6 without a zone id, by ``inet_pton`` (which accepts
    what ``ipaddress`` accepts of those, leading zeros in a quad refused by both); ``None`` for any other text,
    which ``ipaddress`` must then judge."""
    six = ":" in text  # an IPv6 address always has one, a dotted quad never: one attempt, not two
    try:
        value = int.from_bytes(inet_pton(AF_INET6 if six else AF_INET, text))
    except (OSError, ValueError):
        return None
    return _unmap(value) if six else (4, value)


def address_key(ip: Address) -> tuple[int, int]:
    """``(4 or 6, the address as an integer)``, an IPv4-mapped IPv6 address as IPv4.

    Raises ``ValueError`` for a string that is not an address. Dotted quads and plain IPv6 take the fast path of
    ``inet_pton``; anything else (a zone id such as ``fe80::1%eth0``) goes through ``ipaddress``, which decides.
    """
    if isinstance(ip, str):
        key = plain_address_key(ip)
        if key is not None:
            return key
        ip = ipaddress.ip_address(ip)
    if ip.version == 4:
        return 4, int(ip)
    return _unmap(int(ip))


def plain_network_key(text: str) -> NetworkKey | None:
    """``(family, first, length)`` of a plain ``address/length`` string, without building ``ipaddress`` objects
    (ten times faster on a million lines) and as written (an IPv4-mapped network stays IPv6); ``None`` for
    anything unusual, a network with host bits set included, which ``ipaddress`` then judges."""
    address, _, length_text = text.partition("/")
    for family, af in ((4, AF_INET), (6, AF_INET6)):
        try:
            first = int.from_bytes(inet_pton(af, address))
        except (OSError, ValueError):
            continue
        bits = BITS[family]
        if not (length_text.isascii() and length_text.isdigit()) or int(length_text) > bits:
            return None
        length = int(length_text)
        if first & ((1 << (bits - length)) - 1):
            return None
        return family, first, length
    return None


def network_key(net: Network) -> NetworkKey:
    """``(family, first address as an integer, prefix length)``; an IPv4-mapped network as IPv4.

    Raises ``ValueError`` for a string that is not a network, or one with host bits set.
    """
    if isinstance(net, str):
        parsed = plain_network_key(net.strip())
        if parsed is None:
            net = ipaddress.ip_network(net.strip())
            parsed = net.version, int(net.network_address), net.prefixlen
    else:
        parsed = net.version, int(net.network_address), net.prefixlen
    return unmap_network(parsed)


def unmap_network(key: NetworkKey) -> NetworkKey:
    """``key`` as IPv4 when it is an IPv4-mapped network (``::ffff:0:0/96`` or inside it), else as it is: the one
    rule by which a mapped network and the IPv4 network it names are one network, for tables and texts alike."""
    family, first, length = key
    if family == 6 and length >= 96 and first >> 32 == _V4_MAPPED_HIGH:
        return 4, first & _V4_MASK, length - 96
    return key


@dataclass(frozen=True, slots=True)
class _Ranges:
    """One family's address space as sorted disjoint ranges: range ``i`` runs from ``starts[i]`` up to the next
    start, labelled with the node (an index into the table's prefixes) of its most specific prefix, or
    ``NO_PREFIX``. IPv4 starts fit an unsigned 32-bit array; IPv6 ones are Python ints."""

    starts: array[int] | list[int]
    labels: array[int]

    def label(self, value: int) -> int:
        i = bisect_right(self.starts, value) - 1
        return self.labels[i] if i >= 0 else NO_PREFIX


class _Sweep:
    """Cuts one family's sorted prefixes into labelled ranges, and records each prefix's enclosing prefix."""

    def __init__(self, bits: int, parents: array[int]) -> None:
        self.bits = bits
        self.top = (1 << bits) - 1  # the family's last address
        self.parents = parents
        self.stack: list[int] = []  # the open prefixes (nodes), each enclosing the next
        self.ends: list[int] = []  # their last addresses, in step with the stack
        self.starts: list[int] = []
        self.labels = array("i")

    def mark(self, start: int, label: int) -> None:
        """From ``start`` on, the most specific prefix is ``label``; a later mark at the same start overrides."""
        if self.starts and self.starts[-1] == start:
            self.labels[-1] = label
        elif not self.labels or self.labels[-1] != label:
            self.starts.append(start)
            self.labels.append(label)

    def close_before(self, start: int) -> None:
        """Close every open prefix that ends before ``start``: past its end, its parent is the most specific."""
        while self.stack and self.ends[-1] < start:
            end = self.ends.pop()
            self.stack.pop()
            if end < self.top:
                self.mark(end + 1, self.stack[-1] if self.stack else NO_PREFIX)

    def add(self, node: int, first: int, length: int) -> None:
        """Open prefix ``node``; prefixes come sorted by first address, then length, so an enclosing one first."""
        self.close_before(first)
        self.parents.append(self.stack[-1] if self.stack else NO_PREFIX)
        self.stack.append(node)
        self.ends.append(first | ((1 << (self.bits - length)) - 1))
        self.mark(first, node)


class PrefixTable(Generic[V]):
    """Immutable: built once by ``build``, then only read, so one table may be shared by threads and swapped whole.

    ``len(table)`` is the number of distinct prefixes.
    """

    __slots__ = ("_values", "_parents", "_ranges")

    def __init__(self, values: list[V], parents: array[int], ranges: dict[int, _Ranges]) -> None:
        self._values = values
        self._parents = parents
        self._ranges = ranges

    @classmethod
    def build(cls, entries: Iterable[tuple[Network, V]]) -> PrefixTable[V]:
        """A table of ``(network, value)`` entries; the last value declared for a network wins.

        Raises ``ValueError`` (from ``network_key``) on the first entry that is not a network: a caller that
        skips bad lines validates them with ``network_key`` first.
        """
        return cls.from_keys((network_key(net), value) for net, value in entries)

    @classmethod
    def from_keys(cls, entries: Iterable[tuple[NetworkKey, V]]) -> PrefixTable[V]:
        """Like ``build``, from networks already parsed by ``network_key``: for a loader that parsed them to tell
        a malformed line from a good one, so that no network is parsed twice."""
        # One dict a family, keyed by first << LENGTH_BITS | length: an int sorts as (first, length) does, and a
        # million of them cost far less than a million tuples. The last value declared for a network wins.
        latest: dict[int, dict[int, V]] = {family: {} for family in BITS}
        for (family, first, length), value in entries:
            latest[family][first << LENGTH_BITS | length] = value
        values: list[V] = []
        parents = array("i")
        ranges: dict[int, _Ranges] = {}
        for family, bits in BITS.items():
            sweep = _Sweep(bits, parents)
            for packed in sorted(latest[family]):
                sweep.add(len(values), packed >> LENGTH_BITS, packed & LENGTH_MASK)
                values.append(latest[family][packed])
            del latest[family]
            sweep.close_before(sweep.top + 1)
            starts: array[int] | list[int] = array("I", sweep.starts) if family == 4 else sweep.starts
            ranges[family] = _Ranges(starts, sweep.labels)
        return cls(values, parents, ranges)

    def __len__(self) -> int:
        return len(self._values)

    def most_specific(self, ip: Address) -> V | None:
        """The value of the longest prefix that contains ``ip``, or ``None``. ``ValueError`` if ``ip`` is not an
        address."""
        return self.most_specific_key(address_key(ip))

    def covering(self, ip: Address) -> tuple[V, ...]:
        """The values of every prefix that contains ``ip``, the most specific first; empty when none does.
        ``ValueError`` if ``ip`` is not an address."""
        return self.covering_key(address_key(ip))

    def most_specific_key(self, key: tuple[int, int]) -> V | None:
        """``most_specific`` of an address already parsed by ``address_key``: a caller asking several tables about
        one address parses it once."""
        node = self._ranges[key[0]].label(key[1])
        return None if node == NO_PREFIX else self._values[node]

    def covering_key(self, key: tuple[int, int]) -> tuple[V, ...]:
        """``covering`` of an address already parsed by ``address_key``."""
        node, found = self._ranges[key[0]].label(key[1]), []
        while node != NO_PREFIX:
            found.append(self._values[node])
            node = self._parents[node]
        return tuple(found)

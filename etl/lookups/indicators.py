"""An index of indicators, built once from feeds and then only read: which of an event's candidates
(``etl.lookups.candidates``) are known-bad, and who says so.

Matching rules:

- an address matches an ``ip`` indicator of the same address, and every ``cidr`` indicator that contains it
  (``etl.lookups.prefixes``), IPv4-mapped IPv6 addresses as IPv4;
- a domain matches an indicator of itself or of any parent domain: ``a.b.evil.com`` matches ``evil.com`` and
  ``b.evil.com``. Feeds list the domain an actor registered, and the actor serves from any name under it; a
  single label (``com``) is never a parent, since a feed cannot list one;
- ``metadata.binary_sha256`` matches a ``sha256`` indicator of the same hash, in any case.

One indicator listed by several feeds, or by one with several severities, is kept once with each distinct
``(source, severity)``, and reported once for each: an analyst sees every feed that names it. The same line twice
in one feed is one.

Compact, since a worker holds a million indicators: no object per indicator. Addresses are integers, hashes 32
bytes, domains their text; each maps to the number of its ``(source, severity)`` pair (or a tuple of them), the
pairs stored once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from etl.lookups import candidates
from etl.lookups.candidates import Field
from etl.lookups.feeds.values import Indicator, IndicatorType, address
from etl.lookups.prefixes import NetworkKey, PrefixTable, address_key, network_key
from etl.pipeline.events import Event
from etl.pipeline.peers import MAX_SCOPED_ADDRESS_CHARS

# Tag numbers: one ``(source, severity)`` pair's index in ``IndicatorIndex._tags``, or several, in order added.
Tags = int | tuple[int, ...]
# An address's hits, remembered: a worker sees the same hosts and peers in event after event. Emptied when full,
# which bounds it without the bookkeeping of an LRU.
MAX_CACHED_ADDRESSES = 16_384
# What an address matched: the indicator's type and value, and its tags.
_Hit = tuple[IndicatorType, str, Tags]
# Keeps IPv6 integers apart from IPv4 ones in one dict: ``::1`` is not ``0.0.0.1``.
_V6_FLAG = 1 << 128


@dataclass(frozen=True, slots=True)
class Match:
    """One indicator an event matched: the indicator's ``type``, ``value`` (``evil.com`` for an event naming
    ``a.evil.com``, the network for a CIDR), ``source`` and ``severity``; where the event held it (``field``) and
    what it held there (``observed``)."""

    type: IndicatorType
    value: str
    source: str
    severity: str
    field: Field
    observed: str


def _address_int(key: tuple[int, int]) -> int:
    """One integer for an address parsed by ``address_key``, whichever its family."""
    family, value = key
    return value if family == 4 else value | _V6_FLAG


def _with(tags: Tags | None, tag: int) -> Tags:
    if tags is None or tags == tag:
        return tag
    if isinstance(tags, int):
        return (tags, tag)
    return tags if tag in tags else (*tags, tag)


class _Builder:
    """The index's tables as they fill: each ``(source, severity)`` pair numbered once, each value's tags merged."""

    def __init__(self) -> None:
        self.tag_numbers: dict[tuple[str, str], int] = {}
        self.addresses: dict[int, Tags] = {}
        self.domains: dict[str, Tags] = {}
        self.hashes: dict[bytes, Tags] = {}
        # Keyed by the parsed network, not its text: two texts of one network (``::ffff:10.1.0.0/112`` and
        # ``10.1.0.0/16``) are one prefix in the table, and each feed's tags must reach it. The first text is kept.
        self.networks: dict[NetworkKey, tuple[str, Tags]] = {}

    def add(self, indicator: Indicator) -> None:
        pair = (indicator.source, indicator.severity)
        tag = self.tag_numbers.setdefault(pair, len(self.tag_numbers))
        value = indicator.value
        if indicator.type is IndicatorType.IP:
            key = _address_int(address_key(value))
            self.addresses[key] = _with(self.addresses.get(key), tag)
        elif indicator.type is IndicatorType.DOMAIN:
            self.domains[value] = _with(self.domains.get(value), tag)
        elif indicator.type is IndicatorType.SHA256:
            digest = bytes.fromhex(value)
            self.hashes[digest] = _with(self.hashes.get(digest), tag)
        else:
            net = network_key(value)
            held = self.networks.get(net)
            self.networks[net] = (value, tag) if held is None else (held[0], _with(held[1], tag))


class IndicatorIndex:
    """Immutable once built, so one index may be shared by threads and swapped whole on reload. (Its cache of
    address lookups changes, but only by whole-entry dict operations, which the GIL makes atomic.)"""

    __slots__ = ("_tags", "_addresses", "_domains", "_hashes", "_networks", "_address_cache")

    def __init__(self, builder: _Builder) -> None:
        self._tags = [(source, severity) for source, severity in builder.tag_numbers]
        self._addresses = builder.addresses
        self._domains = builder.domains
        self._hashes = builder.hashes
        self._networks: PrefixTable[tuple[str, Tags]] = PrefixTable.from_keys(builder.networks.items())
        self._address_cache: dict[str, tuple[_Hit, ...]] = {}

    @classmethod
    def build(cls, indicators: Iterable[Indicator]) -> IndicatorIndex:
        """The index of ``indicators`` (normalised by ``etl.lookups.feeds``; a duplicate is merged)."""
        builder = _Builder()
        for indicator in indicators:
            builder.add(indicator)
        return cls(builder)

    def counts(self) -> dict[IndicatorType, int]:
        """Distinct indicator values by type: the size of each table."""
        return {IndicatorType.IP: len(self._addresses), IndicatorType.CIDR: len(self._networks),
                IndicatorType.DOMAIN: len(self._domains), IndicatorType.SHA256: len(self._hashes)}

    def __len__(self) -> int:
        return sum(self.counts().values())

    @property
    def holds_domains(self) -> bool:
        """Whether any domain is indexed: when none is, a payload need not be scanned for names."""
        return bool(self._domains)

    def _matches(self, kind: IndicatorType, value: str, tags: Tags, field: Field, observed: str) -> list[Match]:
        numbers = (tags,) if isinstance(tags, int) else tags
        return [Match(kind, value, *self._tags[n], field, observed) for n in numbers]

    def _lookup_address(self, text: str) -> tuple[_Hit, ...]:
        try:
            key = address_key(text)
        except ValueError:
            return ()
        found: list[_Hit] = []
        tags = self._addresses.get(_address_int(key))
        if tags is not None:
            found.append((IndicatorType.IP, str(address(text.split("%", 1)[0])), tags))
        if len(self._networks):
            found += ((IndicatorType.CIDR, net, net_tags) for net, net_tags in self._networks.covering_key(key))
        return tuple(found)

    def match_address(self, field: Field, text: str) -> list[Match]:
        """The indicators the address ``text`` (found in ``field``) matches; empty when it is not an address."""
        if len(text) > MAX_SCOPED_ADDRESS_CHARS:  # no address, and an agent's text not to keep in the cache
            return []
        hits = self._address_cache.get(text)
        if hits is None:
            hits = self._lookup_address(text)
            if len(self._address_cache) >= MAX_CACHED_ADDRESSES:
                self._address_cache.clear()
            self._address_cache[text] = hits
        found: list[Match] = []
        for kind, value, tags in hits:
            found += self._matches(kind, value, tags, field, text)
        return found

    def match_domain(self, name: str) -> list[Match]:
        """The indicators of ``name`` (a payload's domain, in lower case, as ``etl.lookups.candidates`` finds it)
        and of each parent of it down to two labels."""
        found, suffix = [], name
        while True:
            tags = self._domains.get(suffix)
            if tags is not None:
                found += self._matches(IndicatorType.DOMAIN, suffix, tags, Field.PAYLOAD, name)
            dot = suffix.find(".")
            if suffix.find(".", dot + 1) < 0:
                return found
            suffix = suffix[dot + 1:]

    def match_hash(self, text: str) -> list[Match]:
        """The indicator of the binary hash ``text`` (lower-case hex); empty when it is not hex."""
        try:
            tags = self._hashes.get(bytes.fromhex(text))
        except ValueError:
            return []
        return [] if tags is None else self._matches(IndicatorType.SHA256, text, tags, Field.BINARY, text)

    def match(self, event: Event) -> list[Match]:
        """Every indicator the event matches: its host and destination addresses, then its payload's domains, then
        its binary's hash; empty when none (or when the event has none of them)."""
        found: list[Match] = []
        for field, text in candidates.addresses(event):
            found += self.match_address(field, text)
        if self.holds_domains:
            for name in candidates.domains(event):
                found += self.match_domain(name)
        binary = candidates.binary_hash(event)
        if binary is not None and self._hashes:
            found += self.match_hash(binary)
        return found

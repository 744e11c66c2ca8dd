"""What an indicator is, and its value in the one canonical form both feeds and events are compared in.

Canonical forms: an address as ``ipaddress`` writes it (an IPv4-mapped IPv6 address as its IPv4 address, so that
``::ffff:192.0.2.1`` and ``192.0.2.1`` are one indicator); a CIDR as ``ipaddress`` writes it, an IPv4-mapped one
as its IPv4 network (``::ffff:10.1.0.0/112`` is ``10.1.0.0/16``), for the same reason; one with host bits
set, ``10.1.2.3/8``, is refused, as ``etl.lookups.prefixes`` refuses it: a typo there would widen or narrow what
the feed meant; a domain in lower case, IDNA (punycode) for non-ASCII, without the trailing dot; a SHA-256 in
lower-case hex.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from socket import AF_INET, inet_ntop

from etl.lookups.prefixes import plain_address_key, plain_network_key, unmap_network
from etl.pipeline.limits import MAX_DOMAIN_CHARS, MAX_INDICATOR_SEVERITY_CHARS, MAX_INDICATOR_SOURCE_CHARS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Severity of an indicator whose feed gives none (plain lists, STIX bundles).
DEFAULT_SEVERITY = "unknown"
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A top-level domain is letters (or punycode): what tells ``999.1.2.3``, a bad address, from a name.
_TOP_LABEL = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{1,59}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class IndicatorType(StrEnum):
    """The kinds of value a feed can name: what the event's candidates are compared against."""

    IP = "ip"
    CIDR = "cidr"
    DOMAIN = "domain"
    SHA256 = "sha256"


@dataclass(frozen=True, slots=True)
class Indicator:
    """One line of a feed, normalised: ``value`` is canonical for its ``type``."""

    type: IndicatorType
    value: str
    source: str
    severity: str


class BadValue(ValueError):
    """A feed's value that is not an indicator of any (or of the declared) type."""


def address(text: str) -> IPAddress:
    """``text`` as an address, an IPv4-mapped IPv6 address as IPv4; ``ValueError`` when it is not one."""
    parsed = ipaddress.ip_address(text)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def network(text: str) -> IPNetwork:
    """``text`` as a network; ``ValueError`` when it is not one, or has host bits set."""
    return ipaddress.ip_network(text)


def _ipv6_text(value: int) -> str:
    """The text ``ipaddress`` writes for an IPv6 address (RFC 5952: lower-case groups without leading zeros, the
    longest run of two or more zero groups, the first of equally long ones, as ``::``), from its integer, at a
    third of the cost. Not ``inet_ntop``: a C library may write a dotted tail, or shorten another run."""
    digits = f"{value:032x}"
    groups = [digits[i:i + 4].lstrip("0") or "0" for i in range(0, 32, 4)]
    best, longest, start = 0, 1, -1
    for i, group in enumerate(groups):
        if group != "0":
            start = -1
            continue
        if start < 0:
            start = i
        if i - start + 1 > longest:
            best, longest = start, i - start + 1
    if longest == 1:
        return ":".join(groups)
    return ":".join(groups[:best]) + "::" + ":".join(groups[best + longest:])


def _address_text(family: int, value: int) -> str:
    """The text ``ipaddress`` writes for an address: a dotted quad is the same from any ``inet_ntop``."""
    return inet_ntop(AF_INET, value.to_bytes(4)) if family == 4 else _ipv6_text(value)


def address_text(text: str) -> str:
    """``str(address(text))``, the canonical text of an address, a plain one without building an ``ipaddress``
    object from text: a feed has a million of them, and every worker loads it. ``ValueError`` when not one."""
    key = plain_address_key(text)
    return str(address(text)) if key is None else _address_text(*key)


def network_text(text: str) -> str:
    """``str(network(text))``, the canonical text of a network, a plain ``address/length`` one the fast way as
    ``address_text``; an IPv4-mapped network (length 96 or more) as the IPv4 network it names, as ``address``
    writes a mapped address and as ``etl.lookups.prefixes`` stores it, so that one network has one text.
    ``ValueError`` when not one, or it has host bits set."""
    parsed = plain_network_key(text)
    if parsed is None:
        net = network(text)
        parsed = unmap_network((net.version, int(net.network_address), net.prefixlen))
        if parsed[0] == net.version:
            return str(net)
    family, first, length = unmap_network(parsed)
    return f"{_address_text(family, first)}/{length}"


def domain(text: str) -> str:
    """``text`` as a canonical domain name; ``BadValue`` when it is not a name of at least two labels, the last a
    top-level domain."""
    name = text.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadValue(f"not a domain name: {text[:64]!r}") from None
    labels = name.split(".")
    if (len(name) > MAX_DOMAIN_CHARS or len(labels) < 2 or not _TOP_LABEL.fullmatch(labels[-1])
            or not all(_LABEL.fullmatch(label) for label in labels)):
        raise BadValue(f"not a domain name: {text[:64]!r}")
    return name


def infer_type(text: str) -> IndicatorType:
    """The type a bare value has: 64 hex digits are a SHA-256, then an address, a CIDR, else a domain (which
    ``normalise`` then checks)."""
    if _SHA256.fullmatch(text):
        return IndicatorType.SHA256
    if "/" in text:
        return IndicatorType.CIDR
    if ":" not in text and text[-1:].isalpha():  # a name's last label: no address ends so, and parsing one is slow
        return IndicatorType.DOMAIN
    if plain_address_key(text) is not None:
        return IndicatorType.IP
    try:
        address(text)
    except ValueError:
        return IndicatorType.DOMAIN
    return IndicatorType.IP


def normalise(kind: IndicatorType, text: str) -> str:
    """``text`` in the canonical form of ``kind``; ``BadValue`` when it is not a value of that type."""
    text = text.strip()
    try:
        if kind is IndicatorType.IP:
            return address_text(text)
        if kind is IndicatorType.CIDR:
            return network_text(text)
    except ValueError:
        raise BadValue(f"not an {kind.value} value: {text[:64]!r}") from None
    if kind is IndicatorType.SHA256:
        if not _SHA256.fullmatch(text):
            raise BadValue(f"not a SHA-256: {text[:64]!r}")
        return text.lower()
    return domain(text)


def _bounded(name: str, text: str, max_chars: int) -> str:
    """``text``, a feed's ``source`` or ``severity``, when the sinks can store it in every match: at most
    ``max_chars`` characters (``etl.pipeline.limits``) and no NUL, which no graph property or JSONB text holds.
    Raises ``BadValue``."""
    if len(text) > max_chars:
        raise BadValue(f"{name} is {len(text)} characters, over {max_chars}")
    if "\x00" in text:
        raise BadValue(f"{name} has a NUL character")
    return text


def indicator(text: str, source: str, severity: str = "", declared: str = "") -> Indicator:
    """An ``Indicator`` from a feed's fields; ``declared`` (a type's name, or empty to infer it) must agree with
    the value, and ``source`` and ``severity`` be within their bounds (``_bounded``). Raises ``BadValue``."""
    source = _bounded("source", source, MAX_INDICATOR_SOURCE_CHARS)
    severity = _bounded("severity", severity.strip().lower(), MAX_INDICATOR_SEVERITY_CHARS) or DEFAULT_SEVERITY
    text = text.strip()
    if not text:
        raise BadValue("empty value")
    inferred = infer_type(text)
    if declared.strip():
        try:
            kind = IndicatorType(declared.strip().lower())
        except ValueError:
            raise BadValue(f"unknown type {declared[:32]!r}") from None
        if kind is not inferred:
            raise BadValue(f"{text[:64]!r} is not of type {kind.value}")
    else:
        kind = inferred
    return Indicator(kind, normalise(kind, text), source, severity)

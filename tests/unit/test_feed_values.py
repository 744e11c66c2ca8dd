"""The fast canonical forms of addresses and networks against ``ipaddress``, the reference they must equal: the same
text for every value ``ipaddress`` accepts, and a ``ValueError`` for every one it refuses."""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Callable

import pytest

from etl.lookups.feeds.values import IndicatorType, address, address_text, indicator, infer_type, network_text

EDGE_ADDRESSES = [
    "0.0.0.0", "255.255.255.255", "192.0.2.1", "01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.256", "1.2.3.4.5",
    "::", "::1", "1::", "::1.2.3.4", "::ffff:1.2.3.4", "::FFFF:1.2.3.4", "::ffff:01.2.3.4", "::ffff:0:0",
    "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:0:0:2:0:0:0:3", "1:0:0:2:0:0:3:4",
    "0001:0002::", "00001::", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "2001:DB8::A", "fe80::1%eth0",
    "[::1]", "\u0663.2.3.4", "", "x", "1.2.3.4/32",
]
EDGE_NETWORKS = [
    "10.0.0.0/8", "10.0.0.0/08", "10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/ 8", "10.0.0.0/255.0.0.0", "10.0.0.1",
    "0.0.0.0/0", "::/0", "::ffff:10.0.0.0/104", "::ffff:10.0.0.1/104", "::ffff:10.1.0.0/112", "::FFFF:10.1.0.0/112",
    "::ffff:0:0/96", "2001:db8::/32", "2001:DB8:0:0::/64",
    "2001:db8::1/128", "2001:db8::/129", "1:0:0:2::/64", "fe80::%eth0/64", "10.0.0.0/", "/8",
]


def reference_address(text: str) -> str:
    return str(address(text))


def reference_network(text: str) -> str:
    """``ipaddress``'s text, an IPv4-mapped network written as the IPv4 network it names."""
    net = ipaddress.ip_network(text)
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is not None and net.prefixlen >= 96:
        return str(ipaddress.ip_network((mapped, net.prefixlen - 96)))
    return str(net)


def outcome(function: Callable[[str], str], text: str) -> str:
    try:
        return function(text)
    except ValueError:
        return "refused"


def random_ipv6(rng: random.Random) -> int:
    """An IPv6 address with runs of zero groups, where compression rules differ between writers."""
    groups = [rng.choice((0, 0, 0, rng.getrandbits(16), rng.getrandbits(4))) for _ in range(8)]
    return int("".join(f"{g:04x}" for g in groups), 16)


@pytest.mark.parametrize("text", EDGE_ADDRESSES)
def test_an_address_edge_case_reads_as_ipaddress_reads_it(text: str) -> None:
    assert outcome(address_text, text) == outcome(reference_address, text)


@pytest.mark.parametrize("text", EDGE_NETWORKS)
def test_a_network_edge_case_reads_as_ipaddress_reads_it(text: str) -> None:
    assert outcome(network_text, text) == outcome(reference_network, text)


def test_random_addresses_and_networks_read_as_ipaddress_reads_them() -> None:
    rng = random.Random(19)
    for _ in range(5_000):
        v6 = ipaddress.IPv6Address(random_ipv6(rng))
        v4 = ipaddress.IPv4Address(rng.getrandbits(32))
        for text in (str(v4), v6.exploded, str(v6), str(v6).upper(), f"::ffff:{v4}"):
            assert address_text(text) == reference_address(text)
        length = rng.randrange(129)
        net6 = ipaddress.IPv6Network((int(v6) >> (128 - length) << (128 - length), length))
        net4 = ipaddress.IPv4Network((int(v4) >> 32 - length % 33 << 32 - length % 33, length % 33))
        for text in (str(net6), f"{net6.network_address.exploded}/{length}", str(net4)):
            assert network_text(text) == reference_network(text)


@pytest.mark.parametrize(("text", "kind"), [
    ("192.0.2.1", IndicatorType.IP), ("2001:db8::1", IndicatorType.IP), ("::ffff:192.0.2.1", IndicatorType.IP),
    ("fe80::1%eth0", IndicatorType.IP), ("01.2.3.4", IndicatorType.DOMAIN), ("1.2.3.256", IndicatorType.DOMAIN),
])
def test_an_address_is_inferred_as_before(text: str, kind: IndicatorType) -> None:
    assert infer_type(text) is kind


def test_an_indicator_of_an_address_or_network_has_the_canonical_value() -> None:
    assert indicator("::FFFF:192.0.2.1", "f").value == "192.0.2.1"
    assert indicator("2001:DB8:0:0:0:0:0:1", "f").value == "2001:db8::1"
    assert indicator("2001:DB8::/32", "f").value == "2001:db8::/32"
    assert indicator("::ffff:10.0.0.0/104", "f").value == "10.0.0.0/8"
    assert indicator("::FFFF:0:0/96", "f").value == "0.0.0.0/0"


def test_every_pattern_of_zero_groups_is_shortened_as_ipaddress_shortens_it() -> None:
    rng = random.Random(5)
    for pattern in itertools.product((0, 1), repeat=8):  # where the runs of zero groups are, and which is longest
        groups = [rng.randrange(1, 1 << 16) if nonzero else 0 for nonzero in pattern]
        text = ":".join(f"{g:x}" for g in groups)
        assert address_text(text) == reference_address(text)
        assert network_text(f"{text}/128") == reference_network(f"{text}/128")

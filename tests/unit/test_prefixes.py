"""The prefix table: most specific wins, every covering prefix in order, both families, boundaries, duplicates."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.lookups.prefixes import PrefixTable, address_key, network_key

NESTED = PrefixTable.build([("10.0.0.0/8", "eight"), ("10.1.0.0/16", "sixteen"), ("10.1.2.0/24", "twenty-four")])


@pytest.mark.parametrize(("ip", "expected"), [
    ("10.1.2.3", "twenty-four"),
    ("10.1.3.3", "sixteen"),
    ("10.2.0.1", "eight"),
    ("11.0.0.1", None),
    ("9.255.255.255", None),
])
def test_the_most_specific_prefix_wins(ip: str, expected: str | None) -> None:
    assert NESTED.most_specific(ip) == expected


def test_covering_lists_every_prefix_most_specific_first() -> None:
    assert NESTED.covering("10.1.2.3") == ("twenty-four", "sixteen", "eight")
    assert NESTED.covering("10.1.9.9") == ("sixteen", "eight")
    assert NESTED.covering("10.200.0.0") == ("eight",)
    assert NESTED.covering("192.0.2.1") == ()


@pytest.mark.parametrize(("ip", "expected"), [
    ("10.1.2.0", "twenty-four"),  # the first address of each range
    ("10.1.2.255", "twenty-four"),  # the last
    ("10.1.1.255", "sixteen"),  # just before the /24
    ("10.1.3.0", "sixteen"),  # just after it
    ("10.1.255.255", "sixteen"),
    ("10.2.0.0", "eight"),  # just after the /16
    ("10.0.0.0", "eight"),
    ("10.255.255.255", "eight"),
    ("11.0.0.0", None),  # just after the /8
])
def test_boundaries(ip: str, expected: str | None) -> None:
    assert NESTED.most_specific(ip) == expected


def test_nested_prefixes_that_share_their_last_address() -> None:
    table = PrefixTable.build([("10.0.0.0/8", 8), ("10.255.0.0/16", 16), ("10.255.255.0/24", 24), ("11.0.0.0/8", 11)])
    assert table.most_specific("10.255.255.255") == 24
    assert table.most_specific("11.0.0.0") == 11
    assert table.covering("10.255.254.255") == (16, 8)


def test_the_ends_of_the_address_space() -> None:
    table = PrefixTable.build([("0.0.0.0/0", "v4 default"), ("255.255.255.255/32", "broadcast"),
                               ("::/0", "v6 default"), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "last")])
    assert table.most_specific("0.0.0.0") == "v4 default"
    assert table.most_specific("255.255.255.254") == "v4 default"
    assert table.covering("255.255.255.255") == ("broadcast", "v4 default")
    assert table.most_specific("::") == "v6 default"
    assert table.covering("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == ("last", "v6 default")


def test_ipv6() -> None:
    table = PrefixTable.build([("2001:db8::/32", "doc"), ("2001:db8:1::/48", "site"), ("10.0.0.0/8", "v4")])
    assert table.most_specific("2001:db8:1::5") == "site"
    assert table.most_specific("2001:db8:1:ffff:ffff:ffff:ffff:ffff") == "site"
    assert table.most_specific("2001:db8:2::") == "doc"
    assert table.most_specific("2001:db9::") is None
    assert table.most_specific("::a00:1") is None  # an IPv4-compatible address is IPv6, not 10.0.0.1


def test_an_ipv4_mapped_address_is_looked_up_as_ipv4() -> None:
    assert NESTED.most_specific("::ffff:10.1.2.3") == "twenty-four"
    assert NESTED.most_specific(ipaddress.IPv6Address("::ffff:10.1.9.9")) == "sixteen"
    mapped = PrefixTable.build([("::ffff:192.168.0.0/112", "mapped net")])
    assert mapped.most_specific("192.168.7.7") == "mapped net"
    assert network_key("::ffff:192.168.0.0/112") == (4, int(ipaddress.IPv4Address("192.168.0.0")), 16)


def test_address_objects_and_strings_agree() -> None:
    for text in ("10.1.2.3", "10.1.3.3", "2001:db8::1", "fe80::1%eth0"):
        assert address_key(text) == address_key(ipaddress.ip_address(text))


def test_a_prefix_declared_twice_keeps_its_last_value() -> None:
    table = PrefixTable.build([("10.0.0.0/8", "first"), ("10.1.0.0/16", "inner"), ("10.0.0.0/8", "last")])
    assert len(table) == 2
    assert table.covering("10.1.0.1") == ("inner", "last")


def test_an_empty_table_finds_nothing() -> None:
    table: PrefixTable[str] = PrefixTable.build([])
    assert len(table) == 0
    assert table.most_specific("10.0.0.1") is None
    assert table.covering("2001:db8::1") == ()


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "not a network",
                                 "2001:db8::/129", "2001:db8::1/64"])
def test_a_network_that_is_not_one_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        PrefixTable.build([(bad, 1)])


@pytest.mark.parametrize("bad", ["10.0.0.256", "010.0.0.1", "", "1.2.3", "::g", "10.0.0.1\x00"])
def test_an_address_that_is_not_one_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        NESTED.most_specific(bad)


def reference(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], ip: str) -> tuple[int, ...]:
    """What ``covering`` must answer, the slow way: every network holding the address, longest first, the last
    declaration of a network winning."""
    addr = ipaddress.ip_address(ip)
    latest = {net: i for i, net in enumerate(networks)}
    holding = [net for net in latest if net.version == addr.version and addr in net]
    return tuple(latest[net] for net in sorted(holding, key=lambda n: -n.prefixlen))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_random_nested_tables_agree_with_a_slow_reference(seed: int) -> None:
    rng = random.Random(seed)
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for _ in range(rng.randint(1, 40)):
        # All inside one /8 (IPv4) or /104 (IPv6), so that prefixes nest, touch and repeat.
        version, base = rng.choice(((4, 0x0A000000), (6, 0x20010DB8 << 96 | 0x0A000000)))
        bits = 32 if version == 4 else 128
        length = rng.randint(bits - 24, bits)
        offset = rng.getrandbits(6) << 18 | rng.getrandbits(4) << 6
        first = (base | offset) >> (bits - length) << (bits - length)
        networks.append(ipaddress.ip_network((first, length)))
    table = PrefixTable.build((net, i) for i, net in enumerate(networks))
    for net in networks:
        for ip in (net.network_address, net.broadcast_address, net.network_address - 1, net.broadcast_address + 1):
            assert table.covering(str(ip)) == reference(networks, str(ip)), (networks, ip)


@pytest.mark.parametrize("text", ["10.0.0.0/8", " 10.1.0.0/16 ", "192.0.2.7", "2001:db8::/32", "::/0", "::1",
                                  "::ffff:10.0.0.0/104", "0.0.0.0/0", "255.255.255.255/32"])
def test_the_fast_network_parser_agrees_with_ipaddress(text: str) -> None:
    net = ipaddress.ip_network(text.strip())
    assert network_key(text) == network_key(net)


def test_a_parsed_key_answers_as_its_address_does() -> None:
    for ip in ("10.1.2.3", "::ffff:10.1.9.9", "192.0.2.1", "2001:db8::1"):
        assert NESTED.most_specific_key(address_key(ip)) == NESTED.most_specific(ip)
        assert NESTED.covering_key(address_key(ip)) == NESTED.covering(ip)

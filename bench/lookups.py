"""Lookup-table benchmark: a 100,000-prefix asset inventory (IPv4 and IPv6, nested), and GeoIP.

    .venv/bin/python -m bench.lookups              # about 30 s
    .venv/bin/python -m bench.lookups --quick      # about 10 s
    .venv/bin/python -m bench.lookups --million    # also build a 1,000,000-prefix table (about 40 s more)

Figures:

- the table's build time and its memory (``tracemalloc``: what the built table holds, and the peak while
  building), for the inventory's prefixes and, with ``--million``, for a million (the scale of CIDR indicators);
- lookups per second of address strings, as events carry them, half inside the inventory and half outside, three
  in four IPv4, for: ``dict.get`` of the same strings (the baseline: a hash lookup, the least any lookup can cost),
  ``ipaddress.ip_address`` alone (what parsing an address costs the usual way), ``PrefixTable.most_specific``,
  ``covering``, ``AssetInventory.lookup`` (the whole asset answer, classification included) and ``GeoIp.lookup``
  on a small City and ASN database built on the spot;
- a Python loop over the prefixes, per lookup, on a few addresses: what the table avoids.

Rounds of each alternate, so drift on a shared machine hits all alike; the median round counts. Speeds are quoted
as ratios to the ``dict.get`` and ``ipaddress.ip_address`` baselines of the same run.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from etl.lookups.assets import Asset, AssetInventory
from etl.lookups.geoip import GeoIp
from etl.lookups.prefixes import PrefixTable
from tests.support.mmdb import asn_record, city_record, write_mmdb

Entry = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Asset]
SITES = [Asset(f"site-{i}", f"team-{i % 17}", ("low", "medium", "high", "critical")[i % 4], True) for i in range(50)]


def inventory_prefixes(count: int, rng: random.Random) -> list[Entry]:
    """``count`` prefixes, three in four IPv4: /16 blocks holding /20s holding /24s and /28s (IPv4), /32s holding
    /48s holding /56s and /64s (IPv6), so that most addresses have a chain of enclosing prefixes."""
    entries: list[Entry] = []
    while len(entries) < count:
        if rng.random() < 0.75:
            block = rng.getrandbits(16) << 16
            lengths, bits = (16, 20, 24, 28), 32
        else:
            block = (0x2001 << 112) | (rng.getrandbits(16) << 96)
            lengths, bits = (32, 48, 56, 64), 128
        for length in lengths:
            for _ in range(1 if length == lengths[0] else 3):
                first = (block | rng.getrandbits(bits - lengths[0])) >> (bits - length) << (bits - length)
                entries.append((ipaddress.ip_network((first, length)), rng.choice(SITES)))
    return entries[:count]


def addresses(entries: Sequence[Entry], count: int, rng: random.Random) -> list[str]:
    """``count`` address strings: half inside a random prefix of ``entries``, half anywhere, three in four IPv4."""
    found = []
    for i in range(count):
        if i % 2:
            net = rng.choice(entries)[0]
            found.append(str(net.network_address + rng.randrange(net.num_addresses)))
        elif rng.random() < 0.75:
            found.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:
            found.append(str(ipaddress.IPv6Address(rng.getrandbits(128))))
    return found


def measure_build(build: Callable[[], Any]) -> tuple[float, float, float]:
    """Seconds to build (without tracing), then MiB held by the result and MiB at the peak (with tracing)."""
    gc.collect()
    started = time.perf_counter()
    build()
    seconds = time.perf_counter() - started
    gc.collect()
    tracemalloc.start()
    kept = build()
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return seconds, held / 2**20, peak / 2**20


def rate(lookup: Callable[[str], object], ips: Sequence[str]) -> float:
    """Lookups per second of ``lookup`` over ``ips``."""
    started = time.perf_counter()
    for ip in ips:
        lookup(ip)
    return len(ips) / (time.perf_counter() - started)


def geoip_databases(folder: Path, entries: Sequence[Entry]) -> tuple[Path, Path]:
    """A City and an ASN database of 2,000 of the inventory's networks (a small stand-in for GeoLite2)."""
    nets = [str(net) for net, _ in entries[:2000]]
    city = write_mmdb(folder / "city.mmdb", {net: city_record("NL") for net in nets}, database_type="GeoLite2-City")
    asn = write_mmdb(folder / "asn.mmdb", {net: asn_record(64500, "Example") for net in nets},
                     database_type="GeoLite2-ASN")
    return city, asn


def linear_scan(entries: Sequence[Entry], ips: Sequence[str]) -> float:
    """Lookups per second of a Python loop over every prefix, per address: the slow way."""
    nets = [net for net, _ in entries]

    def lookup(ip: str) -> object:
        addr = ipaddress.ip_address(ip)
        return max((n for n in nets if n.version == addr.version and addr in n), key=lambda n: n.prefixlen,
                   default=None)

    return rate(lookup, ips)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="50,000 lookups, 3 rounds")
    parser.add_argument("--million", action="store_true", help="also build and measure 1,000,000 prefixes")
    args = parser.parse_args(argv)
    if args.quick:
        args.lookups, args.rounds = 50_000, 3
    rng = random.Random(19)
    entries = inventory_prefixes(args.prefixes, rng)
    ips = addresses(entries, args.lookups, rng)
    seconds, held, peak = measure_build(lambda: AssetInventory.build(entries))
    print(f"{args.prefixes:,} prefixes ({sum(n.version == 4 for n, _ in entries):,} IPv4): built in {seconds:.2f} s, "
          f"table {held:.1f} MiB (peak {peak:.1f} MiB while building)")
    if args.million:
        million = inventory_prefixes(1_000_000, rng)
        texts = [(str(net), asset) for net, asset in million]
        del million
        seconds, held, peak = measure_build(lambda: PrefixTable.build(texts))
        print(f"1,000,000 prefixes from strings: built in {seconds:.2f} s, table {held:.1f} MiB "
              f"(peak {peak:.1f} MiB while building)")
        del texts
    inventory = AssetInventory.build(entries)
    table: PrefixTable[Asset] = PrefixTable.build(entries)
    known = {ip: True for ip in ips}
    with tempfile.TemporaryDirectory() as folder, GeoIp.open(*geoip_databases(Path(folder), entries)) as geoip:
        subjects: dict[str, Callable[[str], object]] = {
            "dict.get (baseline)": known.get,
            "ipaddress.ip_address": ipaddress.ip_address,
            "PrefixTable.most_specific": table.most_specific,
            "PrefixTable.covering": table.covering,
            "AssetInventory.lookup": inventory.lookup,
            "GeoIp.lookup (City + ASN)": geoip.lookup,
        }
        rates: dict[str, list[float]] = {name: [] for name in subjects}
        for _ in range(args.rounds):
            for name, lookup in subjects.items():
                rates[name].append(rate(lookup, ips))
    report(rates, args, linear_scan(entries, ips[:20]))


def report(rates: dict[str, list[float]], args: argparse.Namespace, scan: float) -> None:
    print(f"{args.lookups:,} address strings a round, half inside the inventory; median of {args.rounds} rounds")
    baseline = statistics.median(rates["dict.get (baseline)"])
    parsing = statistics.median(rates["ipaddress.ip_address"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<28} {median:>12,.0f} lookups/s  ({median / baseline:.3f} of dict.get, "
              f"{median / parsing:.2f} x ip_address; min {min(values):,.0f}, max {max(values):,.0f})")
    print(f"  {'a loop over the prefixes':<28} {scan:>12,.1f} lookups/s  ({scan / baseline:.2e} of dict.get; "
          f"20 lookups)")


if __name__ == "__main__":
    main()

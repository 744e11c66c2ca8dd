"""Indicator index benchmark: build time and memory at a million indicators, and what matching costs per event.

    .venv/bin/python -m bench.intel               # about a minute
    .venv/bin/python -m bench.intel --quick       # 100,000 indicators, fewer events

Indicators: a mix of IPv4 and IPv6 addresses, IPv4 and IPv6 CIDRs (nested and disjoint), domains and SHA-256
hashes, from ``SOURCES`` feeds with ``SEVERITIES`` (a tenth of the values named by two feeds), normalised as
``etl.lookups.feeds`` does. Events: the producers' corpus (``etl.dev.corpus``), a third of them given a DNS-like
payload (``query``) so that the domain path is measured too; some peers, hashes and queried domains are listed,
so matches happen. Figures:

- ``build``: seconds for ``IndicatorIndex.build`` over the normalised indicators;
- ``memory``: what the index holds once built and its input dropped (tracemalloc, a second build traced), and
  the peak while its indicators are made and indexed;
- ``candidates`` / ``match``: events per second through ``etl.lookups.candidates`` alone (the baseline: what
  finding the event's addresses, domains and hash costs without any index) and through ``IndicatorIndex.match``;
- ``enrich`` / ``enrich + match``: the enrich actor's code path (unpack, validate, enrich with fake reverse DNS)
  without and with ``match`` on every event. The bound of issue 19 (at least 0.8) is measured on the stage as it
  now is, every table in use and the lookup fields in each event, by ``bench.enrich_tables``.

Rounds alternate, so drift on a shared machine hits both sides alike; the median round counts.
"""

from __future__ import annotations

import argparse
import base64
import gc
import ipaddress
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson

from etl.dev.corpus import events as corpus_events
from etl.lookups import candidates
from etl.lookups.feeds.values import Indicator, indicator
from etl.lookups.indicators import IndicatorIndex
from etl.pipeline import rawbatch
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import Event
from etl.pipeline.validate import validate_batch
from etl.rdns.strategies import FakeResolver

Batch = tuple[list[str], list[int]]
MAX_EVENT_BYTES = 1024 * 1024
TARGET_RATIO = 0.8  # issue 19: enrich with a million indicators keeps at least 80 % of its throughput
SOURCES = tuple(f"feed-{i}" for i in range(20))
SEVERITIES = ("low", "medium", "high", "critical")
# Shares of the indicators, by kind.
# Random IPv4 CIDRs of /16 would cover a third of the address space at this count; feeds list smaller networks.
MIX = {"ipv4": 0.30, "ipv6": 0.10, "cidr4": 0.08, "cidr6": 0.02, "domain": 0.30, "sha256": 0.20}
LISTED_ZONES = tuple(f"bad{i}.example" for i in range(50))


def _value(kind: str, rng: random.Random) -> str:
    if kind == "ipv4":
        return str(ipaddress.IPv4Address(rng.getrandbits(32)))
    if kind == "ipv6":
        return str(ipaddress.IPv6Address(rng.getrandbits(128)))
    if kind == "cidr4":
        return str(ipaddress.IPv4Network((rng.getrandbits(32), rng.choice((20, 24, 24, 28))), strict=False))
    if kind == "cidr6":
        return str(ipaddress.IPv6Network((rng.getrandbits(128), rng.choice((32, 48, 64))), strict=False))
    if kind == "domain":
        return f"h{rng.getrandbits(40):x}.{rng.choice(('com', 'net', 'org', 'ru', 'io'))}"
    return f"{rng.getrandbits(256):064x}"


def make_indicators(count: int, listed: Sequence[str], seed: int = 7) -> list[Indicator]:
    """``count`` indicators of ``MIX`` plus ``listed`` (values the events hold), each through ``indicator``."""
    rng = random.Random(seed)
    found = []
    for kind, share in MIX.items():
        for _ in range(int(count * share)):
            text = _value(kind, rng)
            found.append(indicator(text, rng.choice(SOURCES), rng.choice(SEVERITIES)))
            if rng.random() < 0.1:
                found.append(indicator(text, rng.choice(SOURCES), rng.choice(SEVERITIES)))
    found += [indicator(text, "listed", "high") for text in listed]
    return found


def make_events(count: int) -> tuple[list[bytes], list[str]]:
    """The corpus as raw events, a third of them DNS-like; and values to list so that some of them match."""
    rng = random.Random(5)
    raws: list[bytes] = []
    hashes: set[str] = set()
    for i, event in enumerate(corpus_events(count, hosts=200, seed=3)):
        if i % 3 == 0:
            zone = rng.choice(LISTED_ZONES) if rng.random() < 0.1 else f"z{rng.randrange(1000)}.example"
            args = {"query": f"www.{zone}", "qtype": "A", "dst_ip": "192.0.2.53", "dst_port": 53}
            event["payload"] = base64.b64encode(orjson.dumps(args)).decode()
        metadata = event["metadata"]
        if isinstance(metadata, dict) and "binary_sha256" in metadata and len(hashes) < 20:
            hashes.add(str(metadata["binary_sha256"]))
        raws.append(orjson.dumps(event))
    listed = ["203.0.113.7", "198.51.100.0/28", *LISTED_ZONES, *sorted(hashes)]
    return raws, listed


def parsed(batches: Sequence[Batch]) -> list[Event]:
    return [v.event for texts, binary in batches
            for v in validate_batch(rawbatch.unpack(texts, binary), max_bytes=MAX_EVENT_BYTES)[0]]


def events_per_s(batches: Sequence[Batch], per_event: Callable[[Event], object] | None) -> float:
    """The enrich actor's code path over ``batches``, calling ``per_event`` on each enriched event when given."""
    count, started = 0, time.perf_counter()
    for texts, binary in batches:
        good = [v.event for v in validate_batch(rawbatch.unpack(texts, binary), max_bytes=MAX_EVENT_BYTES)[0]]
        enriched = enrich_batch(good, env="bench", resolver=FakeResolver(), now=datetime.now(UTC))
        if per_event is not None:
            for event in enriched:
                per_event(event)
        count += len(enriched)
    return count / (time.perf_counter() - started)


def lookups_per_s(events: Sequence[Event], lookup: Callable[[Event], object]) -> float:
    started = time.perf_counter()
    for event in events:
        lookup(event)
    return len(events) / (time.perf_counter() - started)


def candidates_only(event: Event) -> object:
    return candidates.addresses(event), candidates.domains(event), candidates.binary_hash(event)


def measure_memory(count: int, listed: Sequence[str]) -> tuple[float, float]:
    """MiB the index holds once built and its input dropped (so its strings are counted, not shared with the
    input), and the peak while the indicators are made and indexed: what a worker loading its feeds goes through."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    indicators = make_indicators(count, listed)
    index = IndicatorIndex.build(indicators)
    del indicators
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(index)
    return (held - before) / 2**20, (peak - before) / 2**20


def median_pair(rounds: int, first: Callable[[], float], second: Callable[[], float]) -> tuple[list[float], ...]:
    a, b = [], []
    for _ in range(rounds):
        a.append(first())
        b.append(second())
    return a, b


def line(name: str, rates: list[float]) -> str:
    return (f"{name:<16}{statistics.median(rates):>12,.0f} events/s  (median of {len(rates)} rounds; "
            f"min {min(rates):,.0f}, max {max(rates):,.0f})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--indicators", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100,000 indicators, 10,000 events, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.indicators, args.events, args.rounds = 100_000, 10_000, 3
    raws, listed = make_events(args.events)
    batches = [rawbatch.pack(raws[i:i + args.batch_size]) for i in range(0, len(raws), args.batch_size)]
    started = time.perf_counter()
    indicators = make_indicators(args.indicators, listed)
    normalised_s = time.perf_counter() - started
    started = time.perf_counter()
    index = IndicatorIndex.build(indicators)
    build_s = time.perf_counter() - started
    counts = {kind.value: n for kind, n in index.counts().items()}
    print(f"{len(indicators):,} indicators ({len(index):,} distinct: {counts}); {args.events:,} events in "
          f"{len(batches)} batches of {args.batch_size}")
    print(f"normalise       {normalised_s:>8.1f} s    build {build_s:.1f} s")
    del indicators
    held, peak = measure_memory(args.indicators, listed)
    print(f"memory          {held:>8.1f} MiB held by the index (peak {peak:.1f} MiB while building)")
    events = parsed(batches)
    hits = sum(1 for e in events if index.match(e))
    print(f"events with a match: {hits:,} of {len(events):,}")
    base, matched = median_pair(args.rounds, lambda: lookups_per_s(events, candidates_only),
                                lambda: lookups_per_s(events, index.match))
    print(line("candidates", base))
    print(line("match", matched))
    print(f"match / candidates = {statistics.median(matched) / statistics.median(base):.2f}")
    plain, with_match = median_pair(args.rounds, lambda: events_per_s(batches, None),
                                    lambda: events_per_s(batches, index.match))
    print(line("enrich", plain))
    print(line("enrich + match", with_match))
    ratio = statistics.median(with_match) / statistics.median(plain)
    verdict = "within" if ratio >= TARGET_RATIO else "NOT within"
    print(f"enrich + match / enrich = {ratio:.2f}: {verdict} the {TARGET_RATIO:.0%} bound")


if __name__ == "__main__":
    main()

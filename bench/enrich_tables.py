"""The enrich stage with full lookup tables against the same stage without any: the bound of issue 19, item 6.

    .venv/bin/python -m bench.enrich_tables            # a million indicators: about two minutes
    .venv/bin/python -m bench.enrich_tables --quick    # 100,000 indicators, 10,000 prefixes

Tables: ``--indicators`` indicators (the mix of ``bench.intel``: addresses, CIDRs, domains, hashes), an asset
inventory of ``--prefixes`` nested IPv4 and IPv6 prefixes (``bench.lookups``) plus the corpus's host network, and
a small City and ASN database (``tests.support.mmdb``) that knows the corpus's external destinations. Events: the
producers' corpus (``etl.dev.corpus``), a third DNS-like, some of their values listed (``bench.intel``).

Rates are events per second of this process's CPU time (``time.process_time``), not of the wall clock: on a
shared machine another process's load then counts less. In each round every batch is done both ways back to back,
the order alternating from batch to batch, so that drift hits both sides alike. Figures, each the median of
``--rounds`` rounds:

- ``stage``: what the enrich actor does with a batch, in one thread: ``rawbatch.unpack``, ``validate_batch``,
  ``enrich_batch`` (fake reverse DNS), ``encode_enriched``; events per second with ``EMPTY`` tables and with the
  full ones, and their ratio (at least ``TARGET_RATIO``);
- ``enrich``: ``enrich_batch`` alone, over the same events already validated: the step the tables slow down;
- ``memory``: what the tables cost the process: RSS before building them and after (their inputs dropped), and
  the peak RSS of the process while building.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from bench.intel import make_events, make_indicators
from bench.lookups import inventory_prefixes
from etl.defaults import DEFAULT_MAX_BATCH_SIZE
from etl.lookups.assets import Asset, AssetInventory
from etl.lookups.geoip import GeoIp
from etl.lookups.indicators import IndicatorIndex
from etl.lookups.tables import EMPTY, LookupTables
from etl.pipeline import rawbatch
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import Event
from etl.pipeline.validate import encode_enriched, validate_batch
from etl.rdns.strategies import FakeResolver
from etl.runtime import gctune
from tests.support.mmdb import asn_record, city_record, write_mmdb

Batch = tuple[list[str], list[int]]
B = TypeVar("B")
MAX_EVENT_BYTES = 1024 * 1024
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
TARGET_RATIO = 0.8  # issue 19: with the tables, the enrich stage keeps at least 80 % of its throughput
# The corpus's hosts are in 10.0.0.0/16; its destinations in the three documentation networks.
CORPUS_SITES = {"10.0.0.0/16": Asset("corpus", "dev", "high", True), "10.0.128.0/17": Asset("lab", "dev", "low", True)}
EXTERNAL = {"192.0.2.0/24": ("US", 64496), "198.51.100.0/24": ("NL", 64500), "203.0.113.0/24": ("DE", 64511)}
GEO_NETWORKS = 2000


def rss_mib() -> float:
    """The process's resident set now, in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def geoip_files(folder: Path, rng: random.Random) -> tuple[Path, Path]:
    """A City and an ASN database: the corpus's external networks and ``GEO_NETWORKS`` random public /24s."""
    nets = {net: place for net, place in EXTERNAL.items()}
    while len(nets) < GEO_NETWORKS:
        nets[f"{rng.randrange(11, 99)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"] = ("FR", 64512)
    city = write_mmdb(folder / "city.mmdb", {net: city_record(country) for net, (country, _) in nets.items()},
                      database_type="GeoLite2-City")
    asn = write_mmdb(folder / "asn.mmdb", {net: asn_record(number, f"AS{number}") for net, (_, number) in nets.items()},
                     database_type="GeoLite2-ASN")
    return city, asn


def build_tables(args: argparse.Namespace, listed: Sequence[str], folder: Path) -> LookupTables:
    """The three tables, timed; their inputs are dropped before this returns."""
    rng = random.Random(19)
    started = time.process_time()
    indicators = make_indicators(args.indicators, listed)
    normalised = time.process_time()
    index = IndicatorIndex.build(indicators)
    indexed = time.process_time()
    del indicators
    prefixes = [*inventory_prefixes(args.prefixes, rng), *CORPUS_SITES.items()]
    inventory = AssetInventory.build(prefixes)
    del prefixes
    built = time.process_time()
    geoip = GeoIp.open(*geoip_files(folder, rng))
    counts = {kind.value: n for kind, n in index.counts().items()}
    print(f"tables: {len(index):,} distinct indicators {counts}, {len(inventory):,} asset prefixes, GeoIP of "
          f"{GEO_NETWORKS:,} networks")
    print(f"build (CPU): normalise {normalised - started:.1f} s, index {indexed - normalised:.1f} s, "
          f"inventory {built - indexed:.1f} s")
    return LookupTables(indicators=index, assets=inventory, geoip=geoip)


def enrich(events: Sequence[Event], tables: LookupTables) -> list[Event]:
    return enrich_batch(events, env="bench", resolver=FakeResolver(), now=datetime.now(UTC), tables=tables)


def stage_work(batch: Batch, tables: LookupTables) -> int:
    """The enrich actor's pure work on one batch; the number of events it hands on."""
    texts, binary = batch
    valid = validate_batch(rawbatch.unpack(texts, binary), max_bytes=MAX_EVENT_BYTES)[0]
    enriched = enrich([v.event for v in valid], tables)
    return len(encode_enriched(enriched, [v.raw for v in valid], max_payload=MAX_PAYLOAD_BYTES)[0])


def enrich_work(events: list[Event], tables: LookupTables) -> int:
    """``enrich_batch`` alone on one batch."""
    return len(enrich(events, tables))


def one_round(batches: Sequence[B], work: Callable[[B, LookupTables], int], tables: LookupTables,
              turn: int) -> tuple[float, float]:
    """Events per CPU second without and with ``tables``: each batch done both ways back to back, in an order
    that alternates from batch to batch, so that drift on a shared machine hits both sides alike."""
    spent = [0.0, 0.0]
    count = 0
    for i, batch in enumerate(batches):
        for side in ((0, 1) if (i + turn) % 2 == 0 else (1, 0)):
            started = time.process_time()
            count += work(batch, tables if side else EMPTY)
            spent[side] += time.process_time() - started
    return count / 2 / spent[0], count / 2 / spent[1]


def compare(name: str, rounds: int, batches: Sequence[B], work: Callable[[B, LookupTables], int],
            tables: LookupTables) -> None:
    """``work`` on every batch without and with ``tables``; prints both medians and their ratio."""
    plain: list[float] = []
    full: list[float] = []
    for turn in range(rounds):
        without, with_tables = one_round(batches, work, tables, turn)
        plain.append(without)
        full.append(with_tables)
    ratio = statistics.median(full) / statistics.median(plain)
    verdict = "within" if ratio >= TARGET_RATIO else "NOT within"
    for label, rates in (("no tables", plain), ("tables", full)):
        print(f"{name:<7}{label:<10}{statistics.median(rates):>10,.0f} events/s  (min {min(rates):,.0f}, "
              f"max {max(rates):,.0f})")
    print(f"{name:<7}tables / no tables = {ratio:.2f}: {verdict} the {TARGET_RATIO:.0%} bound")


def census(events: Sequence[Event]) -> str:
    """How much of the enriched output the tables filled: proof that the lookups found something."""
    intel = sum(1 for e in events if e["intel"])
    listed = sum(1 for e in events if (e["src_asset"] or {}).get("site"))
    geo = sum(1 for e in events if e["dst_geo"])
    return f"of {len(events):,} events: {intel:,} matched intel, {listed:,} hosts listed, {geo:,} with dst_geo"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--indicators", type=int, default=1_000_000)
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100,000 indicators, 10,000 prefixes and events")
    args = parser.parse_args(argv)
    if args.quick:
        args.indicators, args.prefixes, args.events, args.rounds = 100_000, 10_000, 10_000, 3
    gctune.tune()  # as the enrich worker is, from start-up on: its tables are loaded after
    raws, listed = make_events(args.events)
    batches = [rawbatch.pack(raws[i:i + args.batch_size]) for i in range(0, len(raws), args.batch_size)]
    parsed = [[v.event for v in validate_batch(rawbatch.unpack(texts, binary), max_bytes=MAX_EVENT_BYTES)[0]]
              for texts, binary in batches]
    gc.collect()
    before = rss_mib()
    with tempfile.TemporaryDirectory() as folder:
        tables = build_tables(args, listed, Path(folder))
        gc.collect()
        print(f"memory: RSS {before:,.0f} -> {rss_mib():,.0f} MiB with the tables (+{rss_mib() - before:,.0f}), "
              f"peak {peak_rss_mib():,.0f} MiB while building")
        print(f"{args.events:,} events in {len(batches)} batches of {args.batch_size}; "
              + census([e for events in parsed for e in enrich(events, tables)]))
        compare("stage", args.rounds, batches, stage_work, tables)
        compare("enrich", args.rounds, parsed, enrich_work, tables)
        print(f"memo: {len(tables.memo):,} answers remembered in the snapshot")
        assert tables.geoip is not None
        tables.geoip.close()


if __name__ == "__main__":
    main()

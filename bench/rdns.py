"""Reverse-DNS benchmark: enrichment throughput with ``RDNS_MODE=fake`` against ``ptr`` with a warm cache.

    .venv/bin/python bench/rdns.py               # about 15 s
    .venv/bin/python bench/rdns.py --quick       # about 5 s

Runs the enrich actor's code path on realistic batches from ``etl.dev.generator`` (unpack the bridge's raw batch,
validate, enrich: ``rawbatch.unpack``, ``validate_batch``, ``enrich_batch``), in one thread, with no broker
around it. ``ptr`` asks a real DNS server on loopback (``tests.support.ptrserver``) that has a PTR record for every host
and peer address. Figures:

- ``fake``: names derived from the address, no I/O;
- ``ptr warm``: every address already in the cache, the steady state of a worker;
- ``ptr cold``: a fresh resolver, so each batch's new addresses are queried (concurrently) on loopback.

Rounds of fake and warm ptr alternate, so drift on a shared machine hits both alike; the median round counts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from etl.config import Settings
from etl.dev.generator import generate
from etl.pipeline import rawbatch
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.peers import destination_of
from etl.pipeline.validate import validate_batch
from etl.rdns.ptr import PtrResolver
from etl.rdns.strategies import FakeResolver, Resolver
from tests.support.ptrserver import PtrServer

Batch = tuple[list[str], list[int]]
MAX_EVENT_BYTES = 1024 * 1024
TARGET_RATIO = 0.8  # the issue: ptr with a warm cache within 20% of fake


def make_batches(events: int, hosts: int, batch_size: int) -> list[Batch]:
    """The raw events as the bridge packs them, ``batch_size`` a message."""
    raws = list(generate(events, hosts=hosts, seed=3))
    return [rawbatch.pack(raws[i:i + batch_size]) for i in range(0, len(raws), batch_size)]


def addresses(batches: Sequence[Batch]) -> set[str]:
    """Every host and peer address of the batches: what the DNS server must know."""
    found: set[str] = set()
    for texts, binary in batches:
        good = [v.event for v in validate_batch(rawbatch.unpack(texts, binary), max_bytes=MAX_EVENT_BYTES)[0]]
        for event in good:
            found.add(event["metadata"]["host_ip"])
            peer = destination_of(event)
            if peer:
                found.add(peer)
    return found


def run(batches: Sequence[Batch], resolver: Resolver) -> float:
    """Events per second through the enrich actor's code path, over all ``batches``."""
    events = 0
    started = time.perf_counter()
    for texts, binary in batches:
        good = [v.event for v in validate_batch(rawbatch.unpack(texts, binary), max_bytes=MAX_EVENT_BYTES)[0]]
        enriched = enrich_batch(good, env="bench", resolver=resolver, now=datetime.now(UTC))
        events += len(enriched)
    return events / (time.perf_counter() - started)


def ptr_resolver(server: PtrServer) -> PtrResolver:
    return PtrResolver.from_settings(Settings.from_env({"RDNS_MODE": "ptr", "RDNS_NAMESERVERS": server.nameserver}))


def check_names(batches: Sequence[Batch], resolver: Resolver) -> None:
    """The ptr run really named things: a benchmark of nulls would prove nothing."""
    texts, binary = batches[0]
    good = [v.event for v in validate_batch(rawbatch.unpack(texts, binary), max_bytes=MAX_EVENT_BYTES)[0]]
    enriched = enrich_batch(good, env="bench", resolver=resolver, now=datetime.now(UTC))
    unnamed = [e["id"] for e in enriched if e["rdns"] is None or (destination_of(e) and e["dst_rdns"] is None)]
    if unnamed:
        raise SystemExit(f"ptr left {len(unnamed)} events without a name, e.g. {unnamed[:3]}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="20,000 events, 5 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.rounds = 20_000, 5
    batches = make_batches(args.events, args.hosts, args.batch_size)
    known = addresses(batches)
    print(f"{args.events} events in {len(batches)} batches of {args.batch_size}, {len(known)} distinct addresses "
          f"({args.hosts} hosts and their peers)")
    with PtrServer() as server:
        for address in known:
            server.add(address, f"h-{address.replace('.', '-').replace(':', '-')}.example.net", 3600)
        cold = ptr_resolver(server)
        try:
            cold_rate = run(batches, cold)
            queries = server.queries()
            check_names(batches, cold)
            fake_rates, warm_rates = [], []
            for _ in range(args.rounds):
                fake_rates.append(run(batches, FakeResolver()))
                warm_rates.append(run(batches, cold))  # now warm: the cold pass filled its cache
        finally:
            cold.close()
    report(fake_rates, warm_rates, cold_rate, queries, len(known))


def report(fake: list[float], warm: list[float], cold_rate: float, queries: int, distinct: int) -> None:
    fake_rate, warm_rate = statistics.median(fake), statistics.median(warm)
    ratio = warm_rate / fake_rate
    print(f"fake      {fake_rate:>10,.0f} events/s  (median of {len(fake)} rounds; "
          f"min {min(fake):,.0f}, max {max(fake):,.0f})")
    print(f"ptr warm  {warm_rate:>10,.0f} events/s  (median of {len(warm)} rounds; "
          f"min {min(warm):,.0f}, max {max(warm):,.0f})")
    print(f"ptr cold  {cold_rate:>10,.0f} events/s  (one pass, {queries} PTR queries for {distinct} addresses)")
    verdict = "within" if ratio >= TARGET_RATIO else "NOT within"
    print(f"ptr warm / fake = {ratio:.2f}: {verdict} 20% of fake")


if __name__ == "__main__":
    main()

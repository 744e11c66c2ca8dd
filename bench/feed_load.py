"""Loading indicator feeds from files: what every enrich worker does at start and on each change of a feed.

    .venv/bin/python -m bench.feed_load            # a million indicators in each line format: about a minute
    .venv/bin/python -m bench.feed_load --quick    # 100,000

Writes ``--indicators`` values (the mix of ``bench.intel``: addresses, CIDRs, domains, hashes) as a plain list, a
CSV feed and a JSON-lines feed in a temporary directory, then for each: seconds of CPU for ``read_feeds``
(reading and normalising every line) and for ``IndicatorIndex.build`` on what it loaded, best of ``--rounds``,
and indicators per second. The values are made once, before any timing, so only the loading is measured.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import orjson

from bench.intel import MIX, SEVERITIES, SOURCES, _value
from etl.lookups.feeds import read_feeds
from etl.lookups.indicators import IndicatorIndex

T = TypeVar("T")


def make_values(count: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """``count`` ``(value, source, severity)`` in the proportions of ``MIX``, shuffled as a real feed is."""
    rng = random.Random(seed)
    rows = [(_value(kind, rng), rng.choice(SOURCES), rng.choice(SEVERITIES))
            for kind, share in MIX.items() for _ in range(int(count * share))]
    rng.shuffle(rows)
    return rows


def write_feeds(folder: Path, rows: Sequence[tuple[str, str, str]]) -> dict[str, Path]:
    """The same rows in each line format; the plain list has values only."""
    plain = folder / "plain.txt"
    plain.write_text("".join(f"{value}\n" for value, _, _ in rows))
    table = folder / "feed.csv"
    with open(table, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(("value", "source", "severity"))
        writer.writerows(rows)
    lines = folder / "feed.jsonl"
    lines.write_bytes(b"".join(orjson.dumps({"value": v, "source": s, "severity": sev}) + b"\n"
                               for v, s, sev in rows))
    return {"plain list": plain, "CSV": table, "JSON lines": lines}


def best_of(rounds: int, work: Callable[[], T]) -> tuple[float, T]:
    """The least CPU seconds ``work`` took in ``rounds`` runs, and what its first run returned."""
    started = time.process_time()
    result = work()
    best = time.process_time() - started
    for _ in range(rounds - 1):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best, result


def measure(name: str, path: Path, rounds: int) -> None:
    load_s, indicators = best_of(rounds, lambda: list(read_feeds([path], [])))
    build_s, index = best_of(rounds, lambda: IndicatorIndex.build(indicators))
    print(f"{name:<11} {len(indicators):>9,} indicators: load {load_s:5.1f} s ({len(indicators) / load_s:>9,.0f}/s), "
          f"index {build_s:4.1f} s; {len(index):,} distinct")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--indicators", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100,000 indicators")
    args = parser.parse_args(argv)
    if args.quick:
        args.indicators = 100_000
    rows = make_values(args.indicators)
    with tempfile.TemporaryDirectory() as folder:
        for name, path in write_feeds(Path(folder), rows).items():
            measure(name, path, args.rounds)


if __name__ == "__main__":
    main()

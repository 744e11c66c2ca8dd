"""Lookup reload benchmark: what an enrich process's memory does while it reloads a million-indicator feed.

    .venv/bin/python -m bench.reload              # about two minutes
    .venv/bin/python -m bench.reload --quick      # 100,000 indicators
    .venv/bin/python -m bench.reload --files 10   # the same indicators split into 10 files of a feed directory

The feed is one CSV file (``type,value,source,severity``) of ``bench.intel``'s mix (or ``--files`` files of a
directory), loaded through the worker's own
code (``etl.lookups.live.LiveLookups``): once at the start, then again after the file is replaced (written beside,
renamed over) with a feed of other values, as an operator's update would. Figures, from the process's resident
memory (RSS, sampled every 20 ms):

- ``start``: the process before any table; ``loaded``: once the first table is in use; ``reload peak``: the most
  it held while loading the new table beside the old one; ``after``: once the new table is swapped in and the
  old one dropped (CPython keeps much of the freed memory for reuse, so this stays near the peak);
- the seconds each load took.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench.intel import make_indicators
from etl.lookups.live import LiveLookups
from etl.lookups.sources import table_sources

MIB = 1024 * 1024
SAMPLE_S = 0.02


class PeakRss:
    """The process's highest RSS while it runs, sampled on a thread."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            if self._done.wait(SAMPLE_S):
                return


def write_feeds(folder: Path, count: int, files: int, seed: int) -> None:
    """``count`` indicators of ``bench.intel``'s mix as ``files`` CSV feeds in ``folder``, each written beside and
    renamed over the one before, by a child process: the objects made to write them would otherwise stay in this
    process's memory figures."""
    child = multiprocessing.get_context("fork").Process(target=_write, args=(folder, count, files, seed))
    child.start()
    child.join()
    assert child.exitcode == 0, child.exitcode


def _write(folder: Path, count: int, files: int, seed: int) -> None:
    items = make_indicators(count, (), seed=seed)
    for n in range(files):
        path = folder / f"feed-{n}.csv"
        beside = path.with_name(f".{path.name}.new")
        with beside.open("w") as out:
            out.write("type,value,source,severity\n")
            for item in items[n::files]:
                out.write(f"{item.type},{item.value},{item.source},{item.severity}\n")
        os.replace(beside, path)


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / MIB


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 indicators instead of 1,000,000")
    parser.add_argument("--files", type=int, default=1, help="files the feed is split into (default: 1)")
    args = parser.parse_args(argv)
    count = 100_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as folder:
        write_feeds(Path(folder), count, args.files, seed=7)
        start = rss_mib()
        lookups = LiveLookups(table_sources(intel_paths=[folder]), 0)
        began = time.perf_counter()
        lookups.start()
        first_s = time.perf_counter() - began
        entries = len(lookups.current().indicators or ())
        loaded = rss_mib()
        write_feeds(Path(folder), count, args.files, seed=8)
        with PeakRss() as peak:
            began = time.perf_counter()
            swapped = lookups.check()
            reload_s = time.perf_counter() - began
        after = rss_mib()
    assert swapped == ["intel"], swapped
    print(f"{entries:,} distinct indicators in {args.files} file(s); first load {first_s:.1f} s, "
          f"reload {reload_s:.1f} s")
    print(f"RSS start {start:.1f} MiB, loaded {loaded:.1f} MiB (+{loaded - start:.1f}), reload peak "
          f"{peak.peak / MIB:.1f} MiB (+{peak.peak / MIB - start:.1f}), after {after:.1f} MiB")


if __name__ == "__main__":
    main()

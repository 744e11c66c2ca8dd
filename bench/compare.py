"""End-to-end throughput of two checkouts, interleaved: ``python -m bench.compare BEFORE AFTER [--rounds R]``.

A change that should not move throughput (a refactor) is judged against the noise of this machine: each round runs
one end-to-end run (``bench.e2e``, fresh servers, the default pools) in BEFORE, then one in AFTER, so drift in the
machine's load hits both alike. Prints each run's events/s, then the median of each and AFTER's ratio to BEFORE.

Both sides publish the same events, generated here once (``--shape``, the producers' by default) and read from a
file, whatever generator each checkout has; without duplicates, which a checkout before them would wait for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import load
from etl.dev.corpus import SHAPES

DEFAULT_EVENTS = 100_000
DEFAULT_ROUNDS = 3
BATCH = 500
RUN_TIMEOUT_S = 900

# Run inside a checkout, with only the bench API both sides share.
_ONE_RUN = """
import json, os, shutil, sys, tempfile
from pathlib import Path
from bench import _servers, e2e, load
root = Path(tempfile.mkdtemp(prefix="etl-compare-"))
stack = _servers.start(root / "servers", lambda *args: None)
try:
    os.environ.update(stack.env)
    payloads = Path(sys.argv[1]).read_bytes().splitlines()
    run = e2e.run(stack, payloads, e2e.Shape(int(sys.argv[2])), "e2e", root / "logs")
    print(json.dumps({"rate": run.rate, "complete": run.complete}))
finally:
    _servers.stop(stack)
    shutil.rmtree(root, ignore_errors=True)
"""


def one_run(checkout: Path, corpus: Path) -> float:
    """events/s of one end-to-end run in ``checkout`` of the events in ``corpus`` (one a line). Raises
    ``RuntimeError`` when the run fails or is incomplete."""
    done = subprocess.run([sys.executable, "-c", _ONE_RUN, str(corpus), str(BATCH)], cwd=checkout,
                          env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"run in {checkout} failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if not result["complete"]:
        raise RuntimeError(f"run in {checkout} did not complete")
    return float(result["rate"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--shape", choices=SHAPES, default=SHAPES[0])
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="etl-compare-") as tmp:
        corpus = Path(tmp) / "events"
        corpus.write_bytes(b"\n".join(load.events(opts.events, seed=1, shape=opts.shape, duplicate_every=0)))
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for round_no in range(1, opts.rounds + 1):
            for label, checkout in (("before", opts.before), ("after", opts.after)):
                rate = one_run(checkout.resolve(), corpus)
                rates[label].append(rate)
                print(f"round {round_no} {label:<6} {rate:>9,.0f} events/s", flush=True)
    before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
    print(f"median: before {before:,.0f}, after {after:,.0f} events/s; after/before {after / before:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

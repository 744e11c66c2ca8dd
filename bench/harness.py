"""``bench/run``: throughput, latency, cost and scaling of the pipeline, beside baselines from the same run.

    bench/run                    # 100,000 events
    bench/run --quick            # 5,000 events, two rounds
    bench/run --events 50000 --shape simple --json out.json

Starts the local default's real servers (NATS, Redis, PostgreSQL, FalkorDB) in a temporary directory, then
measures, each from empty servers: the raw ceilings (``bench.ceilings``), each stage alone (``bench.stages``), both
the best of ``REPEATS`` runs; the pipeline end to end (``bench.e2e``) with the queues' Redis on ``appendfsync
everysec`` and on ``always``, interleaved over ``--rounds`` rounds (``bench.durability``), with latency at fixed
rates; the per-event baseline, the scaling and a ten times longer run for memory, on ``always``; then the graph's
figures again on a local Neo4j (``bench.neo4j``), when Java is there. Prints a table and writes everything to JSON.

The events are the producers' shape (``etl.dev.corpus``: duplicates included, which the end-to-end runs publish
and the sinks hold once); the ceilings and the stages alone take them without their duplicates, since they count
what they write. ``--shape simple`` measures the one flat shape of the runs before.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import _servers, ceilings, durability, e2e, load, neo4j, stages
from bench.report import Row, cost_table, cpu_table, table, target, write_json
from bench.stages import best
from etl.defaults import DEFAULT_MAX_BATCH_SIZE as BATCH
from etl.dev.corpus import SHAPES
from etl.pipeline.handoff import Handoff
from etl.stages import ENRICH, SINK_STAGES

DEFAULT_EVENTS = 100_000
QUICK_EVENTS = 5_000
DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"
BATCH_SIZES = (1, 10, 100, 500)  # the default (etl.config) is the main run
MEMORY_FACTOR = 10
FLAT_RATIO = 1.25
# A ceiling or a stage alone runs for a second or two, where a neighbour's burst on this shared machine moves one
# run by 20 %; each is run this many times and its best run kept, on both sides of a ratio alike.
REPEATS = 3
ROUNDS = 3  # of everysec against always; --quick runs QUICK_ROUNDS
QUICK_ROUNDS = 2
SEED_STYLE = "seed-style service"
SEED_STYLE_SHARE = 5  # its run takes this many times the per-event baseline's events, being faster than that shape


@dataclass(frozen=True)
class Options:
    events: int
    quick: bool
    json_path: Path
    memory_factor: int
    keep: bool
    shape: str = SHAPES[0]
    rounds: int = ROUNDS

    @property
    def latency_s(self) -> float:
        return 3.0 if self.quick else 20.0

    @property
    def repeats(self) -> int:
        """Runs of each ceiling and of each stage alone; the best of each is compared (see ``best``)."""
        return 1 if self.quick else REPEATS

    def scaled(self, batch: int) -> int:
        """Events for a run at ``batch`` events per batch: fewer for the small sizes, which are much slower."""
        share = {1: 100, 10: 20}.get(batch, 2)
        return max(300 if self.quick else 1000, self.events // share)


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events, shorter latency runs")
    parser.add_argument("--events", type=int, help=f"events per end-to-end run (default {DEFAULT_EVENTS:,})")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write (default {DEFAULT_JSON})")
    parser.add_argument("--memory-factor", type=int, default=MEMORY_FACTOR,
                        help="the memory run is this many times longer than the main one (0: skip it)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    parser.add_argument("--shape", choices=SHAPES, default=SHAPES[0], help="the events' shape (default %(default)s)")
    parser.add_argument("--rounds", type=int, help=f"rounds of everysec against always (default {ROUNDS}, "
                                                   f"{QUICK_ROUNDS} with --quick)")
    args = parser.parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else DEFAULT_EVENTS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    return Options(max(BATCH, events // BATCH * BATCH), args.quick, args.json, args.memory_factor, args.keep,
                   args.shape, max(1, rounds))


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def measure_ceilings(stack: _servers.Stack, payloads: list[bytes], events: list[dict[str, Any]],
                     batch: int, repeats: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    settings = stack.settings

    def fresh(measure: Callable[[], float]) -> Callable[[], float]:
        return lambda: (_servers.reset(stack), measure())[1]

    measures: dict[str, Callable[[], float]] = {
        "nats_fetch_ack": lambda: asyncio.run(ceilings.nats_fetch_ack(settings, payloads, batch)),
        "nats_publish": lambda: asyncio.run(ceilings.nats_publish(settings, events, batch)),
        "copy": lambda: ceilings.bare_copy(settings, events, batch),
        "merge": lambda: ceilings.bare_merge(settings, events, batch),
    }
    out, every = {}, {}
    for name, measure in measures.items():
        out[name], every[name] = best(fresh(measure), repeats)
        say(f"ceiling {name}: {out[name]:,.0f} events/s (runs: {', '.join(f'{r:,.0f}' for r in every[name])})")
    return out, every


def measure_stages(stack: _servers.Stack, payloads: list[bytes], events: list[dict[str, Any]], batch: int,
                   logs: Path, repeats: int) -> tuple[dict[str, stages.StageResult], dict[str, list[float]]]:
    from etl import actors  # the broker, from the stack's environment (set in main)

    chunks = ceilings.batches(payloads, batch)
    event_chunks = [list(c) for c in ceilings.batches(events, batch)]
    handoff = Handoff.from_settings(actors.app.broker, actors.app.settings)
    fills: dict[str, Callable[[], None]] = {
        ENRICH.name: lambda: [handoff.raw(list(c)) for c in chunks] and None,
        **{s.name: lambda s=s: [handoff.send(s, c) for c in event_chunks] and None for s in SINK_STAGES},
    }
    measures: dict[str, Callable[[], stages.StageResult]] = {
        "bridge": lambda: stages.bridge(stack, payloads, batch, logs / "stage-bridge")}
    for name, fill in fills.items():
        measures[name] = lambda name=name, fill=fill: stages.pool(stack, name, fill, len(events), batch,
                                                                 logs / f"stage-{name}")
    out, every = {}, {}
    for name, measure in measures.items():
        out[name], every[name] = best(measure, repeats, rate=lambda r: r.rate)
        say(f"stage {name}: {out[name].rate:,.0f} events/s (runs: {', '.join(f'{r:,.0f}' for r in every[name])})")
    return out, every


def run_e2e(stack: _servers.Stack, opts: Options, payloads: list[bytes],
            logs: Path) -> tuple[dict[str, e2e.RunResult], durability.Durability]:
    runs: dict[str, e2e.RunResult] = {}

    def one(label: str, events: list[bytes], shape: e2e.Shape, **kw: Any) -> e2e.RunResult:
        runs[label] = result = e2e.run(stack, events, shape, label, logs, corpus_shape=opts.shape, **kw)
        say(f"{label}: {result.events:,} events in {result.seconds:.1f}s = {result.rate:,.0f} events/s"
            f"{'' if result.complete else ' (INCOMPLETE)'}")
        return result

    rounds = durability.measure(stack, opts.rounds, lambda label, **kw: one(label, payloads, e2e.Shape(BATCH), **kw),
                                opts.latency_s)
    one("per-event baseline", payloads[:opts.scaled(1)], e2e.Shape(batch=1, per_event=True))
    one(SEED_STYLE, payloads[:opts.scaled(1) * SEED_STYLE_SHARE], e2e.Shape(batch=1, seed_style=True))
    one("2 processes per pool", payloads[:opts.scaled(BATCH)], e2e.Shape(BATCH, processes=2))
    for batch in BATCH_SIZES:
        if batch != BATCH:
            one(f"batch {batch}", payloads[:opts.scaled(batch)], e2e.Shape(batch=batch))
    if opts.memory_factor:
        longer = load.events(opts.events * opts.memory_factor, seed=3, shape=opts.shape)
        one(f"{opts.memory_factor}x longer", longer, e2e.Shape(BATCH))
    return runs, rounds


def rows(ceil: dict[str, float], st: dict[str, stages.StageResult], runs: dict[str, e2e.RunResult],
         rounds: durability.Durability, opts: Options) -> list[Row]:
    main, pe = runs["e2e"], runs["per-event baseline"]
    always = rounds.median(durability.ALWAYS)
    out = [
        target(Row(f"end to end, all sinks, always (median of {opts.rounds})", always, "ev/s"),
               at_least=10_000, label=">=10k"),
        *durability.rows(rounds),
        target(Row("end to end vs per-event shape", always, "ev/s", "per-event baseline", pe.rate), 10,
               label=">=10x"),
        Row("per-event baseline, end to end", pe.rate, "ev/s"),
        Row("end to end, everysec vs seed-style service", rounds.median(durability.EVERYSEC), "ev/s", SEED_STYLE,
            runs[SEED_STYLE].rate),
        Row("seed-style one-event-at-a-time service", runs[SEED_STYLE].rate, "ev/s"),
        target(Row("stage: bridge (process, real enqueue)", st["bridge"].rate, "ev/s", "nats-py fetch+ack",
                   ceil["nats_fetch_ack"]), 0.8, label=">=0.8"),
        Row("stage: enrich pool", st["enrich"].rate, "ev/s"),
        target(Row("stage: publish pool", st["publish"].rate, "ev/s", "JetStream publish, batch acks",
                   ceil["nats_publish"]), 0.7, label=">=0.7"),
        target(Row("stage: timescale pool", st["timescale"].rate, "ev/s", "bare COPY", ceil["copy"]), 0.7,
               label=">=0.7"),
        target(Row("stage: graph pool", st["graph"].rate, "ev/s", "bare UNWIND merge", ceil["merge"]), 0.7,
               label=">=0.7"),
    ]
    for name, rate in ceil.items():
        out.append(Row(f"raw ceiling: {name}", rate, "ev/s"))
    out += latency_rows(main, durability.ALWAYS) + latency_rows(runs[durability.MAIN_LABEL[durability.EVERYSEC]],
                                                                durability.EVERYSEC)
    for label, run in runs.items():
        if not label.startswith("e2e") and label not in ("per-event baseline", SEED_STYLE) and "longer" not in label:
            out.append(Row(f"scaling: {label}", run.rate, "ev/s", f"e2e (batch {BATCH}, pool defaults)", main.rate))
    out += memory_rows(runs, opts)
    return out


def latency_rows(main: e2e.RunResult, policy: str) -> list[Row]:
    out = []
    for fraction, lat in main.latencies.items():
        for p in ("p50", "p95", "p99"):
            row = Row(f"latency {p} at {fraction}, {policy} ({lat['rate']:,} ev/s)", lat[f"{p}_ms"], "ms")
            if fraction == "50%" and p == "p99":
                row = target(row, below=1000, label="<1s")
            out.append(row)
    return out


def memory_rows(runs: dict[str, e2e.RunResult], opts: Options) -> list[Row]:
    """Flat memory: over the longer run, each pipeline process's peak RSS, and Redis ``used_memory``, in its second
    half against its first half (a leak grows with the events processed; the first half is already warm)."""
    longer = next((r for label, r in runs.items() if "longer" in label), None)
    if longer is None:
        return []
    series = {f"RSS {k}": v for k, v in longer.costs.rss_series_mib.items() if k.startswith(("bridge", "worker"))}
    series["Redis used_memory"] = longer.costs.redis_series_mib
    out = []
    for label, values in series.items():
        half = len(values) // 2
        first, second = max(values[:half], default=0.0), max(values[half:], default=0.0)
        out.append(target(Row(f"{label}, {opts.memory_factor}x run, 2nd half peak", second, "MiB",
                              "1st half peak", first), None, below=first * FLAT_RATIO + 1e-9,
                          label=f"<={FLAT_RATIO}x"))
    main_rss = sum(v for k, v in runs["e2e"].costs.peak_rss_mib.items() if k.startswith(("bridge", "worker")))
    long_rss = sum(v for k, v in longer.costs.peak_rss_mib.items() if k.startswith(("bridge", "worker")))
    out.append(Row(f"peak RSS, pipeline processes, {opts.memory_factor}x run", long_rss, "MiB", "main run", main_rss))
    return out


def git_revision() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str]) -> int:
    opts = parse(argv)
    root = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    started = time.monotonic()
    info = {"command": " ".join(["bench/run", *argv]), "machine": _servers.machine(),
            "python": platform.python_version(), "revision": git_revision(), "events": opts.events, "batch": BATCH}
    stack = None
    try:
        stack = _servers.start(root / "servers", say)
        os.environ.update(stack.env)
        payloads = load.events(opts.events, seed=1, shape=opts.shape)
        distinct = load.unique(payloads)
        info.update(shape=opts.shape, distinct_events=len(distinct), rounds=opts.rounds)
        enriched = ceilings.enriched(distinct)
        ceil, info["ceiling_runs"] = measure_ceilings(stack, distinct, enriched, BATCH, opts.repeats)
        st, info["stage_runs"] = measure_stages(stack, distinct, enriched, BATCH, root / "logs", opts.repeats)
        runs, rounds = run_e2e(stack, opts, payloads, root / "logs")
        neo = neo4j.measure(stack, payloads, enriched, BATCH, root / "logs", opts.repeats, say)
    finally:
        _servers.stop_and_clean(stack, root, keep=opts.keep, say=say)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["seconds"] = round(time.monotonic() - started, 1)
    report(opts, info, ceil, st, runs, rounds, neo)
    return 0


def report(opts: Options, info: dict[str, Any], ceil: dict[str, float], st: dict[str, stages.StageResult],
           runs: dict[str, e2e.RunResult], rounds: durability.Durability, neo: neo4j.Neo4jResult | None) -> None:
    table_rows = rows(ceil, st, runs, rounds, opts) + neo4j.rows(neo, runs["e2e"])
    main_costs = runs["e2e"].costs
    print(f"\n{info['command']}: {info['machine']}, load average at start {info['machine']['load_average']}, "
          f"at end {info['load_average_end']}; {info['seconds']:.0f}s\n")
    print(table(table_rows))
    print(f"\nraw ceilings and stages alone: the best of {opts.repeats} run(s) each (every run is in the JSON)")
    print(f"\ncost of the end-to-end run, always ({runs['e2e'].events:,} events):\n")
    print(cost_table(main_costs.per_1000(runs["e2e"].events), main_costs.peak_rss_mib, main_costs.redis_peak_used_mib))
    columns = {"e2e everysec": durability.MAIN_LABEL[durability.EVERYSEC],
               "e2e always": durability.MAIN_LABEL[durability.ALWAYS], "per-event shape": "per-event baseline",
               "seed-style": SEED_STYLE}
    print("\nCPU per event of every process, servers included (µs; the first round's runs):\n")
    print(cpu_table({column: runs[label].costs.per_1000(runs[label].events) for column, label in columns.items()
                     if label in runs}))
    data = {**info, "table": [r.as_dict() for r in table_rows], "ceilings": ceil,
            "stages": {k: {"rate": v.rate, "events": v.events, "seconds": v.seconds, "cpu_s": v.costs.cpu_s,
                           "cpu_s_per_1000": v.costs.per_1000(v.events)} for k, v in st.items()},
            "runs": {k: {**{f: getattr(v, f) for f in ("events", "seconds", "publish_seconds", "complete")},
                         "rate": v.rate, "latencies": v.latencies, "costs": asdict(v.costs),
                         "cpu_s_per_1000": v.costs.per_1000(v.events)} for k, v in runs.items()},
            "durability": rounds.as_json(), "neo4j": neo4j.as_json(neo)}
    write_json(opts.json_path, data)
    print(f"\nwritten to {opts.json_path}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Overload benchmark: ten times what the sinks can absorb, and memory must stay flat.

    .venv/bin/python -m bench.overload            # about 90 s
    .venv/bin/python -m bench.overload --quick    # about 30 s

Starts its own NATS, Redis, PostgreSQL and FalkorDB in a temporary directory and the real pipeline
(``etl.dev.supervisor.Pipeline``: the bridge process and one Dramatiq worker per pool). The slow sink is the graph
database itself: the benchmark lets FalkorDB run only ``--sink-duty`` of the time (SIGSTOP/SIGCONT), so the
graph pool becomes the bottleneck and the pipeline code stays exactly as in production. Then:

1. calibration: publishes a burst and measures the rate at which every sink absorbs it (the drain rate);
2. overload: publishes at ``--factor`` times that rate for ``--overload-s`` seconds;
3. drain: stops publishing, gives FalkorDB its full speed back, and waits until every event is in every sink.

Every second it samples the published and stored counts, the Dramatiq queue depths, whether the bridge is
paused (from its log), Redis ``used_memory`` and the RSS of every pipeline process (Dramatiq's forked workers
included) and of the NATS and Redis servers. It prints them as a table, then a verdict: how much the JetStream
backlog grew over the saturated part of the overload (from the bridge's first pause on), the max/min ratio of
each memory figure over the same samples, and whether the backlog drained.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bench import _servers
from etl.broker import redis_client
from etl.config import Settings
from etl.dev.generator import generate
from etl.dev.services import Servers
from etl.dev.supervisor import Pipeline
from etl.natsio.conn import connect
from etl.pipeline.backlog import queue_depths
from etl.pipeline.rawstream import ensure_raw_stream
from etl.sinks.migrate import migrate
from etl.stages import GRAPH, QUEUES, TIMESCALE

DEFAULT_OVERLOAD_S = 20.0
QUICK_OVERLOAD_S = 10.0
DEFAULT_CALIBRATION_EVENTS = 3000
QUICK_CALIBRATION_EVENTS = 1500
DEFAULT_FACTOR = 10.0
# FalkorDB runs this fraction of every DUTY_PERIOD_S during calibration and overload: the slow sink.
DEFAULT_SINK_DUTY = 0.15
DUTY_PERIOD_S = 0.1
SAMPLE_INTERVAL_S = 1.0
PUBLISH_TICK_S = 0.05
PUBLISH_CHUNK = 500
DRAIN_TIMEOUT_S = 300.0
CALIBRATION_TIMEOUT_S = 120.0
HOSTS = 50
WARMUP_EVENTS = 200
MIB = 1024 * 1024


@dataclass(frozen=True)
class Options:
    overload_s: float
    calibration_events: int
    factor: float
    sink_duty: float
    max_queue_depth: int | None
    keep: bool


@dataclass
class Sample:
    t_s: float
    phase: str
    published: int
    stored: int
    merged: int
    in_jetstream: int
    depths: dict[str, int]
    paused: bool
    redis_used: int
    rss: dict[str, int]  # process label -> bytes
    sunk: int = 0  # in every sink: min(stored, merged, enriched stream)


@dataclass
class Run:
    settings: Settings
    pipeline: Pipeline
    servers: Servers
    js: JetStreamContext
    events: Iterator[bytes]
    started: float = field(default_factory=time.monotonic)
    published: int = 0
    samples: list[Sample] = field(default_factory=list)
    bridge_log_offset: int = 0
    bridge_paused: bool = False
    first_pause_s: float | None = None


async def duty_cycle(pid: int, duty: float, stop: asyncio.Event) -> None:
    """Let process ``pid`` run ``duty`` of every ``DUTY_PERIOD_S`` until ``stop``; leave it running."""
    try:
        while not stop.is_set():
            os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(DUTY_PERIOD_S * duty)
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(DUTY_PERIOD_S * (1 - duty))
    finally:
        os.kill(pid, signal.SIGCONT)


async def publish(run: Run, count: int) -> None:
    """Publish ``count`` events as fast as JetStream acknowledges them."""
    while count > 0:
        chunk = [next(run.events) for _ in range(min(count, PUBLISH_CHUNK))]
        await asyncio.gather(*(run.js.publish(run.settings.nats_subject_raw, e) for e in chunk))
        run.published += len(chunk)
        count -= len(chunk)


async def publish_at(run: Run, rate: float, duration_s: float) -> None:
    """Publish at ``rate`` events/s for ``duration_s`` seconds (as fast as possible if that rate is too high)."""
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < duration_s:
        due = int(rate * elapsed) - sent
        if due > 0:
            await publish(run, due)
            sent += due
        await asyncio.sleep(PUBLISH_TICK_S)


def process_table(run: Run) -> dict[str, psutil.Process]:
    """Every process whose memory we watch, labelled: pipeline children (with their forks) and the servers."""
    out: dict[str, psutil.Process] = {}
    for name, proc in run.pipeline.procs.items():
        parent = psutil.Process(proc.pid)
        out[name] = parent
        for i, child in enumerate(parent.children(recursive=True)):
            out[f"{name}/{i}"] = child
    for server in (run.servers.nats, run.servers.redis):
        assert server.proc is not None
        out[f"{server.name}-server"] = psutil.Process(server.proc.pid)
    return out


def rss_bytes(processes: dict[str, psutil.Process]) -> dict[str, int]:
    out: dict[str, int] = {}
    for label, proc in processes.items():
        try:
            out[label] = proc.memory_info().rss
        except psutil.NoSuchProcess:
            out[label] = 0
    return out


def read_bridge_log(run: Run) -> None:
    """Follow the bridge's log for its backpressure transitions."""
    path = run.pipeline.log_dir / "bridge-0.log"
    with open(path, "rb") as f:
        f.seek(run.bridge_log_offset)
        text = f.read().decode(errors="replace")
    end = text.rfind("\n") + 1
    run.bridge_log_offset += len(text[:end].encode())
    for line in text[:end].splitlines():
        if "bridge paused" in line or "cannot read the queue depth" in line:
            run.bridge_paused = True
            if run.first_pause_s is None:
                run.first_pause_s = time.monotonic() - run.started
        elif "bridge resumed" in line:
            run.bridge_paused = False


def blocking_counts(settings: Settings) -> tuple[int, int, dict[str, int], int]:
    client = redis_client(settings)
    try:
        depths = queue_depths(client)
        used = int(client.info("memory")["used_memory"])
    finally:
        client.close()
    return TIMESCALE.count(settings), GRAPH.count(settings), depths, used


async def jetstream_counts(run: Run) -> tuple[int, int]:
    """Events the bridge has not acked yet (pending or in its hands), and events on the enriched stream."""
    s = run.settings
    try:
        info = await run.js.consumer_info(s.nats_stream, s.nats_consumer)
        waiting = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    except NotFoundError:  # the bridge creates its consumer when it starts
        waiting = run.published
    try:
        enriched = int((await run.js.stream_info(s.nats_enriched_stream)).state.messages)
    except NotFoundError:  # the publish pool creates it when it starts
        enriched = 0
    return waiting, enriched


async def sample(run: Run, phase: str, processes: dict[str, psutil.Process]) -> Sample:
    stored, merged, depths, used = await asyncio.to_thread(blocking_counts, run.settings)
    waiting, enriched = await jetstream_counts(run)
    read_bridge_log(run)
    out = Sample(t_s=time.monotonic() - run.started, phase=phase, published=run.published, stored=stored,
                 merged=merged, in_jetstream=waiting, depths=depths, paused=run.bridge_paused, redis_used=used,
                 rss=rss_bytes(processes), sunk=min(stored, merged, enriched))
    run.samples.append(out)
    return out


async def sample_while(run: Run, phase: str, task: asyncio.Task[None] | None, until_drained: bool,
                       timeout_s: float) -> bool:
    """Sample every second until ``task`` is done, or (``until_drained``) every event is in every sink."""
    processes = process_table(run)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tick = time.monotonic()
        last = await sample(run, phase, processes)
        print(row(last), flush=True)
        if task is not None and task.done():
            task.result()
            return True
        if until_drained and last.sunk >= run.published and not any(last.depths.values()):
            return True
        await asyncio.sleep(max(0.0, SAMPLE_INTERVAL_S - (time.monotonic() - tick)))
    return False


async def calibrate(run: Run, count: int) -> float:
    """Publish a burst of ``count`` events; the rate (events/s) at which every sink absorbed it."""
    await publish(run, WARMUP_EVENTS)  # workers started and sinks opened: not part of the rate
    if not await sample_while(run, "warm-up", None, until_drained=True, timeout_s=CALIBRATION_TIMEOUT_S):
        raise SystemExit("warm-up did not drain in time")
    start = time.monotonic()
    await publish(run, count)
    drained = await sample_while(run, "calibrate", None, until_drained=True, timeout_s=CALIBRATION_TIMEOUT_S)
    if not drained:
        raise SystemExit("calibration did not drain in time")
    return count / (time.monotonic() - start)


def header() -> str:
    return (f"{'t s':>6} {'phase':<9} {'published':>9} {'stored':>7} {'merged':>7} {'in JS':>7} "
            f"{'queues e/p/t/g':>16} {'paused':>6} {'redis MiB':>9}  RSS MiB per pipeline group, nats, redis")


def row(s: Sample) -> str:
    queues = "/".join(str(s.depths[q]) for q in QUEUES)
    groups: dict[str, int] = {}
    for label, value in s.rss.items():
        group = label.split("/")[0]
        groups[group] = groups.get(group, 0) + value
    rss = " ".join(f"{name.removeprefix('worker-')}={value / MIB:.0f}" for name, value in groups.items())
    return (f"{s.t_s:6.1f} {s.phase:<9} {s.published:>9} {s.stored:>7} {s.merged:>7} {s.in_jetstream:>7} "
            f"{queues:>16} {'yes' if s.paused else 'no':>6} {s.redis_used / MIB:>9.1f}  {rss}")


def ratio(values: list[int]) -> float:
    """max/min: how far a memory figure moved (1.0 is perfectly flat)."""
    low = min(values)
    return max(values) / low if low else float("inf")


def memory_series(samples: list[Sample]) -> dict[str, list[int]]:
    """Every memory figure over ``samples``: Redis used_memory, then the RSS of each process."""
    series = {"redis used_memory": [s.redis_used for s in samples]}
    for label in samples[0].rss:
        series[f"RSS {label}"] = [s.rss.get(label, 0) for s in samples]
    return series


def overload_lines(run: Run, rate: float, factor: float) -> list[str]:
    overload = [s for s in run.samples if s.phase == "overload"]
    lines = [f"drain rate at calibration: {rate:.0f} events/s; publishing at {factor:g}x = {rate * factor:.0f}/s"]
    span = overload[-1].t_s - overload[0].t_s
    if span > 0:
        pub = (overload[-1].published - overload[0].published) / span
        sunk = (overload[-1].sunk - overload[0].sunk) / span
        lines.append(f"during the overload: published {pub:.0f}/s, absorbed by every sink {sunk:.0f}/s "
                     f"({pub / sunk if sunk else float('inf'):.1f}x); deepest queue "
                     f"{max(max(s.depths.values()) for s in overload)} messages (MAX_QUEUE_DEPTH "
                     f"{run.settings.max_queue_depth}); up to {max(s.in_jetstream for s in overload)} events "
                     f"waiting in JetStream")
    return lines


def verdict(run: Run, rate: float, factor: float, drained: bool) -> list[str]:
    lines = overload_lines(run, rate, factor)
    first = run.first_pause_s
    overload = [s for s in run.samples if s.phase == "overload"]
    steady = [s for s in overload if first is not None and s.t_s >= first] or overload
    lines.append(f"saturated overload: {len(steady)} samples from t={steady[0].t_s:.1f}s (first pause at "
                 f"{'none' if first is None else f'{first:.1f}s'}); max/min and range of each memory figure:")
    series = memory_series(steady)
    for label, values in series.items():
        lines.append(f"  {label:<28} {ratio(values):5.2f}  {min(values) / MIB:6.1f}-{max(values) / MIB:.1f} MiB")
    whole = memory_series([s for s in run.samples if s.phase in ("overload", "drain")])
    lines.append("peaks over overload and drain: " + ", ".join(
        f"{label} {max(values) / MIB:.0f} MiB" for label, values in whole.items()
        if label == "redis used_memory" or label.endswith("-server")))
    backlog = [s.in_jetstream for s in steady]
    pipeline = [ratio(v) for label, v in series.items() if label.startswith(("RSS bridge", "RSS worker"))]
    last = run.samples[-1]
    lines.append(f"VERDICT: while the JetStream backlog grew {backlog[0]} -> {max(backlog)} events "
                 f"({ratio(backlog):.1f}x), Redis used_memory max/min was {ratio(series['redis used_memory']):.2f} "
                 f"(the high/low-water cycle), pipeline processes' RSS max/min at most {max(pipeline):.2f}; "
                 f"backlog {'drained' if drained else 'NOT drained'} ({last.sunk} of {run.published} events in "
                 f"every sink at t={last.t_s:.0f}s)")
    return lines


async def bench(run: Run, options: Options) -> None:
    assert run.servers.falkordb is not None and run.servers.falkordb.proc is not None
    stop_throttle = asyncio.Event()
    throttle = asyncio.create_task(duty_cycle(run.servers.falkordb.proc.pid, options.sink_duty, stop_throttle))
    print(header(), flush=True)
    try:
        rate = await calibrate(run, options.calibration_events)
        publisher = asyncio.create_task(publish_at(run, rate * options.factor, options.overload_s))
        await sample_while(run, "overload", publisher, until_drained=False, timeout_s=options.overload_s * 3)
    finally:
        stop_throttle.set()
        await throttle
    print("overload over: publishing stopped, FalkorDB back to full speed", flush=True)
    drained = await sample_while(run, "drain", None, until_drained=True, timeout_s=DRAIN_TIMEOUT_S)
    print("\n".join(verdict(run, rate, options.factor, drained)), flush=True)


async def run_bench(settings: Settings, pipeline: Pipeline, servers: Servers, options: Options) -> None:
    nc: Client = await connect(settings, "etl-bench")
    try:
        js = nc.jetstream()
        await ensure_raw_stream(js, settings)
        events = generate(10**9, hosts=HOSTS, seed=int(time.time()), base_ms=int(time.time() * 1000))
        await bench(Run(settings, pipeline, servers, js, events), options)
    finally:
        await nc.close()


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run (about 30 s)")
    parser.add_argument("--overload-s", type=float, help="seconds of overload")
    parser.add_argument("--factor", type=float, default=DEFAULT_FACTOR, help="publish rate / drain rate")
    parser.add_argument("--sink-duty", type=float, default=DEFAULT_SINK_DUTY,
                        help="fraction of the time FalkorDB may run while overloaded (the slow sink)")
    parser.add_argument("--max-queue-depth", type=int, help="MAX_QUEUE_DEPTH (default: the setting's default)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args(argv)
    overload_s = args.overload_s or (QUICK_OVERLOAD_S if args.quick else DEFAULT_OVERLOAD_S)
    calibration = QUICK_CALIBRATION_EVENTS if args.quick else DEFAULT_CALIBRATION_EVENTS
    return Options(overload_s, calibration, args.factor, args.sink_duty, args.max_queue_depth, args.keep)


def main(argv: list[str]) -> int:
    options = parse(argv)
    root = Path(tempfile.mkdtemp(prefix="etl-overload-"))
    stack: _servers.Stack | None = None
    pipeline: Pipeline | None = None
    try:
        stack = _servers.start(root / "data", lambda _: None)
        env = {**stack.env, "LOG_LEVEL": "INFO"}  # the bridge's "resumed" lines are INFO
        if options.max_queue_depth is not None:
            env["MAX_QUEUE_DEPTH"] = str(options.max_queue_depth)
        settings = Settings.from_env(env)
        migrate(settings)
        pipeline = Pipeline(env, root / "logs").start()
        print(f"servers and pipeline in {root}; MAX_QUEUE_DEPTH={settings.max_queue_depth} messages, "
              f"MAX_BATCH_SIZE={settings.max_batch_size} events", flush=True)
        asyncio.run(run_bench(settings, pipeline, stack.servers, options))
    finally:
        if pipeline is not None:
            pipeline.stop()
        _servers.stop(stack)
        if options.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

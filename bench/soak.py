"""``bench/soak``: the pipeline for a long while at a steady share of its maximum rate, with retention on.

    bench/soak                          # measure the maximum, then 15 minutes at 75 % of it, retention 2m
    bench/soak --minutes 2              # a short check that everything runs
    bench/soak --rate 4000 --retention 5m --env RETENTION_INTERVAL=15s

Starts the local default's real servers and the real bridge and worker pools (as ``bench/run`` does), measures
the end-to-end maximum on a fresh pipeline (``--rate`` skips that), then, from empty servers, publishes at
``--fraction`` of it for ``--minutes`` and samples every ``--interval`` seconds (``bench.soak_probe``). Writes
``bench/results/soak.json`` (every sample, the summary, the verdict) and ``bench/results/soak-*.png``, and prints
the verdict against the issue's targets (``bench.soak_summary.Rules``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import redis

from bench import _servers, e2e, load
from bench.harness import git_revision, say
from bench.report import write_json
from bench.soak_charts import write_charts
from bench.soak_probe import Probe
from bench.soak_summary import DRAIN, SINKS, SOAK, Rules, Sample, duration_s, summary, verdict, verdict_text
from etl.config import Settings
from etl.defaults import DEFAULT_MAX_BATCH_SIZE as BATCH
from etl.dev.supervisor import Pipeline
from etl.envvalues import declaration
from etl.errors import ConfigError
from etl.sinks.nats_publish import DEFAULT_DUPLICATE_WINDOW_S

DEFAULT_MINUTES = 15.0
DEFAULT_FRACTION = 0.75
DEFAULT_RETENTION = "2m"
DEFAULT_INTERVAL_S = 5.0
CALIBRATE_EVENTS = 50_000
DRAIN_TIMEOUT_S = 120.0
RESULTS = Path(__file__).parent / "results"
# What the retention code reads (issue 17); a pipeline that does not declare them ignores them.
RETENTION_SETTINGS = ("GRAPH_RETENTION", "TIMESCALE_RETENTION")
PUBLISH_SEED = 11


@dataclass(frozen=True)
class Options:
    minutes: float
    fraction: float
    rate: float | None
    retention: str
    interval_s: float
    calibrate_events: int
    out_dir: Path
    env: dict[str, str]
    appendfsync: str | None
    keep: bool
    shape: str | None = None

    def corpus(self) -> dict[str, str]:
        """The keyword that picks ``bench.load``'s corpus shape, when one was asked for. Raises ``ConfigError``
        when this checkout's ``bench/load.py`` has no shapes."""
        if self.shape is None:
            return {}
        if "shape" not in inspect.signature(load.publish_at).parameters:
            raise ConfigError(f"--shape {self.shape}: this checkout's bench/load.py has only one shape")
        return {"shape": self.shape}

    def pipeline_env(self) -> dict[str, str]:
        """The retention settings (the enriched stream's ``max_age`` too, in seconds, at least the publish sink's
        duplicate window), then ``--env``."""
        # JetStream refuses a stream whose max age is under its duplicate window (the publish sink's, 2 minutes).
        max_age_s = max(duration_s(self.retention), math.ceil(DEFAULT_DUPLICATE_WINDOW_S))
        return {**dict.fromkeys(RETENTION_SETTINGS, self.retention), "NATS_ENRICHED_STREAM_MAX_AGE": str(max_age_s),
                **self.env}


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="bench/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="how long to publish (default 15)")
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                        help="share of the measured maximum to publish at (default 0.75)")
    parser.add_argument("--rate", type=float, help="events/s to publish at, instead of measuring the maximum")
    parser.add_argument("--retention", default=DEFAULT_RETENTION,
                        help="GRAPH_RETENTION and TIMESCALE_RETENTION, and the enriched stream's max age (2m)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between samples (5)")
    parser.add_argument("--calibrate-events", type=int, default=CALIBRATE_EVENTS,
                        help=f"events of the maximum-rate run (default {CALIBRATE_EVENTS:,})")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where soak.json and the charts go ({RESULTS})")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="one more setting for the pipeline's processes (repeatable)")
    parser.add_argument("--appendfsync", choices=("always", "everysec"),
                        help="Redis's appendfsync for the run (default: the local default's, always)")
    parser.add_argument("--shape", help="the corpus's shape, passed to bench/load.py (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args(argv)
    try:
        duration_s(args.retention)
    except ValueError as e:
        parser.error(f"--retention: {e}")
    if bad := [item for item in args.env if "=" not in item]:
        parser.error(f"--env takes NAME=VALUE, not {bad[0]!r}")
    env = dict(item.split("=", 1) for item in args.env)
    return Options(args.minutes, args.fraction, args.rate, args.retention, args.interval, args.calibrate_events,
                   args.out, env, args.appendfsync, args.keep, args.shape)


def retention_declared() -> list[str]:
    """Which of ``RETENTION_SETTINGS`` this checkout's settings declare (and so act on)."""
    declared = {declaration(f).var for f in dataclass_fields(Settings)}
    return [name for name in RETENTION_SETTINGS if name in declared]


def calibrate(stack: _servers.Stack, opts: Options, logs: Path) -> float:
    """The end-to-end maximum, events/s, as ``bench/run`` measures it. Raises ``RuntimeError`` if incomplete."""
    payloads = load.events(opts.calibrate_events, seed=1, **opts.corpus())
    result = e2e.run(stack, payloads, e2e.Shape(BATCH), "max-rate", logs)
    if not result.complete:
        raise RuntimeError(f"the maximum-rate run did not complete: {result.events:,} events, {result.seconds:.0f} s")
    say(f"maximum: {result.events:,} events in {result.seconds:.1f} s = {result.rate:,.0f} events/s")
    return result.rate


def soak(stack: _servers.Stack, opts: Options, rate: float, logs: Path) -> list[Sample]:
    """From empty servers and a fresh pipeline: warm up, publish at ``rate`` events/s while sampling, drain."""
    _servers.reset(stack)
    pipeline = e2e.Shape(BATCH).pipeline(stack, logs / "soak").start()
    try:
        return asyncio.run(_soak(stack, pipeline, rate, opts))
    finally:
        pipeline.stop()


async def _soak(stack: _servers.Stack, pipeline: Pipeline, rate: float, opts: Options) -> list[Sample]:
    settings = stack.settings
    nc, js = await load.open_js(settings)
    counts = load.SinkCounts(settings, js)
    probe = None
    try:
        warm = load.events(e2e.WARMUP_EVENTS, seed=7)  # the default shape has duplicates: count distinct ids
        await load.publish(js, settings.nats_subject_raw, warm)
        if await counts.wait(load.distinct(warm), e2e.WARMUP_TIMEOUT_S) is None:
            raise RuntimeError(f"warm-up not through: (rows, Event nodes, enriched) {await counts.all()}; "
                               f"the processes' logs are in {pipeline.log_dir} (--keep keeps them)")
        probe = Probe(stack, pipeline, js)
        await probe.start()
        say(f"publishing {rate:,.0f} events/s for {opts.minutes:g} min, a sample every {opts.interval_s:g} s")
        publisher = asyncio.create_task(load.publish_at(js, settings.nats_subject_raw, rate, opts.minutes * 60,
                                                        seed=PUBLISH_SEED, prefix="soak", **opts.corpus()))
        samples = await _sample_while(publisher, probe, opts.interval_s)
        say(f"published {publisher.result():,} events; draining")
        return samples + await _drain(probe, opts.interval_s)
    finally:
        if probe is not None:
            probe.close()
        counts.close()
        await nc.close()


async def _sample_while(publisher: asyncio.Task[int], probe: Probe, interval_s: float) -> list[Sample]:
    samples: list[Sample] = []
    tick = time.monotonic()
    while not publisher.done():
        tick += interval_s
        await asyncio.wait({publisher}, timeout=max(0.0, tick - time.monotonic()))
        if not publisher.done():
            samples.append(await probe.sample(SOAK))
            say(progress(samples[-1]))
    return samples


async def _drain(probe: Probe, interval_s: float) -> list[Sample]:
    """Sample until a whole tick stores nothing in any sink with no raw backlog (or ``DRAIN_TIMEOUT_S``), then
    once more with the PostgreSQL window up to now."""
    samples: list[Sample] = []
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(interval_s)
        samples.append(sample := await probe.sample(DRAIN))
        say(progress(sample))
        if sample.sizes.get("raw_backlog") == 0 and all(not sample.rates.get(k) for k in SINKS):
            break
    samples.append(await probe.sample(DRAIN, final=True))
    return samples


def progress(s: Sample) -> str:
    rates = " ".join(f"{k} {v:,.0f}" for k, v in s.rates.items() if not math.isnan(v))
    lat = s.latency_ms
    return (f"{s.phase} {s.t_s:6.0f}s  ev/s: {rates}  p50/p99 {lat['p50']:,.0f}/{lat['p99']:,.0f} ms  "
            f"Event nodes {s.sizes['event_nodes']:,.0f}  rows {s.sizes['table_rows']:,.0f}  "
            f"Redis {s.sizes['redis_used_mib']:,.1f} MiB  cores busy {s.machine_cores.get('busy', math.nan):.2f} "
            f"(outside the soak {s.machine_cores.get('outside', math.nan):.2f}, "
            f"stolen {s.machine_cores.get('steal', math.nan):.2f})")


def finite(value: Any) -> Any:
    """``value`` with every NaN replaced by None, for strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def start_stack(root: Path, opts: Options) -> _servers.Stack:
    """The servers, with the pipeline's environment the soak sets. Raises ``ConfigError`` when this checkout's
    settings refuse a value (before anything is measured)."""
    stack = _servers.start(root / "servers", say)
    stack = _servers.Stack(stack.root, stack.servers, {**stack.env, **opts.pipeline_env()})
    try:
        Settings.from_env(stack.env)
    except ConfigError:
        _servers.stop(stack)
        raise
    if opts.appendfsync:
        with redis.Redis(host="127.0.0.1", port=stack.servers.redis.port) as client:
            client.config_set("appendfsync", opts.appendfsync)
    return stack


def main(argv: list[str]) -> int:
    opts = parse(argv)
    root = Path(tempfile.mkdtemp(prefix="etl-soak-"))
    info: dict[str, Any] = {"command": " ".join(["bench/soak", *argv]), "machine": _servers.machine(),
                            "python": platform.python_version(), "revision": git_revision(), "batch": BATCH}
    stack = None
    try:
        opts.corpus()  # refused before any server starts
        stack = start_stack(root, opts)
        max_rate = None if opts.rate else calibrate(stack, opts, root / "logs")
        rate = opts.rate or (max_rate or 0.0) * opts.fraction
        samples = soak(stack, opts, rate, root / "logs")
    except (ConfigError, RuntimeError) as e:
        print(f"bench/soak: {e}", file=sys.stderr)
        return 2
    finally:
        _servers.stop_and_clean(stack, root, keep=opts.keep, say=say)
    info.update(load_average_end=[round(x, 2) for x in os.getloadavg()],
                max_rate=None if max_rate is None else round(max_rate), rate=round(rate))
    report(opts, info, samples)
    return 0


def retention_info(opts: Options, samples: list[Sample]) -> dict[str, Any]:
    declared = retention_declared()
    seen = sorted({name for s in samples for name in s.retention})
    return {"asked": opts.pipeline_env(), "declared": declared, "active": bool(declared), "metrics": seen}


def report(opts: Options, info: dict[str, Any], samples: list[Sample]) -> None:
    retention = retention_info(opts, samples)
    rules = Rules()
    checks = verdict(samples, rules, retention["active"])
    data = {**info, "shape": opts.shape or "bench/load.py's default", "minutes": opts.minutes,
            "fraction": opts.fraction, "interval_s": opts.interval_s,
            "appendfsync": opts.appendfsync or "always", "retention": retention,
            "summary": summary(samples, checks, rules), "samples": [s.as_json() for s in samples]}
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(opts.out_dir / "soak.json", finite(data))
    charts = write_charts(samples, opts.out_dir, info["rate"])
    lat = data["summary"]["latency_ms"]
    share = "from --rate" if info["max_rate"] is None else f"{opts.fraction:.0%} of {info['max_rate']:,} measured"
    machine = info["machine"]
    print(f"\n{info['command']}: {info['rate']:,} events/s ({share}) for {opts.minutes:g} min; {machine['cores']} "
          f"cores ({machine['cpu']}), load average {machine['load_average']} at the start, "
          f"{info['load_average_end']} at the end")
    print(f"retention: {'ACTIVE' if retention['active'] else 'NOT active'} (declared: "
          f"{', '.join(retention['declared']) or 'none'}; asked {opts.retention}; metrics seen: "
          f"{', '.join(sorted({m.split('{')[0] for m in retention['metrics']})) or 'none'})")
    print(f"latency over the run: p50 {lat['p50']:,.0f} ms, p95 {lat['p95']:,.0f} ms, p99 {lat['p99']:,.0f} ms "
          f"({lat['events']:,.0f} events)")
    print(f"rules: {rules.text()}\n")
    print(verdict_text(checks))
    print(f"\nwritten: {opts.out_dir / 'soak.json'}, " + ", ".join(str(p) for p in charts))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Where the time goes: py-spy samples every pipeline process during one end-to-end run.

    .venv/bin/python -m bench.profile [--events N] [--batch B] [--processes P] [--out DIR]

Writes ``DIR/<process>.txt`` (py-spy's collapsed stacks, Dramatiq's forked workers included) and prints, for
each process, its CPU per 1,000 events and the functions holding most of its samples (own time, and time
including callees).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _servers, e2e, load
from bench.sampling import Sampler
from etl.defaults import DEFAULT_MAX_BATCH_SIZE

SAMPLE_RATE_HZ = 200
TOP = 14


def spy(pid: int, out: Path, *, gil: bool = False) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` and its children; with ``gil``, only threads holding the GIL (Python's own CPU)."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
                             "--rate", str(SAMPLE_RATE_HZ), "--nonblocking", *(["--gil"] if gil else []),
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path: Path, top: int = TOP) -> list[str]:
    """The functions with the most samples: own time (the leaf frame) and total (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    lines = [f"  {samples} samples; own time:"]
    lines += [f"    {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  including callees:")
    lines += [f"    {100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(top)]
    return lines


async def drive(stack: _servers.Stack, pipeline: object, payloads: list[bytes], out: Path,
                gil: bool = False) -> tuple[float, dict]:
    settings = stack.settings
    nc, js = await load.open_js(settings)
    counts = load.SinkCounts(settings, js)
    warm = load.events(e2e.WARMUP_EVENTS, seed=7)
    await load.publish(js, settings.nats_subject_raw, warm)
    await counts.wait(load.distinct(warm), e2e.WARMUP_TIMEOUT_S)
    spies = {name: spy(p.pid, out / f"{name}.txt", gil=gil) for name, p in pipeline.procs.items()}  # type: ignore[attr-defined]
    with Sampler(lambda: e2e.processes_of(stack, pipeline), stack.servers.redis.port) as sampler:  # type: ignore[arg-type]
        start = time.monotonic()
        await load.blast(nc, js, settings.nats_stream, settings.nats_subject_raw, payloads)
        await counts.wait(load.distinct(warm) + load.distinct(payloads), 600)
        seconds = time.monotonic() - start
    for proc in spies.values():
        proc.send_signal(signal.SIGINT)
    for proc in spies.values():
        proc.wait(30)
    counts.close()
    await nc.close()
    assert sampler.costs is not None
    return seconds, sampler.costs.per_1000(len(payloads))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the pipeline processes")
    parser.add_argument("--gil", action="store_true", help="sample only threads holding the GIL (Python's CPU)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "etl-profile")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="etl-profile-"))
    stack = _servers.start(root / "servers", print)
    stack.env.update(dict(item.split("=", 1) for item in args.env))
    try:
        payloads = load.events(args.events, seed=1)
        _servers.reset(stack)
        pipeline = e2e.Shape(batch=args.batch, processes=args.processes).pipeline(stack, root / "logs").start()
        try:
            seconds, cpu = asyncio.run(drive(stack, pipeline, payloads, args.out, args.gil))
        finally:
            pipeline.stop()
    finally:
        _servers.stop(stack)
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.events:,} events in {seconds:.1f}s = {args.events / seconds:,.0f} events/s; CPU s per 1,000 events:")
    for label, value in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<20} {value:.3f}")
    for path in sorted(args.out.glob("*.txt")):
        print(f"\n{path.stem}:")
        print("\n".join(summarize(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

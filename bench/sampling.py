"""Cost of a measurement: CPU seconds and peak RSS of each process (its forks and children included), and Redis
``used_memory``, sampled from a thread while the measurement runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import redis

SAMPLE_INTERVAL_S = 0.25
MIB = 2**20


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


@dataclass
class Group:
    """One labelled process and everything it forks (Dramatiq's worker processes, PostgreSQL's backends)."""

    root: psutil.Process
    with_children: bool = True
    cpu_at_start: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0
    rss: list[int] = field(default_factory=list)

    def members(self) -> list[psutil.Process]:
        try:
            return [self.root, *(self.root.children(recursive=True) if self.with_children else ())]
        except psutil.NoSuchProcess:
            return []

    def sample(self, first: bool = False) -> None:
        total_rss = 0
        for proc in self.members():
            try:
                cpu, rss = _cpu_s(proc), proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            if first:
                self.cpu_at_start[proc.pid] = cpu
            self.cpu_last[proc.pid] = cpu
            total_rss += rss
        self.peak_rss = max(self.peak_rss, total_rss)
        self.rss.append(total_rss)

    def cpu_used_s(self) -> float:
        return sum(last - self.cpu_at_start.get(pid, 0.0) for pid, last in self.cpu_last.items())


@dataclass
class Costs:
    cpu_s: dict[str, float]
    peak_rss_mib: dict[str, float]
    redis_peak_used_mib: float
    rss_series_mib: dict[str, list[float]]
    redis_series_mib: list[float]

    def per_1000(self, events: int) -> dict[str, float]:
        return {label: round(cpu * 1000 / events, 4) for label, cpu in self.cpu_s.items()}


class Sampler:
    """``with Sampler(processes, redis_port) as s: ...``; then ``s.costs``."""

    def __init__(self, processes: Callable[[], dict[str, psutil.Process]], redis_port: int,
                 interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._processes = processes
        self._redis = redis.Redis(host="127.0.0.1", port=redis_port)
        self._interval_s = interval_s
        self._groups: dict[str, Group] = {}
        self._redis_used: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.costs: Costs | None = None

    def __enter__(self) -> Sampler:
        # The benchmark's own process is counted alone: every server and pipeline process is its child.
        me = psutil.Process().pid
        self._groups = {label: Group(proc, with_children=proc.pid != me)
                        for label, proc in self._processes().items()}
        for group in self._groups.values():
            group.sample(first=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._tick()

    def _tick(self) -> None:
        for group in self._groups.values():
            group.sample()
        try:
            self._redis_used.append(int(self._redis.info("memory")["used_memory"]))
        except redis.RedisError:
            pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._tick()
        self._redis.close()
        self.costs = Costs(
            cpu_s={label: round(g.cpu_used_s(), 3) for label, g in self._groups.items()},
            peak_rss_mib={label: round(g.peak_rss / MIB, 1) for label, g in self._groups.items()},
            redis_peak_used_mib=round(max(self._redis_used, default=0) / MIB, 1),
            rss_series_mib={label: [round(v / MIB, 1) for v in g.rss] for label, g in self._groups.items()},
            redis_series_mib=[round(v / MIB, 1) for v in self._redis_used],
        )


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()

"""The soak's pure part: its samples, percentiles from latency histograms, the summary and the verdict.

No server is touched here (``bench.soak_probe`` reads them), so every rule is unit-tested on made-up samples
(``tests/unit/test_soak_summary.py``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

SINKS = ("timescale", "graph", "enriched")  # the three sinks whose stored events/s are judged
SOAK, DRAIN = "soak", "drain"  # a sample taken while publishing, or after, while the pipeline empties
PERCENTILES = (50, 95, 99)
BENCH_LABEL = "bench"  # what bench.e2e.processes_of calls the benchmark's own process
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Rules:
    """The issue's targets, as the soak checks them."""

    edge_s: float = 180.0  # throughput: the first and the last three minutes ...
    max_decline: float = 0.10  # ... differ by at most 10 %
    p99_below_ms: float = 1000.0  # every window's p99 under 1 s
    min_window_events: int = 100  # a window with fewer stored events has no meaningful p99
    max_growth: float = 0.10  # memory and sizes: the last third's median within 10 % of the middle third's ...
    slack_mib: float = 8.0  # ... or within this many MiB, for small processes

    def text(self) -> str:
        return (f"throughput: mean stored events/s of each sink over the last {self.edge_s:.0f} s at least "
                f"{1 - self.max_decline:.0%} of the first {self.edge_s:.0f} s (a third of the run each, when it "
                f"is shorter); latency: every {self.min_window_events}+-event window's p99 under "
                f"{self.p99_below_ms:.0f} ms; flat: the median of the last third of the run at most the middle "
                f"third's + max({self.max_growth:.0%}, {self.slack_mib:.0f} MiB) (memory: PSS) or "
                f"+ {self.max_growth:.0%} (graph and table sizes)")


@dataclass
class Sample:
    """What one tick read. ``t_s`` is the end of its window, in seconds from the soak's start; ``dt_s`` its
    length. ``latency_hist`` (milliseconds -> events) holds the events stored in PostgreSQL during the window;
    it is summed into the summary and not written per sample."""

    t_s: float
    dt_s: float
    phase: str
    rates: dict[str, float]  # events/s: published and each of SINKS
    rss_mib: dict[str, float]  # each process with its children (a pool's worker processes, PostgreSQL's backends)
    cpu_s: dict[str, float]  # CPU seconds each of those used in the window
    sizes: dict[str, float]  # event_nodes, nodes, table_rows, enriched_messages, redis_used_mib
    retention: dict[str, float] = field(default_factory=dict)  # every metric whose name says retention
    pss_mib: dict[str, float] = field(default_factory=dict)  # as rss_mib, each shared page counted as its share
    # The whole machine's CPU in the window, in cores: busy, stolen by the hypervisor, and busy beyond the CPU time
    # of the processes in cpu_s (the kernel's interrupt work, and any other process): a window made slow by
    # something else on the machine shows here.
    machine_cores: dict[str, float] = field(default_factory=dict)
    latency_hist: dict[int, int] = field(default_factory=dict)

    @property
    def latency_ms(self) -> dict[str, float]:
        return window_latency(self.latency_hist)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["latency_hist"]
        out["latency_ms"] = self.latency_ms
        return out


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    passed: bool | None  # None: not checked (the reason is in value)

    @property
    def mark(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def duration_s(text: str) -> int:
    """``30s``, ``2m``, ``6h``, ``30d`` in seconds. Raises ``ValueError`` on anything else."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 2m, 6h or 30d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def hist_percentile(hist: Mapping[int, int], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of the values a histogram (value -> count) counts; NaN when empty."""
    total = sum(hist.values())
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def merged(hists: Iterable[Mapping[int, int]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for hist in hists:
        out.update(hist)
    return out


def window_latency(hist: Mapping[int, int]) -> dict[str, float]:
    """p50, p95, p99 and max in ms, and the number of events, of one window's (or the run's) histogram."""
    out = {f"p{p}": hist_percentile(hist, p) for p in PERCENTILES}
    out["max"] = float(max(hist)) if hist else math.nan
    out["events"] = float(sum(hist.values()))
    return out


def mean_rate(samples: Sequence[Sample], key: str) -> float:
    """Events/s over ``samples``: the events of every window over their total length (a window whose count could
    not be read is left out)."""
    read = [(s.rates[key], s.dt_s) for s in samples if not math.isnan(s.rates.get(key, math.nan))]
    seconds = sum(dt for _, dt in read)
    return sum(rate * dt for rate, dt in read) / seconds if seconds else math.nan


def edges(samples: Sequence[Sample], edge_s: float) -> tuple[list[Sample], list[Sample]]:
    """The samples of the first and of the last ``edge_s`` seconds of the run, or of its first and last thirds
    when the run is shorter than three times that."""
    if not samples:
        return [], []
    start, end = samples[0].t_s - samples[0].dt_s, samples[-1].t_s
    edge = min(edge_s, (end - start) / 3)
    return ([s for s in samples if s.t_s <= start + edge + 1e-9],
            [s for s in samples if s.t_s - s.dt_s >= end - edge - 1e-9])


def thirds(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The middle and the last third of ``values`` (the first third is the warm-up: caches and pools filling)."""
    n = len(values) // 3
    if n == 0:
        return [], []
    return list(values[n:len(values) - n]), list(values[len(values) - n:])


def growth(values: Sequence[float]) -> tuple[float, float] | None:
    """(median of the middle third, median of the last third), or None with fewer than three values."""
    middle, last = thirds(values)
    if not middle or not last:
        return None
    return median(middle), median(last)


def throughput_checks(samples: Sequence[Sample], rules: Rules) -> list[Check]:
    first, last = edges(samples, rules.edge_s)
    first = first[1:]  # publishing starts during the first sample, and its table window is short: not a rate
    out = []
    for sink in SINKS:
        before, after = mean_rate(first, sink), mean_rate(last, sink)
        passed = None if not before else after >= before * (1 - rules.max_decline)
        out.append(Check(f"{sink} events/s held", f"{before:,.0f} -> {after:,.0f}", passed))
    return out


def latency_check(samples: Sequence[Sample], rules: Rules) -> Check:
    windows = [s.latency_ms for s in samples if sum(s.latency_hist.values()) >= rules.min_window_events]
    if not windows:
        return Check("p99 under 1 s throughout", "no window stored enough events", None)
    worst = max(w["p99"] for w in windows)
    return Check("p99 under 1 s throughout", f"worst window p99 {worst:,.0f} ms over {len(windows)} windows",
                 worst < rules.p99_below_ms)


def flat_check(name: str, values: Sequence[float], rules: Rules, *, slack: float, unit: str) -> Check:
    got = growth(values)
    if got is None:
        return Check(name, "too few samples", None)
    middle, last = got
    allowed = max(middle * rules.max_growth, slack)
    return Check(name, f"{middle:,.1f} -> {last:,.1f} {unit}", last - middle <= allowed)


def memory_checks(samples: Sequence[Sample], rules: Rules) -> list[Check]:
    """PSS, not RSS: a sum of RSS counts a shared page once for every process that touched it (PostgreSQL's
    shared buffers in each backend, a Dramatiq worker's pages shared with its parent), so it grows as more
    processes touch the same memory, with no more memory used."""
    # The benchmark's own process is not the pipeline's: it is charted, not judged.
    labels = dict.fromkeys(label for s in samples for label in s.pss_mib if not label.startswith(BENCH_LABEL))
    out = [flat_check(f"PSS {label} flat", [s.pss_mib.get(label, 0.0) for s in samples], rules,
                      slack=rules.slack_mib, unit="MiB") for label in labels]
    out.append(flat_check("Redis used_memory flat", [s.sizes.get("redis_used_mib", 0.0) for s in samples], rules,
                          slack=rules.slack_mib, unit="MiB"))
    return out


def size_checks(samples: Sequence[Sample], rules: Rules, retention_active: bool) -> list[Check]:
    out = []
    # All nodes too: retention removes Event nodes only, and context nodes keyed by something that keeps changing
    # (a Process by host, pid and binary) would grow without bound beside them.
    for key, name in (("event_nodes", "graph Event nodes steady"), ("nodes", "graph nodes (all) steady"),
                      ("table_rows", "table rows steady")):
        if not retention_active:
            out.append(Check(name, "not checked: this pipeline declares no retention setting", None))
            continue
        out.append(flat_check(name, [s.sizes.get(key, 0.0) for s in samples], rules, slack=0.0, unit=""))
    return out


def verdict(samples: Sequence[Sample], rules: Rules, retention_active: bool) -> list[Check]:
    """Every check of the issue's targets, over the samples taken while publishing (and, for latency, while the
    pipeline drained what was published)."""
    soak = [s for s in samples if s.phase == SOAK]
    return [*throughput_checks(soak, rules), latency_check(samples, rules), *memory_checks(soak, rules),
            *size_checks(soak, rules, retention_active)]


def passed(checks: Sequence[Check]) -> bool:
    """True when no check failed and at least one was made."""
    return any(c.passed is not None for c in checks) and all(c.passed is not False for c in checks)


def totals(samples: Sequence[Sample]) -> dict[str, int]:
    """Events counted in each sink over the whole run, the drain included: each should be the published count."""
    return {key: round(sum(s.rates[key] * s.dt_s for s in samples if not math.isnan(s.rates.get(key, math.nan))))
            for key in ("published", *SINKS)}


def summary(samples: Sequence[Sample], checks: Sequence[Check], rules: Rules) -> dict[str, Any]:
    soak = [s for s in samples if s.phase == SOAK]
    first, last = edges(soak, rules.edge_s)
    first = first[1:]  # as in throughput_checks
    rates = {key: {"mean": round(mean_rate(soak, key), 1), "first": round(mean_rate(first, key), 1),
                   "last": round(mean_rate(last, key), 1)} for key in ("published", *SINKS)}
    labels = dict.fromkeys(label for s in samples for label in s.rss_mib)
    return {"rules": rules.text(), "verdict": "PASS" if passed(checks) else "FAIL",
            "checks": [{**asdict(c), "mark": c.mark} for c in checks], "events_per_s": rates,
            "events": totals(samples), "latency_ms": window_latency(merged(s.latency_hist for s in samples)),
            "final_sizes": samples[-1].sizes if samples else {},
            "peak_rss_mib": {label: max(s.rss_mib.get(label, 0.0) for s in samples) for label in labels},
            "peak_pss_mib": {label: max(s.pss_mib.get(label, 0.0) for s in samples) for label in labels}}


def verdict_text(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = [f"  {c.mark:4}  {c.name:<{width}}  {c.value}" for c in checks]
    return "\n".join([*lines, f"verdict: {'PASS' if passed(checks) else 'FAIL'}"])

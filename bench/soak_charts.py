"""The soak's PNG charts, over the run's minutes: events/s, latency, RSS and PSS per process, sizes, Redis
memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench.soak_summary import SINKS, SOAK, Sample

PREFIX = "soak-"
DPI = 110


def _series(samples: Sequence[Sample], field: str, key: str) -> list[float]:
    """``sample.<field>[key]`` of each sample (``rates``, ``latency_ms``, ``rss_mib``, ``sizes``); NaN (a gap in
    the line) where it has none."""
    values: list[float] = []
    for s in samples:
        value = getattr(s, field).get(key)
        values.append(math.nan if value is None else float(value))
    return values


def _chart(path: Path, title: str, ylabel: str, samples: Sequence[Sample], lines: dict[str, list[float]], *,
           target: tuple[float, str] | None = None, log: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    minutes = [s.t_s / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for label, values in lines.items():
        ax.plot(minutes, values, label=label, linewidth=1.2)
    if target is not None:
        ax.axhline(target[0], color="grey", linestyle="--", linewidth=1, label=target[1])
    drain = next((s.t_s / 60 for s in samples if s.phase != SOAK), None)
    if drain is not None:
        ax.axvline(drain, color="grey", linestyle=":", linewidth=1, label="publishing ends")
    if log:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set(title=title, xlabel="minutes", ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_charts(samples: Sequence[Sample], out_dir: Path, rate: float) -> list[Path]:
    """Six PNGs named ``soak-*.png`` in ``out_dir``; returns their paths. ``rate``: the publish rate asked for."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = [s for s in samples if s.dt_s > 0]
    labels = list(dict.fromkeys(label for s in kept for label in s.rss_mib))
    return [
        _chart(out_dir / f"{PREFIX}throughput.png", "Events stored per second, by sink", "events/s", kept,
               {key: _series(kept, "rates", key) for key in ("published", *SINKS)},
               target=(rate, f"publish rate {rate:,.0f}/s")),
        _chart(out_dir / f"{PREFIX}latency.png", "Publish to PostgreSQL row, per window", "ms", kept,
               {p: _series(kept, "latency_ms", p) for p in ("p50", "p95", "p99")},
               target=(1000.0, "p99 target"), log=True),
        _chart(out_dir / f"{PREFIX}memory.png", "RSS per process (with its children)", "MiB", kept,
               {label: _series(kept, "rss_mib", label) for label in labels}),
        _chart(out_dir / f"{PREFIX}pss.png", "PSS per process (with its children): shared pages as their share",
               "MiB", kept, {label: _series(kept, "pss_mib", label) for label in labels}),
        _chart(out_dir / f"{PREFIX}sizes.png", "Graph and table size", "count", kept,
               {name: _series(kept, "sizes", key) for key, name in
                (("event_nodes", "graph Event nodes"), ("nodes", "graph nodes, all"),
                 ("table_rows", "table rows"), ("enriched_messages", "enriched stream messages"))}),
        _chart(out_dir / f"{PREFIX}redis.png", "Redis used_memory", "MiB", kept,
               {"used_memory": _series(kept, "sizes", "redis_used_mib")}),
    ]

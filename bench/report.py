"""The benchmark's table (each figure, its baseline, the ratio and the target) and its JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: str = ""
    passed: bool | None = None

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value

    def as_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {"name": self.name, "value": round(self.value, 1), "unit": self.unit, "baseline": self.baseline,
                "baseline_value": None if self.baseline_value is None else round(self.baseline_value, 1),
                "ratio": None if ratio is None else round(ratio, 3), "target": self.target,
                "verdict": {True: "PASS", False: "MISS", None: ""}[self.passed]}


def target(row: Row, minimum_ratio: float | None = None, *, at_least: float | None = None,
           below: float | None = None, label: str) -> Row:
    """``row`` judged: its ratio at least ``minimum_ratio``, or its value at least ``at_least`` / below ``below``."""
    if minimum_ratio is not None:
        ok = row.ratio is not None and row.ratio >= minimum_ratio
    elif at_least is not None:
        ok = row.value >= at_least
    else:
        assert below is not None
        ok = row.value < below
    return Row(row.name, row.value, row.unit, row.baseline, row.baseline_value, label, ok)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    head = f"| {'measurement':<46} | {'value':>12} | {'unit':<7} | {'baseline':<30} | {'ratio':>6} | target  | |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        verdict = {True: "PASS", False: "MISS", None: ""}[r.passed]
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(f"| {r.name:<46} | {_fmt(r.value, 1 if r.value < 100 else 0):>12} | {r.unit:<7} | "
                     f"{r.baseline:<30} | {ratio:>6} | {r.target:<7} | {verdict} |")
    return "\n".join(lines)


def cost_table(cpu_per_1000: dict[str, float], peak_rss: dict[str, float], redis_peak_mib: float) -> str:
    lines = [f"| {'process':<22} | CPU s / 1,000 events | peak RSS MiB |", f"|{'-' * 24}|{'-' * 22}|{'-' * 14}|"]
    for label in cpu_per_1000:
        lines.append(f"| {label:<22} | {cpu_per_1000[label]:>20.3f} | {peak_rss.get(label, 0):>12.1f} |")
    lines.append(f"| {'total':<22} | {sum(cpu_per_1000.values()):>20.3f} | {sum(peak_rss.values()):>12.1f} |")
    lines.append(f"| {'Redis used_memory peak':<22} | {'':>20} | {redis_peak_mib:>12.1f} |")
    return "\n".join(lines)


def cpu_table(per_1000_by_run: dict[str, dict[str, float]]) -> str:
    """CPU per event in µs, one row per process (servers included) and one column per run, with the totals."""
    runs = list(per_1000_by_run)
    processes = list(dict.fromkeys(p for costs in per_1000_by_run.values() for p in costs))
    width = max(12, *map(len, runs))
    lines = [f"| {'process':<22} | " + " | ".join(f"{run:>{width}}" for run in runs) + " |",
             f"|{'-' * 24}|" + "|".join("-" * (width + 2) for _ in runs) + "|"]

    def cell(value: float | None) -> str:
        return f"{'':>{width}}" if value is None else f"{value * 1000:>{width}.1f}"

    for process in [*processes, "total"]:
        values = [sum(costs.values()) if process == "total" else costs.get(process)
                  for costs in per_1000_by_run.values()]
        lines.append(f"| {process:<22} | " + " | ".join(map(cell, values)) + " |")
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")

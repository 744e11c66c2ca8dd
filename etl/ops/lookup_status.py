"""The lookup tables and the indicator matches, as ``etl status`` shows them: read from the ``/metrics`` pages of the
processes that enrich (the enrich pool loads the tables), merged across pages, and rendered. Pure.

The metrics (``etl.runtime.metrics``), each table labelled ``intel``, ``assets``, ``geoip_city`` or ``geoip_asn``:
entries in the table in use, the Unix time of the newest file it was loaded from (its age is now minus that),
the malformed lines it skipped, the loads that failed (the old table was kept), whether its current files are
failing to load (an older table, or none, in use); and the matches, a counter by the indicator's source and type.
Pages and processes merge as the pool's own multiprocess collector merges them: the most entries and skipped lines,
the oldest source, failing if any process is, failures and matches added up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from etl.lookups.names import TABLE_NAMES

if TYPE_CHECKING:
    from prometheus_client.samples import Sample

ENTRIES_METRIC = "etl_lookup_entries"
SOURCE_TIME_METRIC = "etl_lookup_source_timestamp_seconds"
SKIPPED_METRIC = "etl_lookup_skipped_lines"
FAILURES_METRIC = "etl_lookup_reload_failures_total"
FAILING_METRIC = "etl_lookup_table_failing"
MATCHES_METRIC = "etl_intel_matches_total"
UNKNOWN = "?"  # how a value no page said is shown, here and in the rest of ``etl status``

# Matches by indicator source, then type: a counter's totals, or their rates per second.
MatchTotals = dict[str, dict[str, int]]
MatchRates = dict[str, dict[str, float | None]]


def _most(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _oldest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _added(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


@dataclass(frozen=True)
class TableState:
    """One table as the metrics tell it; ``None`` where no page said. ``loaded_from`` is Unix seconds."""

    entries: int | None = None
    loaded_from: float | None = None
    skipped: int | None = None
    reload_failures: int | None = None
    failing: bool = False  # no page said: not failing (the gauge shows from a table's first load)

    def merge(self, other: TableState) -> TableState:
        def whole(value: float | None) -> int | None:
            return None if value is None else int(value)

        return TableState(whole(_most(self.entries, other.entries)), _oldest(self.loaded_from, other.loaded_from),
                          whole(_most(self.skipped, other.skipped)),
                          whole(_added(self.reload_failures, other.reload_failures)),
                          self.failing or other.failing)


@dataclass(frozen=True)
class Lookups:
    """The tables by name, and the matches by source and type, of one or more pages."""

    tables: dict[str, TableState] = field(default_factory=dict)
    matches: MatchTotals = field(default_factory=dict)

    def merge(self, other: Lookups) -> Lookups:
        tables = dict(self.tables)
        for name, state in other.tables.items():
            tables[name] = tables[name].merge(state) if name in tables else state
        matches = {source: dict(kinds) for source, kinds in self.matches.items()}
        for source, kinds in other.matches.items():
            for kind, n in kinds.items():
                matches.setdefault(source, {})[kind] = matches.get(source, {}).get(kind, 0) + n
        return Lookups(tables, matches)

    def total_matches(self) -> int:
        return sum(n for kinds in self.matches.values() for n in kinds.values())

    def matches_by_source(self) -> dict[str, int]:
        return {source: sum(kinds.values()) for source, kinds in sorted(self.matches.items())}


_TABLE_METRICS = (ENTRIES_METRIC, SOURCE_TIME_METRIC, SKIPPED_METRIC, FAILURES_METRIC, FAILING_METRIC)


def _table_state(metric: str, value: float) -> TableState:
    """What one sample of ``metric`` says of its table."""
    if metric == ENTRIES_METRIC:
        return TableState(entries=int(value))
    if metric == SOURCE_TIME_METRIC:
        return TableState(loaded_from=value if value > 0 else None)
    if metric == SKIPPED_METRIC:
        return TableState(skipped=int(value))
    if metric == FAILING_METRIC:
        return TableState(failing=value >= 1)
    return TableState(reload_failures=int(value))


def parse_lookups(samples: Iterable[Sample]) -> Lookups | None:
    """The lookup metrics among a page's samples; ``None`` when it has none (a process that does not enrich). Other
    labels than ``table`` (a ``pid``...) merge as pages do; a source time of 0 (never loaded) is unknown. A table
    on the page without a reload failure counter had none: the counter shows only from its first failure; nor
    is one without the failing gauge failing."""
    found = Lookups()
    seen = False
    for sample in samples:
        name, labels = sample.name, sample.labels
        if name in _TABLE_METRICS and "table" in labels:
            found, seen = found.merge(Lookups({labels["table"]: _table_state(name, sample.value)})), True
        elif name == MATCHES_METRIC and {"source", "type"} <= labels.keys():
            found = found.merge(Lookups(matches={labels["source"]: {labels["type"]: int(sample.value)}}))
            seen = True
    if not seen:
        return None
    return Lookups({name: TableState(state.entries, state.loaded_from, state.skipped, state.reload_failures or 0,
                                     state.failing)
                    for name, state in found.tables.items()}, found.matches)


def merge(a: Lookups | None, b: Lookups | None) -> Lookups | None:
    return b if a is None else a if b is None else a.merge(b)


def match_rates(previous: Lookups | None, current: Lookups | None, elapsed_s: float) -> MatchRates:
    """Matches per second of each source and type between two readings: ``None`` where the earlier is unknown or no
    time passed; a source or type first seen counts from 0 (its counter appears with its first match)."""
    if current is None:
        return {}
    rates: MatchRates = {}
    for source, kinds in current.matches.items():
        for kind, after in kinds.items():
            rate = None
            if previous is not None and elapsed_s > 0:
                rate = (after - previous.matches.get(source, {}).get(kind, 0)) / elapsed_s
            rates.setdefault(source, {})[kind] = rate
    return rates


def age(seconds: float | None) -> str:
    """A duration as its two largest units: ``42s``, ``3m05s``, ``2h04m``, ``3d02h``; ``?`` when unknown."""
    if seconds is None:
        return UNKNOWN
    whole = max(int(seconds), 0)
    minutes, secs = divmod(whole, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d{hrs:02d}h"
    if hours:
        return f"{hours}h{mins:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _show(value: object) -> str:
    return UNKNOWN if value is None else str(value)


def _per_s(value: float | None) -> str:
    return "" if value is None else f" ({value:.1f}/s)"


def total_rate(rates: Mapping[str, Mapping[str, float | None]]) -> float | None:
    """All matches per second; unknown when any rate is, or there is none."""
    values = [rate for kinds in rates.values() for rate in kinds.values()]
    return None if not values or None in values else sum(v for v in values if v is not None)


def _ordered(tables: Mapping[str, TableState]) -> list[str]:
    return sorted(tables, key=lambda n: (TABLE_NAMES.index(n) if n in TABLE_NAMES else len(TABLE_NAMES), n))


def _nothing(lookups: Lookups | None) -> list[str]:
    """The one line for lookups unknown (no page answered), or none on the pages read."""
    if lookups is None:
        return [f"{'lookups':<16}? (no /metrics page answered)"]
    return [f"{'lookups':<16}none on the pages read (the enrich pool's shows the tables its settings name: "
            "INTEL_PATHS, ASSETS_PATH, GEOIP_CITY_PATH, GEOIP_ASN_PATH)"]


def render_brief(lookups: Lookups | None, rates: Mapping[str, Mapping[str, float | None]], now: float) -> list[str]:
    """The lookup section in one line, for a screen too small for ``render_lookups``: each table's entries, the
    oldest one's age, what was skipped or failed, and all matches."""
    if lookups is None or not (lookups.tables or lookups.matches):
        return _nothing(lookups)
    states = lookups.tables.values()
    times = [s.loaded_from for s in states if s.loaded_from is not None]
    skipped = [s.skipped for s in states if s.skipped is not None]
    failed = [s.reload_failures for s in states if s.reload_failures is not None]
    tables = ", ".join(f"{name} {_show(lookups.tables[name].entries)}{' FAILING' * lookups.tables[name].failing}"
                       for name in _ordered(lookups.tables))
    return [f"{'lookups':<16}{tables} (oldest {age(now - min(times) if times else None)}, {sum(skipped)} skipped, "
            f"{sum(failed)} reload failures); {lookups.total_matches()} matches{_per_s(total_rate(rates))}"]


def render_lookups(lookups: Lookups | None, rates: Mapping[str, Mapping[str, float | None]], now: float) -> list[str]:
    """The lookup section of ``etl status``: a line a table, the matches, then a line a source with its matches by
    type (the rate, per second, after each total when known)."""
    if lookups is None or not (lookups.tables or lookups.matches):
        return _nothing(lookups)
    lines = [f"{'lookup table':<16}{'entries':>10}{'age':>10}{'skipped':>10}{'reload failures':>17}"]
    for name in _ordered(lookups.tables):
        state = lookups.tables[name]
        since = None if state.loaded_from is None else now - state.loaded_from
        lines.append(f"{name:<16}{_show(state.entries):>10}{age(since):>10}{_show(state.skipped):>10}"
                     f"{_show(state.reload_failures):>17}{'  FAILING to load' * state.failing}")
    lines.append(f"{'intel matches':<16}{lookups.total_matches()}{_per_s(total_rate(rates))}")
    for source, kinds in sorted(lookups.matches.items()):
        by_kind = "  ".join(f"{kind} {total}{_per_s(rates.get(source, {}).get(kind))}"
                            for kind, total in sorted(kinds.items()))
        lines.append(f"  {source:<13} {by_kind}")
    return lines

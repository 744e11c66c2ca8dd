"""What ``etl dev`` shows while it runs and when it stops: progress built from ``etl.ops.status`` snapshots, whether the
generated events are all accounted for, and the summary. Pure: the caller collects the snapshots.

On a terminal the progress is the ``etl status`` table, redrawn in place under the connection block; elsewhere it
is one line per change (and a heartbeat), so a log stays readable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from etl.config import Settings
from etl.ops.lookup_status import Lookups, MatchRates, total_rate
from etl.ops.snapshot import STAGES, Snapshot
from etl.ops.status_render import render
from etl.stages import SINK_NAMES, SINK_STAGES

HEARTBEAT_S = 30.0
CURSOR_UP_AND_ERASE = "\x1b[{lines}F\x1b[J"  # to the start of the line ``lines`` up, then erase to the end
# Sink totals of a snapshot, and the dead-letter stage of each sink.
SINK_TOTALS = {stage.total: stage.name for stage in SINK_STAGES}  # total -> stage


@dataclass(frozen=True)
class Sent:
    """What the generator has published so far (acknowledged by JetStream) and whether it is finished."""

    sent: int = 0
    malformed: int = 0
    total: int = 0
    duplicates: int = 0  # events sent again (the same id): each sink holds them once
    finished: bool = False
    error: str | None = None
    enabled: bool = True

    @property
    def valid(self) -> int:
        """The distinct valid events sent: what each sink holds or dead-letters in the end."""
        return self.sent - self.malformed - self.duplicates

    def describe(self) -> str:
        if not self.enabled:
            return "generator off: waiting for events from outside"
        state = f"stopped: {self.error}" if self.error else "done" if self.finished else "sending"
        duplicates = f", {self.duplicates} duplicates" if self.duplicates else ""
        return f"generated {self.sent}/{self.total} ({self.malformed} malformed{duplicates}), {state}"


def unaccounted(baseline: Snapshot, now: Snapshot, sent: Sent) -> int | None:
    """How many generated events are not yet in every sink or dead-lettered (0: all accounted for); ``None`` when a
    total is unknown. An event counts in a sink when the sink holds it or dead-lettered it; a malformed one when it
    was dead-lettered before the sinks."""
    base_dead, dead = baseline.dead_letters, now.dead_letters
    if base_dead is None or dead is None:
        return None
    missing = 0
    for total, stage in SINK_TOTALS.items():
        before, after = baseline.totals.get(total), now.totals.get(total)
        if before is None or after is None:
            return None
        reached = after - before + dead.get(stage, 0) - base_dead.get(stage, 0)
        missing = max(missing, sent.valid - reached)
    rejected = sum(n for stage, n in dead.items() if stage not in SINK_NAMES) - sum(
        n for stage, n in base_dead.items() if stage not in SINK_NAMES)
    return max(missing, sent.malformed - rejected, 0)


def idle(now: Snapshot) -> bool:
    """Nothing waits: the queues are empty and JetStream holds nothing for the bridge (unknown counts as busy)."""
    return now.queues is not None and not any(now.queues.values()) and now.lag == 0 and now.ack_pending == 0


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _rate(value: float | None) -> str:
    return "" if value is None else f" ({value:+.0f}/s)"


def _matches(lookups: Lookups | None, matches: MatchRates | None) -> str:
    """All indicator matches and their rate, when the enrich pool's metrics said (``etl.ops.lookup_status``)."""
    if lookups is None:
        return ""
    return f"  matches {lookups.total_matches()}{_rate(total_rate(matches or {}))}"


def progress_line(snapshot: Snapshot, rates: Mapping[str, float | None], elapsed_s: float, sent: Sent,
                  missing: int | None, matches: MatchRates | None = None) -> str:
    """One line: each stage's total and rate, the indicator matches, what waits, breakers that are not closed, and
    the generator."""
    stages = "  ".join(f"{stage.replace('_', '-')} {_count(snapshot.totals.get(stage))}{_rate(rates.get(stage))}"
                       for stage in STAGES)
    stages += _matches(snapshot.lookups, matches)
    queued = None if snapshot.queues is None else sum(snapshot.queues.values())
    tripped = [f"{sink} {state}" for sink, state in snapshot.breakers.items() if state not in (None, "closed")]
    extra = f"  breakers: {', '.join(tripped)}" if tripped else ""
    extra += "  bridge paused" if snapshot.bridge_paused else ""
    extra += "".join(f"  ! {source} unreadable" for source in sorted(snapshot.errors))
    return (f"[{elapsed_s:6.1f}s] {stages}  lag {_count(snapshot.lag)}  queued {_count(queued)}{extra}  |  "
            f"{sent.describe()}{_accounted(sent, missing)}")


def _accounted(sent: Sent, missing: int | None) -> str:
    if not sent.enabled or not sent.finished:
        return ""
    if missing == 0:
        return f"; all {sent.sent} generated events accounted for"
    return f"; {_count(missing)} not yet accounted for"


def progress_frame(snapshot: Snapshot, rates: Mapping[str, float | None], settings: Settings, interval_s: float,
                   sent: Sent, missing: int | None, width: int, matches: MatchRates | None = None, *,
                   brief: bool = False) -> str:
    """The ``etl status`` table and the generator's line, each line cut to ``width`` so a redraw can count lines;
    ``brief``: the lookup section on one line."""
    text = render(snapshot, rates, settings, interval_s, matches, brief=brief).replace(
        "Ctrl-C to quit", "Ctrl-C to stop the stack")
    text += f"\n\n{sent.describe()}{_accounted(sent, missing)}"
    return "\n".join(line[:width] for line in text.splitlines())


class Progress:
    """Writes frames (on a terminal) or lines (elsewhere, or when a frame does not fit the terminal's ``height``)
    to ``out``; knows what it printed last."""

    def __init__(self, out: Callable[[str], None], *, terminal: bool, width: int, height: int) -> None:
        self._out, self._terminal, self._width, self._height = out, terminal, width, height
        self._drawn_lines = 0
        self._last_key: tuple[object, ...] | None = None
        self._last_at = float("-inf")

    def show(self, snapshot: Snapshot, rates: Mapping[str, float | None], settings: Settings, *, elapsed_s: float,
             interval_s: float, sent: Sent, missing: int | None, matches: MatchRates | None = None) -> None:
        frame = progress_frame(snapshot, rates, settings, interval_s, sent, missing, self._width, matches)
        lines = frame.count("\n") + 1
        if lines >= self._height:  # the lookup section on one line may make it fit
            frame = progress_frame(snapshot, rates, settings, interval_s, sent, missing, self._width, matches,
                                   brief=True)
            lines = frame.count("\n") + 1
        if self._terminal and lines < self._height:  # a frame taller than the screen cannot be redrawn in place
            erase = CURSOR_UP_AND_ERASE.format(lines=self._drawn_lines) if self._drawn_lines else ""
            self._out(erase + frame)
            self._drawn_lines = lines
            return
        self._drawn_lines = 0
        found = None if snapshot.lookups is None else snapshot.lookups.total_matches()
        key = (tuple(snapshot.totals.values()), snapshot.lag, sent, missing, tuple(snapshot.breakers.values()), found)
        if key != self._last_key or elapsed_s - self._last_at >= HEARTBEAT_S:
            self._out(progress_line(snapshot, rates, elapsed_s, sent, missing, matches))
            self._last_key, self._last_at = key, elapsed_s

    def release(self) -> None:
        """Leave the last frame on screen: lines printed next go below it."""
        self._drawn_lines = 0


def _matches_by_source(lookups: Lookups | None) -> str:
    """This run's indicator matches, by source: the enrich pool's counters, which start at 0 with it."""
    if lookups is None:
        return "? (the enrich pool's metrics did not answer)"
    by_source = ", ".join(f"{source} {n}" for source, n in lookups.matches_by_source().items()) or "none"
    return f"{lookups.total_matches()} this run ({by_source})"


def summary(snapshot: Snapshot) -> str:
    """What reached each sink and what was dead-lettered, by stage, the indicator matches by source, and what
    waits for the next start."""
    lines = ["summary (totals in the data directory, across runs)"]
    lines += [f"  {stage.summary:<26}{_count(snapshot.totals.get(stage.total))}" for stage in SINK_STAGES]
    dead = snapshot.dead_letters
    by_stage = "?" if dead is None else ", ".join(f"{stage} {n}" for stage, n in sorted(dead.items())) or "none"
    lines.append(f"  {'dead letters':<26}{_count(snapshot.totals.get('dead_lettered'))} ({by_stage})")
    lines.append(f"  {'indicator matches':<26}{_matches_by_source(snapshot.lookups)}")
    queued = None if snapshot.queues is None else sum(snapshot.queues.values())
    if queued or snapshot.lag:
        lines.append(f"  {'left for the next start':<26}{_count(queued)} batches in Redis, "
                     f"{_count(snapshot.lag)} events in JetStream")
    lines += [f"  ! {source}: {why}" for source, why in sorted(snapshot.errors.items())]
    return "\n".join(lines)

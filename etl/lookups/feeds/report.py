"""What loading one feed file found: how many indicators, and what it skipped and where, for the operator."""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.lookups.badlines import MAX_BAD_LINES_KEPT, keep_bad_line
from etl.lookups.feeds.values import Indicator

__all__ = ["MAX_BAD_LINES_KEPT", "FeedReport"]


@dataclass(slots=True)
class FeedReport:
    """One file's outcome. ``skipped`` counts malformed lines or objects (their numbers, 1-based, the first
    ``MAX_BAD_LINES_KEPT`` of them, in ``bad_lines``); ``unsupported`` counts STIX indicators whose pattern this
    pipeline cannot match (another object type, another operator), which are not malformed."""

    path: str
    indicators: list[Indicator] = field(default_factory=list)
    skipped: int = 0
    bad_lines: list[int] = field(default_factory=list)
    unsupported: int = 0

    def skip(self, line: int) -> None:
        """Count a malformed line or object, keeping its number if it is among the first few."""
        self.skipped += 1
        keep_bad_line(self.bad_lines, line)

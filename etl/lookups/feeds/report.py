"""What loading one feed file found: how many indicators, and what it skipped and where, for the operator."""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.lookups.badlines import MAX_BAD_LINES_KEPT, keep_bad_line

__all__ = ["MAX_BAD_LINES_KEPT", "FeedReport"]


@dataclass(slots=True)
class FeedReport:
    """One file's outcome, counted as its indicators stream past (``etl.lookups.feeds.read_feed``): the file's
    indicators are not kept here, so that a million-line feed costs the index it fills and nothing beside it.
    ``loaded`` counts the indicators read; ``skipped`` the malformed lines or objects (their numbers, 1-based, the
    first ``MAX_BAD_LINES_KEPT`` of them, in ``bad_lines``); ``unsupported`` the STIX indicators whose pattern
    this pipeline cannot match (another object type, another operator), which are not malformed;
    ``outside_validity`` the STIX indicators expired (``valid_until`` at or before the load) or not yet valid
    (``valid_from`` after it), counted apart from ``unsupported`` since a later feed or load may match them."""

    path: str
    loaded: int = 0
    skipped: int = 0
    bad_lines: list[int] = field(default_factory=list)
    unsupported: int = 0
    outside_validity: int = 0

    def skip(self, line: int) -> None:
        """Count a malformed line or object, keeping its number if it is among the first few."""
        self.skipped += 1
        keep_bad_line(self.bad_lines, line)

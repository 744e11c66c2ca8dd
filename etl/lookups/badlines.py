"""Malformed lines of a lookup file, as the operator is told of them: every one counted, the first few kept by
number, so that a file of garbage costs a count and a short list rather than a list as long as the file."""

from __future__ import annotations

# Line numbers (or a STIX bundle's object positions) kept for each file: enough to find the problem.
MAX_BAD_LINES_KEPT = 5


def keep_bad_line(kept: list[int], line: int) -> None:
    """Append ``line`` (1-based) to ``kept`` if it is among a file's first ``MAX_BAD_LINES_KEPT`` bad lines."""
    if len(kept) < MAX_BAD_LINES_KEPT:
        kept.append(line)

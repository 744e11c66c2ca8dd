"""The rows of a lookup CSV file that hold data: one rule for the indicator feeds and the asset inventory, so that
an operator's comments and blank lines, above the header or between rows, are read alike in both."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def content_rows(rows: Iterable[list[str]]) -> Iterator[list[str]]:
    """The rows of ``rows`` (``csv.reader``'s) that are neither blank nor a ``#`` comment (a row whose first cell
    starts with ``#``), in order. Pass the reader itself, and call this again on it to go on after a ``next``: its
    ``line_num`` still numbers the row last yielded."""
    for row in rows:
        if any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#"):
            yield row

"""The line-oriented feed formats: a plain list (one value a line), CSV and JSON lines.

- plain list: one value a line, its type inferred; blank lines and ``#`` comments (whole lines, or after the
  value) are ignored; the source is the file's name, the severity ``DEFAULT_SEVERITY``;
- CSV: a header row naming ``type,value,source,severity`` (in any order; only ``value`` is required), then one
  indicator a row; an empty ``type`` is inferred, an empty ``source`` is the file's name; blank lines and lines
  whose first cell starts with ``#`` are ignored, above the header too, as in the asset inventory;
- JSON lines: one object a line with the same keys.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

import orjson

from etl.lookups.csvrows import content_rows
from etl.lookups.feeds.report import FeedReport
from etl.lookups.feeds.values import BadValue, Indicator, indicator

CSV_COLUMNS = ("type", "value", "source", "severity")


def _read(report: FeedReport, line: int, value: str, source: str, severity: str, declared: str) -> Indicator | None:
    """One row's indicator; ``None`` for a row with a bad value, which is counted in ``report`` as skipped."""
    try:
        return indicator(value, source, severity, declared=declared)
    except BadValue:
        report.skip(line)
        return None


def read_plain(report: FeedReport, lines: Iterable[str], source: str) -> Iterator[Indicator]:
    """A plain list's indicators, one at a time as ``lines`` are read; bad lines are counted in ``report``."""
    for number, line in enumerate(lines, start=1):
        value = line.split("#", 1)[0].strip()
        if value and (found := _read(report, number, value, source, "", "")) is not None:
            yield found


def read_csv(report: FeedReport, lines: Iterable[str], source: str) -> Iterator[Indicator]:
    """A CSV feed's indicators, one at a time as ``lines`` are read; bad rows are counted in ``report``, blank and
    ``#`` rows passed over (``etl.lookups.csvrows``), and a file of none but those yields nothing. Raises
    ``ValueError`` (when iterated) if its header has no ``value`` column: then no row can be read."""
    rows = csv.reader(lines)
    first = next(content_rows(rows), None)
    if first is None:  # an empty file, or comments only: a feed with nothing to list, not one that cannot be read
        return
    header = [name.strip().lower() for name in first]
    if "value" not in header:
        raise ValueError(f"the header row names no 'value' column (expected {','.join(CSV_COLUMNS)})")
    # Where each column is, found once rather than a dict made a row; a column named twice is read from its last.
    where = {name: i for i, name in enumerate(header)}
    at_value = where["value"]
    at_source, at_severity, at_type = (where.get(name) for name in ("source", "severity", "type"))
    for row in content_rows(rows):
        number = rows.line_num
        if len(row) != len(header):
            report.skip(number)
            continue
        found = _read(report, number, row[at_value],
                      (row[at_source].strip() if at_source is not None else "") or source,
                      row[at_severity] if at_severity is not None else "", row[at_type] if at_type is not None else "")
        if found is not None:
            yield found


def read_json_lines(report: FeedReport, lines: Iterable[str], source: str) -> Iterator[Indicator]:
    """A JSON-lines feed's indicators, one at a time as ``lines`` are read: a line that is not a JSON object, or
    has a field that is not text, is skipped and counted in ``report``."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError:
            fields = None
        texts = [fields.get(key) or "" for key in CSV_COLUMNS] if isinstance(fields, dict) else None
        if texts is None or not all(isinstance(text, str) for text in texts):
            report.skip(number)
            continue
        kind, value, given, severity = texts
        if (found := _read(report, number, value, given.strip() or source, severity, kind)) is not None:
            yield found

"""The line-oriented feed formats: a plain list (one value a line), CSV and JSON lines.

- plain list: one value a line, its type inferred; blank lines and ``#`` comments (whole lines, or after the
  value) are ignored; the source is the file's name, the severity ``DEFAULT_SEVERITY``;
- CSV: a header row naming ``type,value,source,severity`` (in any order; only ``value`` is required), then one
  indicator a row; an empty ``type`` is inferred, an empty ``source`` is the file's name;
- JSON lines: one object a line with the same keys.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping

import orjson

from etl.lookups.feeds.report import FeedReport
from etl.lookups.feeds.values import BadValue, indicator

CSV_COLUMNS = ("type", "value", "source", "severity")


def _add(report: FeedReport, line: int, fields: Mapping[str, object], default_source: str) -> None:
    """One row's indicator into ``report``; a row with a field that is not text, or a bad value, is skipped."""
    texts = {key: fields.get(key) or "" for key in CSV_COLUMNS}
    if not all(isinstance(text, str) for text in texts.values()):
        report.skip(line)
        return
    try:
        report.indicators.append(indicator(str(texts["value"]), str(texts["source"]).strip() or default_source,
                                           str(texts["severity"]), declared=str(texts["type"])))
    except BadValue:
        report.skip(line)


def read_plain(report: FeedReport, lines: Iterable[str], source: str) -> None:
    """A plain list's indicators into ``report``."""
    for number, line in enumerate(lines, start=1):
        value = line.split("#", 1)[0].strip()
        if value:
            _add(report, number, {"value": value}, source)


def read_csv(report: FeedReport, lines: Iterable[str], source: str) -> None:
    """A CSV feed's indicators into ``report``. Raises ``ValueError`` when its header has no ``value`` column:
    then no row can be read."""
    rows = csv.reader(lines)
    header = [name.strip().lower() for name in next(rows, [])]
    if "value" not in header:
        raise ValueError(f"the header row names no 'value' column (expected {','.join(CSV_COLUMNS)})")
    for row in rows:
        number = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            report.skip(number)
            continue
        _add(report, number, dict(zip(header, row, strict=True)), source)


def read_json_lines(report: FeedReport, lines: Iterable[str], source: str) -> None:
    """A JSON-lines feed's indicators into ``report``: a line that is not a JSON object is skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError:
            fields = None
        if isinstance(fields, dict):
            _add(report, number, fields, source)
        else:
            report.skip(number)

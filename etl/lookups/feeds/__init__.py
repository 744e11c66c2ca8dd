"""Indicator feeds: files of known-bad addresses, networks, domains and file hashes, read one line at a time.

A path is a file or a directory (its files, recursively, in name order; hidden files are ignored). A file's
format is told by its name: ``.csv`` is CSV, ``.jsonl``/``.ndjson`` JSON lines, ``.json`` a STIX 2.1 bundle,
anything else a plain list (see ``etl.lookups.feeds.tabular`` and ``etl.lookups.feeds.stix``). A malformed line
or object is skipped and counted in the file's ``FeedReport``; an empty file (or a CSV of comments only) has no
indicators; a file that cannot be read or parsed at all raises ``LookupFileError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

from etl.errors import LookupFileError
from etl.lookups.feeds.report import FeedReport
from etl.lookups.feeds.stix import read_bundle
from etl.lookups.feeds.tabular import read_csv, read_json_lines, read_plain
from etl.lookups.feeds.values import Indicator, IndicatorType

__all__ = ["FeedReport", "Indicator", "IndicatorType", "feed_files", "load_feed", "read_feed", "read_feeds"]

STIX_SUFFIX = ".json"
CSV_SUFFIX = ".csv"
_LINE_READERS = {CSV_SUFFIX: read_csv, ".jsonl": read_json_lines, ".ndjson": read_json_lines}


def feed_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Every feed file ``paths`` name: files as given, directories' files recursively in name order. Raises
    ``LookupFileError`` for a path that does not exist."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            yield path
        else:
            raise LookupFileError(str(path), "no such file or directory")


def _indicators(path: Path, report: FeedReport, now: datetime) -> Iterator[Indicator]:
    suffix = path.suffix.lower()
    if suffix == STIX_SUFFIX:
        # A bundle is one JSON document, so it is read whole; bundles are not where million-line feeds come in.
        text = path.read_text(encoding="utf-8-sig")
        if text.strip():  # an empty file lists nothing, as an empty file of any other format does
            yield from read_bundle(report, orjson.loads(text), path.name, now)
        return
    # Line by line: a worker holds no file's text or lines, only the index they fill. The csv module wants its
    # file opened with newline="", to see the line ends inside a quoted field as they are.
    with path.open(encoding="utf-8-sig", newline="" if suffix == CSV_SUFFIX else None) as lines:
        yield from _LINE_READERS.get(suffix, read_plain)(report, lines, path.name)


def read_feed(path: Path, report: FeedReport, now: datetime) -> Iterator[Indicator]:
    """One feed file's indicators, one at a time as the file is read, its source defaulting to the file's name,
    a STIX indicator only if valid at ``now`` (aware); ``report`` counts them, and the lines skipped, as they
    pass. Raises ``LookupFileError``, while iterated, when the file cannot be read (missing, unreadable, not
    UTF-8) or parsed at all (a CSV without a ``value`` column, a ``.json`` file that is not a STIX bundle):
    possibly after yielding some, so a caller builds nothing from a file until it is read to its end."""
    try:
        for indicator in _indicators(path, report, now):
            report.loaded += 1
            yield indicator
    except (OSError, UnicodeDecodeError, ValueError) as e:  # orjson.JSONDecodeError is a ValueError
        raise LookupFileError(str(path), str(e)) from e


def read_feeds(paths: Iterable[str | Path], reports: list[FeedReport],
               now: datetime | None = None) -> Iterator[Indicator]:
    """Every feed file's indicators, in the order ``feed_files`` gives, each file's ``FeedReport`` appended to
    ``reports`` as it is begun; STIX validity is judged at ``now``, by default the clock as the load begins, one
    time for every file. Raises ``LookupFileError`` on the first file that cannot be loaded, so that a
    caller keeps the table it has rather than build one from part of its feeds."""
    at = datetime.now(UTC) if now is None else now
    for path in feed_files(paths):
        report = FeedReport(str(path))
        reports.append(report)
        yield from read_feed(path, report, at)


def load_feed(path: Path, now: datetime | None = None) -> tuple[list[Indicator], FeedReport]:
    """One feed file's indicators as a list, and its report: for a tool or a test. A worker streams them into
    its index with ``read_feeds`` instead. ``now`` is as for ``read_feeds``; raises ``LookupFileError`` as
    ``read_feed`` does."""
    report = FeedReport(str(path))
    return list(read_feed(path, report, datetime.now(UTC) if now is None else now)), report

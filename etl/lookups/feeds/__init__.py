"""Indicator feeds: files of known-bad addresses, networks, domains and file hashes, read into ``Indicator``s.

A path is a file or a directory (its files, recursively, in name order; hidden files are ignored). A file's
format is told by its name: ``.csv`` is CSV, ``.jsonl``/``.ndjson`` JSON lines, ``.json`` a STIX 2.1 bundle,
anything else a plain list (see ``etl.lookups.feeds.tabular`` and ``etl.lookups.feeds.stix``). A malformed line
or object is skipped and counted in the file's ``FeedReport``; a file that cannot be read or parsed at all raises
``LookupFileError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from etl.errors import LookupFileError
from etl.lookups.feeds.report import FeedReport
from etl.lookups.feeds.stix import read_bundle
from etl.lookups.feeds.tabular import read_csv, read_json_lines, read_plain
from etl.lookups.feeds.values import Indicator, IndicatorType

__all__ = ["FeedReport", "Indicator", "IndicatorType", "feed_files", "load_feed", "load_feeds"]

_LINE_READERS = {".csv": read_csv, ".jsonl": read_json_lines, ".ndjson": read_json_lines}
STIX_SUFFIX = ".json"


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


def load_feed(path: Path) -> FeedReport:
    """One feed file's indicators, its source defaulting to the file's name. Raises ``LookupFileError`` when the
    file cannot be read (missing, unreadable, not UTF-8) or parsed at all (a CSV without a ``value`` column, a
    ``.json`` file that is not a STIX bundle)."""
    report = FeedReport(str(path))
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
        if suffix == STIX_SUFFIX:
            read_bundle(report, orjson.loads(text), path.name)
        else:
            _LINE_READERS.get(suffix, read_plain)(report, text.splitlines(), path.name)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # orjson.JSONDecodeError is a ValueError
        raise LookupFileError(str(path), str(e)) from e
    return report


def load_feeds(paths: Iterable[str | Path]) -> list[FeedReport]:
    """Every feed file's report, in the order ``feed_files`` gives; raises ``LookupFileError`` on the first file
    that cannot be loaded, so that a caller keeps the table it has rather than build one from part of its feeds."""
    return [load_feed(path) for path in feed_files(paths)]

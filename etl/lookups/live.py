"""The lookup tables of one enrich process, kept current while it runs: ``LiveLookups``.

``current()`` is what a batch is enriched with: one snapshot (``LookupTables``), read as one attribute with no
lock, and whole: a reload builds a new table beside the old one and then replaces the snapshot by a new one with
that table swapped in, so a batch that took the old snapshot finishes with the old tables.

``start()`` loads every configured table before the process takes its first batch, then a daemon thread checks
their files every ``reload_s`` seconds (``etl.lookups.changes``) and reloads each table whose files changed, on its
own: a broken feed does not hold up an inventory update (a slow one delays the tables after it: they load one
after another, in ``table_sources``' order). A table that fails to load keeps the one in use (at the
start: is absent until a later check loads it) and is tried again after a backoff (``etl.lookups.changes``); its
error is logged and counted (``etl_lookup_reload_failures_total``) once per version of its files, and
``etl_lookup_table_failing`` is 1 until a load of it succeeds.

Building a table frees much of the C heap (its dicts grow by copying); after a swap that memory is handed back to
the system (``etl.runtime.heap``), so that a worker's resident size is near what its tables hold.

A GeoIP reader maps its file into memory. An old reader is never closed here: a batch in flight may still read
it. It is left to Python's reference counting, which unmaps it as soon as the last snapshot holding it is dropped,
that is when the last batch that took it ends; a grace period would have to guess how long a batch can take.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from etl.errors import LookupFileError
from etl.lookups.changes import DISCARDS_WARNED_AFTER, TableSignature, TableWatch, newest_mtime_s
from etl.lookups.sources import Loaded, TableSource, snapshot
from etl.lookups.tables import EMPTY, LookupTables
from etl.runtime.heap import release_free_memory
from etl.runtime.metrics import (
    LOOKUP_DISCARDED_LOADS,
    LOOKUP_ENTRIES,
    LOOKUP_RELOAD_FAILURES,
    LOOKUP_SKIPPED_LINES,
    LOOKUP_SOURCE_TIMESTAMP,
    LOOKUP_TABLE_FAILING,
)

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0


class LiveLookups:
    """The current ``LookupTables`` of ``sources``, reloaded every ``reload_s`` seconds (0: never) once started."""

    def __init__(self, sources: Sequence[TableSource], reload_s: float) -> None:
        self._sources = tuple(sources)
        self._reload_s = reload_s
        self._watches = {source.name: TableWatch() for source in self._sources}
        self._tables: dict[str, Any] = {}  # what is loaded, by table name; changed under ``_lock`` only
        self._snapshot: LookupTables | None = None if self._sources else EMPTY
        self._lock = threading.Lock()  # one check at a time: the start's and the thread's
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def loaded(self) -> bool:
        """Whether the first load happened (``start``, or a first ``current``); at once when nothing is
        configured."""
        return self._snapshot is not None

    def current(self) -> LookupTables:
        """The tables to enrich a batch with. Before ``start`` (a process that serves the enrich queue without the
        worker's boot, as a test's), the first call loads them, and callers wait for that load."""
        tables = self._snapshot
        return tables if tables is not None else self._load_first()

    def start(self) -> None:
        """Load every table now, then start the reload thread (unless ``reload_s`` is 0 or nothing is
        configured). Returns once the first load is done, whatever its outcome."""
        self._load_first()
        if self._reload_s > 0 and self._sources and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lookup-reload", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the reload thread after the load it may be in; whether it ended within ``timeout_s``."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout_s)
        return thread is None or not thread.is_alive()

    def check(self) -> list[str]:
        """Check every table's files once, reloading and swapping in each that changed; the names of those
        swapped."""
        swapped = []
        with self._lock:
            for source in self._sources:
                if self._check_one(source):
                    # At once: batches use this table while the next loads. Tables load one after another, so a
                    # broken feed does not hold up an inventory update, but a slow one does for the tables after it.
                    self._snapshot = snapshot(self._tables)
                    swapped.append(source.name)
        if swapped:
            release_free_memory()  # what building the new table and dropping the old one freed
        return swapped

    def _load_first(self) -> LookupTables:
        """Every table, then one snapshot of them all: a batch waiting for the first load never gets part of it."""
        with self._lock:
            if self._snapshot is None:
                for source in self._sources:
                    self._check_one(source)
                self._snapshot = snapshot(self._tables)
                release_free_memory()  # what building the tables freed
            return self._snapshot

    def _loop(self) -> None:
        while not self._stopping.wait(self._reload_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a bug must not end reloading for the process's life
                log.exception("checking the lookup files failed unexpectedly")

    def _check_one(self, source: TableSource) -> bool:
        """Load ``source`` if its files changed since last tried, or failed and are due to be tried again, into the
        tables the next snapshot is made of; whether it was loaded."""
        watch = self._watches[source.name]
        before = source.signature()
        if not watch.due(before):
            return False
        started = time.monotonic()
        try:
            loaded = source.load(source.paths)
        except Exception as e:  # noqa: BLE001 - LookupFileError, or a bug: either way the table in use stays
            if not watch.settle(before, source.signature()):
                _discarded(source, watch)
            else:
                LOOKUP_TABLE_FAILING.labels(table=source.name).set(1)
                if watch.failed():
                    self._failed(source, e)
            return False
        if not watch.settle(before, source.signature()):
            _discarded(source, watch)
            return False
        watch.loaded()
        self._tables[source.name] = loaded.table
        _report_loaded(source, loaded, before, time.monotonic() - started)
        return True

    def _failed(self, source: TableSource, error: Exception) -> None:
        """The first failure of a version of ``source``'s files: counted and logged once."""
        LOOKUP_RELOAD_FAILURES.labels(table=source.name).inc()
        kept = "kept the table loaded before" if source.name in self._tables else "no table"
        extra = {"table": source.name}
        if isinstance(error, LookupFileError):
            log.error("lookup table %s failed to load, %s (tried again, with a backoff): %s", source.name,
                      kept, error, extra=extra)
        else:
            log.error("lookup table %s failed to load unexpectedly, %s (tried again, with a backoff)",
                      source.name, kept, exc_info=error, extra=extra)


def _discarded(source: TableSource, watch: TableWatch) -> None:
    """A load discarded because a file changed in place under it: counted, and a warning once that happens
    ``DISCARDS_WARNED_AFTER`` times in a row (the table's files are then rewritten faster than they load)."""
    LOOKUP_DISCARDED_LOADS.labels(table=source.name).inc()
    extra = {"table": source.name, "discarded": watch.discarded}
    if watch.discarded == DISCARDS_WARNED_AFTER:
        log.warning("lookup table %s: its files changed in place during each of the last %d loads, which were "
                    "discarded; write a new file beside the old and rename it over, or the table never loads",
                    source.name, watch.discarded, extra=extra)
    else:
        log.info("lookup table %s: its files changed while loading; loading them again at the next check",
                 source.name, extra=extra)


def _report_loaded(source: TableSource, loaded: Loaded, signature: TableSignature, seconds: float) -> None:
    """The table's gauges, for the table now in use, and one log line."""
    LOOKUP_TABLE_FAILING.labels(table=source.name).set(0)
    LOOKUP_ENTRIES.labels(table=source.name).set(loaded.entries)
    LOOKUP_SKIPPED_LINES.labels(table=source.name).set(loaded.skipped)
    newest = newest_mtime_s(signature)
    if newest is not None:
        LOOKUP_SOURCE_TIMESTAMP.labels(table=source.name).set(newest)
    log.info("lookup table %s loaded: %d entries from %d files in %.1fs (%d malformed lines skipped%s)", source.name,
             loaded.entries, len(signature), seconds, loaded.skipped, loaded.passed_over(),
             extra={"table": source.name, "entries": loaded.entries, "skipped": loaded.skipped,
                    "unsupported": loaded.unsupported, "outside_validity": loaded.outside_validity})

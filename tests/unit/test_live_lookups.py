"""The real reload holder (``etl.lookups.live``) on real files: a change is picked up, a bad file keeps the table
in use (counted once, logged once), tables reload on their own, and a snapshot taken before a swap stays whole."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import orjson
import pytest
from dramatiq.brokers.stub import StubBroker
from prometheus_client import REGISTRY

from etl.errors import LookupFileError, LookupReadError
from etl.lookups.changes import DISCARDS_WARNED_AFTER
from etl.lookups.live import LiveLookups
from etl.lookups.sources import Loaded, TableSource, load_intel, load_inventory, table_sources
from etl.lookups.tables import LookupTables
from etl.middleware.lookups import LookupsOnBoot
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import parse_event
from etl.rdns.strategies import OffResolver
from tests.support.mmdb import city_record, write_mmdb
from tests.waiting import wait_for


def replace(path: Path, text: str) -> None:
    """Write beside, rename over: how a feed should be updated."""
    beside = path.with_name(f".{path.name}.new")
    beside.write_text(text)
    os.replace(beside, path)


def matched(tables: LookupTables, address: str) -> bool:
    assert tables.indicators is not None
    return bool(tables.indicators.match({"metadata": {"host_ip": address}}))


def site_of(tables: LookupTables, address: str) -> str | None:
    assert tables.assets is not None
    return tables.assets.lookup(address).site


def sample(name: str, table: str) -> float:
    return REGISTRY.get_sample_value(name, {"table": table}) or 0.0


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    feed = tmp_path / "feeds" / "bad-ips.txt"
    feed.parent.mkdir()
    feed.write_text("198.51.100.1\n")
    assets = tmp_path / "assets.csv"
    assets.write_text("cidr,site\n10.0.0.0/8,hq\n")
    return {"feed": feed, "assets": assets, "dir": feed.parent}


@pytest.fixture
def lookups(files: dict[str, Path]) -> Iterator[LiveLookups]:
    live = LiveLookups(table_sources(intel_paths=[str(files["dir"])], assets_path=str(files["assets"])), 0)
    live.start()
    yield live
    live.stop()


def test_a_changed_feed_is_picked_up_and_an_unchanged_one_is_not_reloaded(files: dict[str, Path],
                                                                          lookups: LiveLookups) -> None:
    assert matched(lookups.current(), "198.51.100.1")
    assert lookups.check() == []
    replace(files["feed"], "203.0.113.9\n")
    assert lookups.check() == ["intel"]
    assert matched(lookups.current(), "203.0.113.9") and not matched(lookups.current(), "198.51.100.1")
    (files["dir"] / "more.txt").write_text("192.0.2.77\n")  # a feed added to the directory
    assert lookups.check() == ["intel"]
    assert matched(lookups.current(), "192.0.2.77")


def test_a_feed_renamed_over_is_picked_up_even_with_the_same_size_and_mtime(files: dict[str, Path],
                                                                             lookups: LiveLookups) -> None:
    """A rename within one tick of a coarse file-system clock: only the inode tells the new file from the old."""
    old = files["feed"].stat()
    replace(files["feed"], "198.51.100.2\n")
    os.utime(files["feed"], ns=(old.st_atime_ns, old.st_mtime_ns))
    assert files["feed"].stat().st_size == old.st_size
    assert lookups.check() == ["intel"] and matched(lookups.current(), "198.51.100.2")


def test_a_bad_file_keeps_the_table_in_use_counts_one_failure_and_logs_once(
        files: dict[str, Path], lookups: LiveLookups, caplog: pytest.LogCaptureFixture) -> None:
    failures = sample("etl_lookup_reload_failures_total", "assets")
    caplog.set_level(logging.ERROR, logger="etl.lookups.live")
    replace(files["assets"], "no header naming the prefix column\n10.0.0.0/8\n")
    for _ in range(3):
        assert lookups.check() == []
    assert site_of(lookups.current(), "10.1.2.3") == "hq", "the old inventory is kept"
    assert sample("etl_lookup_reload_failures_total", "assets") == failures + 1
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert len(caplog.records) == 1 and "assets" in caplog.records[0].getMessage()

    replace(files["assets"], "still,bad\n")  # changed again, still bad: tried, logged and counted again
    assert lookups.check() == [] and len(caplog.records) == 2
    assert sample("etl_lookup_reload_failures_total", "assets") == failures + 2
    replace(files["assets"], "cidr,site\n10.0.0.0/8,dc2\n")
    assert lookups.check() == ["assets"] and site_of(lookups.current(), "10.1.2.3") == "dc2"


def test_tables_reload_on_their_own(files: dict[str, Path], lookups: LiveLookups) -> None:
    """A broken feed does not hold up an inventory update, nor an inventory the feed's."""
    files["feed"].write_bytes(b"\xff\xfe not UTF-8")
    replace(files["assets"], "cidr,site\n10.0.0.0/8,dc2\n")
    assert lookups.check() == ["assets"]
    tables = lookups.current()
    assert site_of(tables, "10.1.2.3") == "dc2" and matched(tables, "198.51.100.1")
    replace(files["feed"], "203.0.113.9\n")
    assert lookups.check() == ["intel"] and site_of(lookups.current(), "10.1.2.3") == "dc2"


def test_a_snapshot_taken_before_a_swap_stays_whole(tmp_path: Path, files: dict[str, Path]) -> None:
    """A batch that took the old snapshot reads old tables only, GeoIP included, even once the old database file
    is gone: its reader is not closed under it."""
    city = write_mmdb(tmp_path / "city.mmdb", {"203.0.113.0/24": city_record("FR")}, database_type="GeoLite2-City")
    live = LiveLookups(table_sources(intel_paths=[str(files["feed"])], assets_path=str(files["assets"]),
                                     geoip_city_path=str(city)), 0)
    before = live.current()  # not started: the first call loads
    replace(files["feed"], "203.0.113.9\n")
    replace(files["assets"], "cidr,site\n10.0.0.0/8,dc2\n")
    newer = write_mmdb(tmp_path / ".city.new", {"203.0.113.0/24": city_record("DE")}, database_type="GeoLite2-City")
    os.replace(newer, city)
    assert live.check() == ["intel", "assets", "geoip_city"]
    after = live.current()
    assert matched(before, "198.51.100.1") and not matched(before, "203.0.113.9")
    assert site_of(before, "10.1.2.3") == "hq"
    city.unlink()
    assert before.geoip is not None and before.geoip.lookup("203.0.113.5").country == "FR"
    assert after.geoip is not None and after.geoip.lookup("203.0.113.5").country == "DE"
    assert matched(after, "203.0.113.9") and site_of(after, "10.1.2.3") == "dc2"


def test_a_table_missing_at_the_start_is_absent_and_counted_until_it_appears(tmp_path: Path) -> None:
    feed = tmp_path / "later.txt"
    failures = sample("etl_lookup_reload_failures_total", "intel")
    live = LiveLookups(table_sources(intel_paths=[str(feed)]), 0)
    live.start()
    assert live.current().indicators is None
    assert sample("etl_lookup_reload_failures_total", "intel") == failures + 1
    assert live.check() == [], "still missing"
    replace(feed, "# a plain list\n198.51.100.1\nnot an indicator\n")
    assert live.check() == ["intel"] and matched(live.current(), "198.51.100.1")
    assert sample("etl_lookup_entries", "intel") == 1
    assert sample("etl_lookup_skipped_lines", "intel") == 1
    assert sample("etl_lookup_source_timestamp_seconds", "intel") == feed.stat().st_mtime_ns / 1e9


def test_a_load_that_failed_for_no_fault_of_the_files_is_tried_again_without_them_changing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Out of descriptors at the start: the table is absent and flagged failing, not until someone edits the
    feed but until the next check, which loads it and clears the flag."""
    feed = tmp_path / "feed.txt"
    feed.write_text("198.51.100.1\n")
    tries = []

    def load_out_of_descriptors_once(paths: tuple[str, ...]) -> Loaded:
        tries.append(paths)
        if len(tries) == 1:
            raise LookupFileError(str(feed), "[Errno 24] Too many open files")
        return load_intel(paths)

    caplog.set_level(logging.ERROR, logger="etl.lookups.live")
    live = LiveLookups([TableSource("intel", (str(feed),), load_out_of_descriptors_once)], 0)
    live.start()
    assert live.current().indicators is None and sample("etl_lookup_table_failing", "intel") == 1
    assert live.check() == ["intel"] and matched(live.current(), "198.51.100.1")
    assert sample("etl_lookup_table_failing", "intel") == 0 and len(caplog.records) == 1


def test_a_table_that_keeps_failing_stays_flagged_and_is_logged_once(files: dict[str, Path], lookups: LiveLookups,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="etl.lookups.live")
    assert sample("etl_lookup_table_failing", "assets") == 0
    replace(files["assets"], "no header naming the prefix column\n10.0.0.0/8\n")
    for _ in range(10):
        assert lookups.check() == []
        assert sample("etl_lookup_table_failing", "assets") == 1
    assert len(caplog.records) == 1
    replace(files["assets"], "cidr,site\n10.0.0.0/8,dc2\n")
    assert lookups.check() == ["assets"] and sample("etl_lookup_table_failing", "assets") == 0


def test_a_load_during_which_the_file_changed_is_tried_again(tmp_path: Path) -> None:
    """A writer still at work: what was read may be half a feed, so it is not swapped in."""
    feed = tmp_path / "feed.txt"
    feed.write_text("198.51.100.1\n")
    loads = []

    def load_while_written(paths: tuple[str, ...]) -> Loaded:
        loaded = load_intel(paths)
        if not loads:
            with feed.open("a") as more:
                more.write("198.51.100.2\n")
        loads.append(loaded)
        return loaded

    live = LiveLookups([TableSource("intel", (str(feed),), load_while_written)], 0)
    assert live.current().indicators is None, "the first read was discarded"
    assert live.check() == ["intel"] and len(loads) == 2
    assert matched(live.current(), "198.51.100.2")


def test_a_feed_renamed_over_during_every_load_is_still_loaded(tmp_path: Path) -> None:
    """The loader read one whole version, old or new: it is kept, and the newer file is loaded at the next
    check."""
    feed = tmp_path / "feed.txt"
    feed.write_text("198.51.100.1\n")
    loads = []

    def load_while_renamed_over(paths: tuple[str, ...]) -> Loaded:
        loaded = load_intel(paths)
        loads.append(loaded)
        replace(feed, f"198.51.100.{len(loads) + 1}\n")
        return loaded

    live = LiveLookups([TableSource("intel", (str(feed),), load_while_renamed_over)], 0)
    assert matched(live.current(), "198.51.100.1")
    for n in (2, 3):
        assert live.check() == ["intel"] and matched(live.current(), f"198.51.100.{n}")


def test_loads_discarded_for_a_file_rewritten_in_place_are_counted_and_warned_of_after_some_in_a_row(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text("198.51.100.1\n")

    def load_while_appended_to(paths: tuple[str, ...]) -> Loaded:
        loaded = load_intel(paths)
        with feed.open("a") as more:
            more.write("198.51.100.9\n")
        return loaded

    discarded = sample("etl_lookup_discarded_loads_total", "intel")
    caplog.set_level(logging.INFO, logger="etl.lookups.live")
    live = LiveLookups([TableSource("intel", (str(feed),), load_while_appended_to)], 0)
    live.start()
    for _ in range(DISCARDS_WARNED_AFTER + 2):
        assert live.check() == []
    assert live.current().indicators is None
    assert sample("etl_lookup_discarded_loads_total", "intel") == discarded + DISCARDS_WARNED_AFTER + 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rename" in warnings[0].getMessage()


def test_a_batch_waiting_for_the_first_load_gets_every_table(files: dict[str, Path]) -> None:
    """Without the worker's boot, the first ``current()`` loads: a second caller meanwhile waits for the whole
    snapshot, never one with the feed loaded and the inventory not yet."""
    got: list[LookupTables] = []
    live: LiveLookups

    def load_inventory_while_a_batch_asks(paths: tuple[str, ...]) -> Loaded:
        batch = threading.Thread(target=lambda: got.append(live.current()))
        batch.start()
        batch.join(0.2)  # long enough for a caller that does not wait to have taken its snapshot
        return load_inventory(paths)

    sources = table_sources(intel_paths=[str(files["feed"])])
    sources.append(TableSource("assets", (str(files["assets"]),), load_inventory_while_a_batch_asks))
    live = LiveLookups(sources, 0)
    live.current()
    wait_for(lambda: got, timeout_s=10)
    assert got[0].indicators is not None and got[0].assets is not None


def test_the_thread_reloads_within_the_interval(files: dict[str, Path]) -> None:
    live = LiveLookups(table_sources(intel_paths=[str(files["feed"])]), 0.05)
    live.start()
    try:
        replace(files["feed"], "203.0.113.9\n")
        wait_for(lambda: matched(live.current(), "203.0.113.9"), timeout_s=10, interval_s=0.02)
    finally:
        assert live.stop()


@pytest.mark.parametrize(("queues", "loads"), [({"enrich"}, True), (None, True), ({"publish", "graph"}, False)])
def test_only_a_worker_serving_the_enrich_queue_loads_the_tables(files: dict[str, Path], queues: set[str] | None,
                                                                 loads: bool) -> None:
    live = LiveLookups(table_sources(intel_paths=[str(files["feed"])]), 0)
    middleware = LookupsOnBoot(live)
    broker = StubBroker()
    broker.declare_queue("enrich")
    worker = dramatiq.Worker(broker, queues=queues)
    middleware.before_worker_boot(broker, worker)
    assert live.loaded is loads
    middleware.before_worker_shutdown(broker, worker)


def test_a_batch_failing_on_a_database_rewritten_in_place_succeeds_once_the_change_is_reloaded(
        tmp_path: Path) -> None:
    """The file keeps its inode when rewritten in place, but not its mtime and size: the next check reloads it, and
    the batch, retried with the new snapshot, is enriched from the new database."""
    city = write_mmdb(tmp_path / "city.mmdb", {"198.51.100.0/24": city_record("NL")}, database_type="GeoLite2-City")
    other = write_mmdb(tmp_path / "other.mmdb", {f"{10 + i // 256}.{i % 256}.0.0/16": city_record("FR")
                                                 for i in range(1000)} | {"198.51.100.0/24": city_record("LU")},
                       database_type="GeoLite2-City")
    assert other.stat().st_size > city.stat().st_size  # a read past a mapped file's end would be SIGBUS
    live = LiveLookups(table_sources(geoip_city_path=str(city)), 0)
    live.start()
    payload = base64.b64encode(orjson.dumps({"dst_ip": "198.51.100.7"})).decode()
    events = [parse_event(orjson.dumps({"id": "e-1", "timestamp": 1, "type": "net_connect", "metadata": {},
                                        "payload": payload}), max_bytes=1 << 20)]

    def country() -> str:
        out = enrich_batch(events, env="test", resolver=OffResolver(), now=datetime.now(UTC), tables=live.current())
        return str(out[0]["dst_geo"]["country"])

    assert country() == "NL"
    shutil.copyfile(other, city)
    live.current().memo.clear()  # another destination, not yet remembered, as most of a batch's are
    with pytest.raises(LookupReadError):
        country()
    assert live.check() == ["geoip_city"]
    assert country() == "LU"

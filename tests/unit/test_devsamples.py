"""The local default's sample lookup files (``etl.dev.samples``): each loads with the pipeline's own loaders, nothing
skipped, and the sample corpus matches them the way a run should show: every kind of indicator, on a few events."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etl.config import Settings
from etl.dev import corpus, producers
from etl.dev.mmdb import asn_record, city_record, write_mmdb
from etl.dev.samples import DEV_LOOKUP_RELOAD_S, SampleLookups, write_samples
from etl.lookups.assets import load_assets
from etl.lookups.feeds import FeedReport, feed_files, load_feed
from etl.lookups.feeds.values import Indicator
from etl.lookups.geoip import GeoIp
from etl.lookups.indicators import IndicatorIndex
from etl.lookups.tables import LookupTables
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import Event, parse_event
from etl.pipeline.peers import destination_of
from etl.rdns.strategies import FakeResolver

MAX_BYTES = Settings().max_event_bytes


def load_feeds(paths: list[Path]) -> list[tuple[list[Indicator], FeedReport]]:
    """Each feed file's indicators and report, read whole (tests only: the workers stream them)."""
    return [load_feed(path) for path in feed_files(paths)]
EVENTS = 4000


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> SampleLookups:
    files, written = write_samples(tmp_path_factory.mktemp("dev"))
    assert len(written) == 7
    return files


@pytest.fixture(scope="module")
def events() -> list[Event]:
    raw = corpus.generate(EVENTS, hosts=10, seed=5)
    return [parse_event(event, max_bytes=MAX_BYTES) for event in dict.fromkeys(raw)]  # duplicates once


def test_a_feed_in_each_format_loads_without_a_skipped_line(samples: SampleLookups) -> None:
    loaded = load_feeds([samples.intel_dir])
    assert sorted(Path(r.path).suffix for _, r in loaded) == [".csv", ".json", ".jsonl", ".txt"]
    assert all(found and r.skipped == 0 and r.unsupported == 0 for found, r in loaded), loaded
    kinds = {i.type.value for found, _ in loaded for i in found}
    assert kinds == {"ip", "cidr", "domain", "sha256"}


def test_the_inventory_and_the_geoip_databases_load(samples: SampleLookups) -> None:
    inventory = load_assets(samples.assets)
    assert len(inventory) == 6 and inventory.skipped == 0
    with GeoIp.open(samples.geoip_city, samples.geoip_asn) as geoip:
        assert geoip.lookup("198.51.100.40").as_dict() == {"country": "SG", "asn": 64511,
                                                          "organization": "Example Transit Inc."}


def test_the_settings_name_every_file(samples: SampleLookups) -> None:
    env = samples.env()
    assert env["LOOKUP_RELOAD_S"] == str(DEV_LOOKUP_RELOAD_S)
    named = [Path(env[name]) for name in ("INTEL_PATHS", "ASSETS_PATH", "GEOIP_CITY_PATH", "GEOIP_ASN_PATH")]
    assert all(path.exists() for path in named)


def test_the_corpus_matches_every_kind_of_indicator_on_a_few_events(samples: SampleLookups,
                                                                    events: list[Event]) -> None:
    index = IndicatorIndex.build(i for found, _ in load_feeds([samples.intel_dir]) for i in found)
    matched = [matches for matches in map(index.match, events) if matches]
    by_type = Counter(m.type.value for matches in matched for m in matches)
    by_field = Counter(m.field.value for matches in matched for m in matches)
    assert set(by_type) == {"ip", "cidr", "domain", "sha256"}, by_type
    assert set(by_field) == {"destination", "payload", "metadata.binary_sha256"}, by_field
    assert 0.01 < len(matched) / len(events) < 0.10, "a few events match, most do not"
    assert {m.source for matches in matched for m in matches} >= {
        "blocklist.txt", "partner-isac", "sandbox", "taxii-bundle.json"}


def test_every_host_is_in_a_site_and_every_endpoint_has_a_country_and_an_operator(
        samples: SampleLookups, events: list[Event]) -> None:
    inventory = load_assets(samples.assets)
    hosts = {e["metadata"]["host_ip"] for e in events if "host_ip" in e["metadata"]}
    assert len(hosts) == 10
    sites = Counter(inventory.lookup(host).site for host in hosts)
    assert None not in sites and len(sites) >= 3, sites  # the more specific prefixes win over corp's 10.0.0.0/8
    peers = {destination_of(e) for e in events} - {None}
    assert peers == set(producers.ENDPOINTS)
    with GeoIp.open(samples.geoip_city, samples.geoip_asn) as geoip:
        assert all(not inventory.lookup(p).internal for p in peers)
        geos = [geoip.lookup(peer) for peer in peers]
    assert all(g.country and g.asn and g.organization for g in geos)
    assert len({g.country for g in geos}) == 3


def test_a_file_already_there_is_left_as_the_user_edited_it(tmp_path: Path) -> None:
    files, _ = write_samples(tmp_path)
    files.assets.write_text("cidr,site\n10.0.0.0/8,mine\n")
    (files.intel_dir / "partner.csv").unlink()
    again, written = write_samples(tmp_path)
    assert again == files and written == [files.intel_dir / "partner.csv"]
    assert files.assets.read_text() == "cidr,site\n10.0.0.0/8,mine\n"
    assert not list(tmp_path.rglob(".*partial")), "no file left half-written"


# --- the README's examples are real ---

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks() -> list[tuple[str, str]]:
    """The fenced blocks of the README's "Lookup enrichment" section: (language, text)."""
    text = README.read_text()
    section = text[text.index("## Lookup enrichment\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"^```(\w*)\n(.*?)^```$", section, flags=re.M | re.S)


def test_the_readmes_feed_and_inventory_examples_load_without_a_skipped_line(tmp_path: Path) -> None:
    blocks = readme_blocks()
    feeds = {"blocklist.txt": blocks[0][1], "partner.csv": blocks[1][1], "sandbox.jsonl": blocks[2][1],
             "bundle.json": blocks[3][1]}
    for name, text in feeds.items():
        (tmp_path / name).write_text(text)
    loaded = load_feeds([tmp_path])
    assert all(found and r.skipped == 0 and r.unsupported == 0 for found, r in loaded), loaded
    assert {i.type.value for found, _ in loaded for i in found} == {"ip", "cidr", "domain", "sha256"}
    (tmp_path / "assets.csv").write_text(blocks[4][1])
    inventory = load_assets(tmp_path / "assets.csv")
    assert len(inventory) == 2 and inventory.skipped == 0


def readme_output_example() -> dict[str, Any]:
    """The README's example of an enriched event (the block after "Output, on `events.enriched`")."""
    text = README.read_text()
    section = text[text.index("Output, on `events.enriched`"):]
    block = re.search(r"^```json\n(.*?)^```$", section, flags=re.M | re.S)
    assert block is not None
    return dict(json.loads(block.group(1)))


def test_the_readmes_output_example_is_what_enrich_makes_of_its_event(tmp_path: Path) -> None:
    """With the tables the README names before it (a feed listing 203.0.113.0/24, an inventory listing
    10.1.0.0/16, GeoIP databases), the pipeline's own enrichment of the example's event gives the example."""
    shown = readme_output_example()
    metadata = {k: v for k, v in shown["metadata"].items() if k not in ("enriched_at", "enrichment_version")}
    raw = {**{k: shown[k] for k in ("id", "type", "source", "timestamp", "payload")}, "metadata": metadata}
    event = parse_event(json.dumps(raw).encode(), max_bytes=MAX_BYTES)
    (tmp_path / "abuse-feed.csv").write_text("type,value,source,severity\ncidr,203.0.113.0/24,abuse-feed,high\n")
    (tmp_path / "assets.csv").write_text("cidr,site,owner,criticality\n10.1.0.0/16,hq,it,high\n")
    city = write_mmdb(tmp_path / "city.mmdb", {"203.0.113.0/24": city_record("NL")}, database_type="GeoIP2-City")
    asn = write_mmdb(tmp_path / "asn.mmdb", {"203.0.113.0/24": asn_record(64500, "Example Transit")},
                     database_type="GeoLite2-ASN")
    index = IndicatorIndex.build(i for found, _ in load_feeds([tmp_path / "abuse-feed.csv"]) for i in found)
    with GeoIp.open(city, asn) as geoip:
        tables = LookupTables(indicators=index, assets=load_assets(tmp_path / "assets.csv"), geoip=geoip)
        (enriched,) = enrich_batch([event], env="prod", resolver=FakeResolver(), now=datetime.now(UTC),
                                   tables=tables)
    enriched["metadata"]["enriched_at"] = shown["metadata"]["enriched_at"]
    assert json.loads(json.dumps(enriched, default=str)) == shown

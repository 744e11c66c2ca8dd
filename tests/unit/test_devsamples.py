"""The local default's sample lookup files (``etl.dev.samples``): each loads with the pipeline's own loaders, nothing
skipped, and the sample corpus matches them the way a run should show: every kind of indicator, on a few events."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl.config import Settings
from etl.dev import corpus, producers
from etl.dev.samples import DEV_LOOKUP_RELOAD_S, SampleLookups, write_samples
from etl.lookups.assets import load_assets
from etl.lookups.feeds import load_feeds
from etl.lookups.geoip import GeoIp
from etl.lookups.indicators import IndicatorIndex
from etl.lookups.tables import LookupTables
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import Event, parse_event
from etl.pipeline.peers import destination_of
from etl.rdns.strategies import FakeResolver

MAX_BYTES = Settings().max_event_bytes
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
    reports = load_feeds([samples.intel_dir])
    assert sorted(Path(r.path).suffix for r in reports) == [".csv", ".json", ".jsonl", ".txt"]
    assert all(r.indicators and r.skipped == 0 and r.unsupported == 0 for r in reports), reports
    kinds = {i.type.value for r in reports for i in r.indicators}
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
    index = IndicatorIndex.build(i for report in load_feeds([samples.intel_dir]) for i in report.indicators)
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
    reports = load_feeds([tmp_path])
    assert all(r.indicators and r.skipped == 0 and r.unsupported == 0 for r in reports), reports
    assert {i.type.value for r in reports for i in r.indicators} == {"ip", "cidr", "domain", "sha256"}
    (tmp_path / "assets.csv").write_text(blocks[4][1])
    inventory = load_assets(tmp_path / "assets.csv")
    assert len(inventory) == 2 and inventory.skipped == 0


def test_the_readmes_enriched_fields_are_what_enrich_makes_of_a_sample_event(samples: SampleLookups) -> None:
    fragment = next(text for _, text in readme_blocks() if text.startswith('"intel"'))
    shown = json.loads("{" + fragment + "}")
    args = {"dst_ip": "203.0.113.33", "dst_port": 443, "protocol": "tcp"}
    raw = {"id": "readme-1", "type": "connect", "source": "/usr/bin/curl", "timestamp": 1_704_110_400_000,
           "metadata": {"host_id": "host-001", "host_ip": "10.0.1.20"},
           "payload": base64.b64encode(json.dumps(args).encode()).decode()}
    event = parse_event(json.dumps(raw).encode(), max_bytes=MAX_BYTES)
    index = IndicatorIndex.build(i for report in load_feeds([samples.intel_dir]) for i in report.indicators)
    with GeoIp.open(samples.geoip_city, samples.geoip_asn) as geoip:
        tables = LookupTables(indicators=index, assets=load_assets(samples.assets), geoip=geoip)
        (enriched,) = enrich_batch([event], env="dev", resolver=FakeResolver(), now=datetime.now(UTC),
                                   tables=tables)
    assert {field: enriched[field] for field in shown} == shown
    assert enriched["context"]["intel_match"] is True
